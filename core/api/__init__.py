"""horizon: a terminal inspector of a transformer's residual stream, and its Python API.

    import horizon
    m = horizon.load("tiny-llama")
    m.scan("some text").to_pandas()

The public names are ``__all__`` (docs/API.md shows each with an example); everything else is
private. The engine is ``horizon.core`` (no UI), the CLI and the Textual app are ``horizon.tui``;
this package's source folder is ``core/api/`` in the repository (setup.py maps it to ``horizon``).

Importing horizon is cheap: the names below are loaded when first used, and torch only when a
model is loaded (the CLI imports this module first on every start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

DISTRIBUTION = "horizon-inspector"

__all__ = [
    "Attention",
    "Comparison",
    "HorizonError",
    "Model",
    "Norms",
    "Patch",
    "Result",
    "Results",
    "Scan",
    "Stored",
    "Truncation",
    "Verification",
    "__version__",
    "compare",
    "load",
    "open_results",
    "sweep",
]

# name -> the private module that defines it (imported on first use).
_WHERE = {
    "HorizonError": "horizon.core.errors",
    "load": "horizon._model", "Model": "horizon._model", "Verification": "horizon._model",
    "Result": "horizon._results", "Norms": "horizon._results", "Patch": "horizon._results",
    "Scan": "horizon._results", "Truncation": "horizon._results", "Attention": "horizon._results",
    "open_results": "horizon._stored", "sweep": "horizon._stored", "compare": "horizon._stored",
    "Results": "horizon._stored", "Stored": "horizon._stored", "Comparison": "horizon._stored",
}

if TYPE_CHECKING:
    from horizon._model import Model, Verification, load
    from horizon._results import Attention, Norms, Patch, Result, Scan, Truncation
    from horizon._stored import Comparison, Results, Stored, compare, open_results, sweep
    from horizon.core.errors import HorizonError


def __getattr__(name: str) -> Any:
    # Read lazily: every import of horizon.core or horizon.tui runs this module first, and the
    # CLI's start-up path imports nothing beyond what it needs (importlib.metadata is not free).
    if name == "__version__":
        from importlib.metadata import version

        return version(DISTRIBUTION)
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'horizon' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
