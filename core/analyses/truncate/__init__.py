"""The truncate analysis: per truncated token, kept length and layer, the cosine of its residual with
the full-context one, mean-centred and raw (docs/SCIENCE.md section 4).

- ``result.py``: the result type (TruncationReport, its records and outliers) and its summaries;
- ``table.py``: the table's columns and rows, the corpus view, the settings it records and checks, the
  report rebuilt from the rows;
- ``cost.py``: its cost model and its corpus-wide input (the corpus mean residual);
- ``categories.py`` / ``outliers.py``: token categories and the outlier ranking (the app uses them too);
- ``engine.py``: the truncated passes (torch, imported inside ``rows`` only).

Everything imported here is torch-free; ``ANALYSIS`` is its registry entry (core/analyses/base.py).
"""

from __future__ import annotations

from horizon.core.analyses.base import Analysis
from horizon.core.analyses.truncate.cost import COST, MU, truncation_windows
from horizon.core.analyses.truncate.result import (
    Outlier,
    PromptTokenIds,
    TokenRecord,
    TruncationReport,
    find_outliers,
    summarise,
)
from horizon.core.analyses.truncate.table import (
    N_OUTLIERS,
    SCHEMA,
    check_settings,
    expected_rows,
    fits,
    index_bounds,
    recorded_settings,
    report_from_rows,
    report_table,
    rows,
    view,
)

__all__ = ["ANALYSIS", "MU", "N_OUTLIERS", "SCHEMA", "Outlier", "PromptTokenIds", "TokenRecord", "TruncationReport",
           "find_outliers", "report_from_rows", "report_table", "summarise", "truncation_windows"]

ANALYSIS = Analysis(
    name="truncate", table="truncate", schema=SCHEMA, rows=rows, view=view, settings=recorded_settings,
    expected_rows=expected_rows, fits=fits, render="horizon.tui.cli.report_render:render_truncation",
    pane="outliers", needs_bos=True, cost=COST, corpus=MU, check_settings=check_settings,
    former_tables=("truncation",), index_bounds=index_bounds,
)
