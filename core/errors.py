"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a HorizonError into a single line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class HorizonError(Exception):
    """A user-facing error: its message is one complete, actionable sentence."""
