"""The norms analysis: per position, layer and site, the residual norm and its std over d_model.

- ``result.py``: the result types (NormsReport, SiteStats, Growth), the sites and the growth fit;
- ``table.py``: the table's columns and rows, the corpus view, the settings it records, a report from rows;
- ``cost.py``: its cost model; ``engine.py``: the capture pass (torch, imported inside ``rows`` only);
- ``weights.py``: the weight norms beside it (``horizon norms --weights``).

Everything imported here is torch-free; ``ANALYSIS`` is its registry entry (core/analyses/base.py).
"""

from __future__ import annotations

from horizon.core.analyses.base import Analysis
from horizon.core.analyses.norms.cost import COST
from horizon.core.analyses.norms.result import (
    NORM_SITES,
    PARALLEL_ABSENT,
    Growth,
    NormsReport,
    SiteStats,
    absent_sites,
    aggregate_site,
    appendix1_check,
    default_fit_window,
    fit_growth,
)
from horizon.core.analyses.norms.table import (
    SCHEMA,
    expected_rows,
    recorded_settings,
    report_from_rows,
    report_table,
    rows,
    view,
)

__all__ = ["ANALYSIS", "NORM_SITES", "PARALLEL_ABSENT", "SCHEMA", "Growth", "NormsReport", "SiteStats",
           "absent_sites", "aggregate_site", "appendix1_check", "default_fit_window", "fit_growth",
           "report_from_rows", "report_table"]

ANALYSIS = Analysis(
    name="norms", table="norms", schema=SCHEMA, rows=rows, view=view, settings=recorded_settings,
    # Only the columns the view needs are read (the per-row token texts are the bulk of the table).
    view_columns=["prompt", "position", "layer", "site", "norm", "std"],
    expected_rows=expected_rows, render="horizon.tui.cli.report_render:render_norms", pane="norms", cost=COST,
    warm_up=True,
)
