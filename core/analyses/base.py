"""What an analysis is (:class:`Analysis`), the registry it joins, and the column helpers every
analysis module uses. The analysis modules import this module, and the package imports them, so
imports run one way: ``base`` <- ``norms``/``truncate``/``scan``/``attention`` <- the package."""


from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
from horizon.core.memory.budget import Cost

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel
    from horizon.core.results.store import Results
    from horizon.core.run.runner import Runner
    from horizon.core.sweep.sweep_settings import SweepSettings

RowsFn = Callable[[Any, list[int], list[list[int]], list[list[str]]], pa.Table]
ViewFn = Callable[["Results", pa.Table, dict[str, Any], bool], dict[str, Any]]
# (runner, token_ids, has_bos) -> the analysis's result over those prompts, computed live (the session's runner)
LiveFn = Callable[["Runner", list[list[int]], bool], Any]
# (results, prompt_numbers) -> the same result rebuilt from the stored table, for those stored prompts in that
# order (None when the directory does not hold it)
StoredFn = Callable[["Results", list[int]], Any]


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
    # The app screen that shows it: a built-in screen's id ("norms"), or "module:Class" of its own pane (a Textual
    # widget with ``refresh_view(state)``), which the app adds as a tab after the built-in ones.
    pane: str | None = None
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
    # Its result as the app's sources give it for ``Query.of(name)`` (core/sources/queries.py): computed by the
    # live session under its runner (``live``; the session holds the runner's lock), rebuilt by the results
    # session from the stored table (``stored``). None: that source has no such result.
    live: LiveFn | None = None
    stored: StoredFn | None = None

    def renderer(self) -> Callable[[dict[str, Any]], None] | None:
        if self.render is None:
            return None
        return cast("Callable[[dict[str, Any]], None]", _imported(self.render))

    @property
    def has_own_pane(self) -> bool:
        """Whether it brings its own app pane (``pane`` is "module:Class", not a built-in screen's id)."""
        return self.pane is not None and ":" in self.pane

    def pane_class(self) -> Any:
        """The class of its own app pane (imported only when asked for), or None when it has none."""
        return _imported(self.pane) if self.pane is not None and self.has_own_pane else None


def _imported(path: str) -> Any:
    """The object ``"module:name"`` names, its module imported now."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


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
    return cast(np.ndarray, data.to_numpy())  # pyarrow is untyped


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    return float(np.sum(values * weights) / weights.sum())
