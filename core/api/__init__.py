"""horizon: a terminal inspector of a transformer's residual stream.

The engine is ``horizon.core`` (no UI), the CLI and the Textual app are ``horizon.tui``. This
package's source folder is ``core/api/`` in the repository (setup.py maps it to ``horizon``).
"""

from __future__ import annotations

DISTRIBUTION = "horizon-inspector"


def __getattr__(name: str) -> str:
    # Read lazily: every import of horizon.core or horizon.tui runs this module first, and the
    # CLI's start-up path imports nothing beyond what it needs (importlib.metadata is not free).
    if name == "__version__":
        from importlib.metadata import version

        return version(DISTRIBUTION)
    raise AttributeError(f"module 'horizon' has no attribute {name!r}")
