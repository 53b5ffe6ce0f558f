"""The registry of analyses: one entry per analysis, read by the sweep, the store, ``report`` and the app.

An :class:`Analysis` names everything the rest of the package needs to know about one analysis:

- ``name``: the analysis as the CLI (``--analyses``), the manifest, ``report`` and its ``--json`` call it;
- ``table``: the Parquet table folder its rows go to, and ``schema``, the columns that table must hold;
- ``rows(worker, prompts, token_ids, tokens)``: runs the engine on one shard and returns its rows;
- ``view(results, table, manifest, has_bos)``: the corpus-wide aggregate of those rows, plain JSON,
  what ``report`` prints and the app's results mode shows (no model, no torch);
- ``settings(sweep_settings, n_layers)``: the settings that define its numbers (recorded in the manifest);
- ``expected_rows`` / ``fits``: what a shard file must hold to be adopted when a manifest is rebuilt;
- ``render``: ``"module:function"`` of the CLI renderer of its view (imported only when drawn);
- ``pane``: the app screen that shows it.

Adding an analysis: write its engine module, a module here with its rows/view/settings, its
renderer, and call :func:`register` once (docs/ARCHITECTURE.md has the recipe). Nothing in this
package imports torch at import time: the engines are imported inside ``rows``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from horizon.core.store import Results

RowsFn = Callable[[Any, list[int], list[list[int]], list[list[str]]], pa.Table]
ViewFn = Callable[["Results", pa.Table, dict[str, Any], bool], dict[str, Any]]


@dataclass(frozen=True)
class Analysis:
    name: str
    table: str
    schema: dict[str, pa.DataType]
    rows: RowsFn
    view: ViewFn
    settings: Callable[[Any, int], dict[str, Any]] = lambda settings, n_layers: {}
    view_columns: list[str] | None = None  # only these columns are read for the view (None: all)
    expected_rows: Callable[[list[int], dict[str, Any], dict[str, Any]], int] | None = None
    fits: Callable[[pa.Table, dict[str, Any]], bool] = lambda data, settings: True
    render: str | None = None  # "module:function" drawing the view in the terminal
    pane: str | None = None  # the app screen that shows it
    needs_bos: bool = False

    def renderer(self) -> Callable[[dict[str, Any]], None] | None:
        if self.render is None:
            return None
        module, function = self.render.split(":")
        return getattr(importlib.import_module(module), function)


REGISTRY: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    """Add an analysis (or replace the one of the same name); its table joins the store's tables."""
    clash = next((other for other in REGISTRY.values() if other.table == analysis.table
                  and other.name != analysis.name), None)
    if clash is not None:
        raise ValueError(f"table {analysis.table!r} is already written by the {clash.name} analysis")
    REGISTRY[analysis.name] = analysis
    return analysis


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered analysis, in the canonical order (registration order)."""
    return tuple(REGISTRY)


def tables() -> dict[str, str]:
    """Analysis name -> its table name."""
    return {name: analysis.table for name, analysis in REGISTRY.items()}


def column(table: pa.Table, name: str) -> np.ndarray:
    """One column as numpy (dictionary-encoded columns decoded)."""
    data = table.column(name)
    if pa.types.is_dictionary(data.type):
        data = data.cast(data.type.value_type)
    return data.to_numpy()


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    return float(np.sum(values * weights) / weights.sum())


# The built-in analyses register themselves, in this order (the order of report and --analyses).
from horizon.core.analyses import attention, norms, scan, truncate  # noqa: E402

for _module in (norms, truncate, scan, attention):
    register(_module.ANALYSIS)
