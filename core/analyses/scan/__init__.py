"""The scan analysis: per prompt, start layer and k, the horizon metrics (core/patching/horizon.py), and
with ``by_layer`` the layer x k matrix.

- ``result.py``: the result types (ScanResult, ByLayerResult) and the horizons read off them;
- ``table.py``: the table's columns and rows, the corpus view, the settings it records and checks, the
  results rebuilt from the rows;
- ``cost.py``: its cost model and its corpus-wide input (mean ablation's means);
- ``engine.py``: the scan itself (torch, imported inside ``rows`` only).

Everything imported here is torch-free; ``ANALYSIS`` is its registry entry (core/analyses/base.py).
"""

from __future__ import annotations

from horizon.core.analyses.base import Analysis
from horizon.core.analyses.scan.cost import COST, MEANS, staircase_rows
from horizon.core.analyses.scan.result import (
    BY_LAYER_METRICS,
    ByLayerResult,
    ScanResult,
    effective_horizon,
    join_by_layer,
    row_horizons,
)
from horizon.core.analyses.scan.table import (
    SCHEMA,
    WRITTEN,
    by_layer_from_rows,
    check_settings,
    expected_rows,
    fits,
    index_bounds,
    recorded_settings,
    report_from_view,
    result_table,
    rows,
    view,
)

__all__ = ["ANALYSIS", "BY_LAYER_METRICS", "MEANS", "SCHEMA", "WRITTEN", "ByLayerResult", "ScanResult",
           "by_layer_from_rows", "effective_horizon", "join_by_layer", "report_from_view", "result_table",
           "row_horizons", "staircase_rows"]

ANALYSIS = Analysis(
    name="scan", table="scan", schema=SCHEMA, rows=rows, view=view, settings=recorded_settings,
    expected_rows=expected_rows, fits=fits, render="horizon.tui.cli.report_render:render_scan", pane="horizon",
    cost=COST, corpus=MEANS, check_settings=check_settings, former_tables=("horizon",),
    index_bounds=index_bounds,
)
