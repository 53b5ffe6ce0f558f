"""What an analysis is (:class:`Analysis`), the registry it joins, and the column helpers every
analysis module uses. The analysis modules import this module, and the package imports them, so
imports run one way: ``base`` <- ``norms``/``truncate``/``scan``/``attention`` <- the package."""


from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.memory.budget import Cost

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel
    from horizon.core.results.store import Results
    from horizon.core.sweep.sweep_settings import SweepSettings

RowsFn = Callable[[Any, list[int], list[list[int]], list[list[str]]], pa.Table]
ViewFn = Callable[["Results", pa.Table, dict[str, Any], bool], dict[str, Any]]


def _always(settings: SweepSettings) -> bool:
    return True


@dataclass(frozen=True)
class CorpusInput:
    """A corpus-wide array an analysis's shards need, made before any shard runs (core/sweep/sweep.py).

    It is computed once over every prompt of the corpus on one worker (``compute``), stored in the
    results directory as ``file`` with its sha256 under ``checksum_key`` in the analysis's manifest
    settings, and given to every worker, whose shards read it as ``worker.corpus_inputs[name]``
    (what ``receive`` made of it: the engine's tensor on the model's device). So the numbers do not
    depend on how the corpus was split into shards and workers.
    """

    file: str  # the array's file in the results directory (core/results/ reads, guards and merges it by this name)
    checksum_key: str  # the manifest key, under this analysis's settings, of the file's sha256
    dtype: type[np.floating[Any]]  # as stored
    shape: Callable[[int, int], tuple[int, int]]  # (n_layers, d_model) -> its shape
    description: str  # what it is, in messages ("the corpus mean residual")
    # (model, token_ids, bos) -> the array on CPU; the caller holds the model's lock
    compute: Callable[[LoadedModel, list[list[int]], bool], np.ndarray]
    # (array, model, settings) -> what the shards read (the engine's tensor on the model's device)
    receive: Callable[[np.ndarray, LoadedModel, SweepSettings], Any]
    needed: Callable[[SweepSettings], bool] = _always  # whether a sweep with these settings uses it
    # Read back after the sweep (results mode), so a missing or damaged stored copy is computed again
    # even when no shard of this analysis is left to run.
    kept_after_sweep: bool = False


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
    # "module:function" of its single-prompt Typer command, `horizon NAME` (tui/cli/app.py adds it; None: none)
    command: str | None = None
    pane: str | None = None  # the app screen that shows it
    needs_bos: bool = False
    cost: Cost | None = None  # its cost model (core/memory/budget.py plans it; None: one batch, peak unknown)
    corpus: CorpusInput | None = None  # the corpus-wide array its shards need (None: none)
    # (settings, n_layers, n_ctx): raises HorizonError for sweep settings this model cannot run (a layer
    # index past the model, a length past its context); core/sweep/sweep_settings.py calls it per analysis.
    check_settings: Callable[[SweepSettings, int, int], None] | None = None
    # Folder names earlier versions wrote this table under: read as ``table`` (core/results/store_layout.py).
    former_tables: tuple[str, ...] = ()
    # (n_layers, n_heads, n_ctx) -> the values each index column of its own may hold (the prompt, position,
    # n_tokens and layer columns are the store's): a file holding others is left out (core/results/store_read.py).
    index_bounds: Callable[[int, int, int], dict[str, tuple[int, int]]] | None = None
    # The sweep's time estimate warms up with one short pass of this analysis (core/sweep/plan.py): one
    # that needs no corpus-wide input.
    warm_up: bool = False

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
