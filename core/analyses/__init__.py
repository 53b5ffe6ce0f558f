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
- ``command``: ``"module:function"`` of its single-prompt Typer command (``horizon NAME``);
- ``pane``: the app screen that shows it: a built-in screen's id, or ``"module:Class"`` of its own pane
  (a tab after the built-in ones), with ``live`` / ``stored``: its result for the app from a runner or
  from a results directory;
- ``index_bounds``: the bounds of its own index columns, checked on every stored file;
- ``cost`` / ``corpus``: its cost model and the corpus-wide array its shards need (the store reads that
  array's file from here); ``check_settings``: its checks of a sweep's settings against the model;
  ``former_tables``: the folders older versions wrote its table to; ``warm_up``: the analysis whose short
  pass warms up the sweep's time estimate.

Each built-in analysis is a package here (norms/, truncate/, scan/, attention/): ``result.py`` (its result
types), ``table.py`` (schema, rows, view, settings), ``cost.py`` (cost model, corpus-wide input),
``engine.py`` (the computation, torch) and ``__init__.py`` with its entry, ``ANALYSIS``. Adding an
analysis: such a package, its renderer, and a call to :func:`register` (docs/ARCHITECTURE.md has the
recipe). Nothing in this package imports torch at import time: the engines are imported inside ``rows``.
"""

from __future__ import annotations

from horizon.core.analyses import attention, norms, scan, truncate
from horizon.core.analyses.base import (
    REGISTRY,
    Analysis,
    CorpusInput,
    RowsFn,
    ViewFn,
    column,
    names,
    register,
    tables,
    unregister,
    weighted_mean,
)

__all__ = ["REGISTRY", "Analysis", "CorpusInput", "RowsFn", "ViewFn", "column", "names", "register", "tables",
           "unregister", "weighted_mean"]

# The built-in analyses, in this order (the order of report and --analyses).
for _module in (norms, truncate, scan, attention):
    register(_module.ANALYSIS)
