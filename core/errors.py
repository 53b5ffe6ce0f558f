"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a HorizonError into a single line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


class HorizonError(Exception):
    """A user-facing error: its message is one complete, actionable sentence."""


# Library messages that point at something horizon does not show (a report the library logged, which
# horizon keeps quiet): what each means, said in full.
_REWORDED = (
    (re.compile(r"You set `ignore_mismatched_sizes` to `False`.*look at the above report!?", re.S),
     "some weights have other shapes than the model's config gives them (the config does not describe these "
     "weights)"),
    (re.compile(r"We encountered some issues during automatic conversion of the weights.*report!?", re.S),
     "some weights could not be converted to the model's architecture (the config does not describe these weights)"),
)


def library_reason(exc: BaseException, limit: int = 400, with_type: bool = True) -> str:
    """A library's exception as one complete line: its type and its whole message (lines joined), never
    "see the above report" for a report that was not printed, nor a message cut at its first line."""
    text = str(exc)
    for pattern, meaning in _REWORDED:
        if pattern.search(text):
            text = meaning
            break
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if with_type else text
