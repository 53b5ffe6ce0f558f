"""The attention analysis: per prompt, layer and head, the mean attention distance and the attention
mass in distance buckets, with and without BOS.

- ``result.py``: the result type (AttentionReport) and its buckets;
- ``table.py``: the table's columns and rows, the corpus view, the settings it records, the report
  rebuilt from the rows;
- ``cost.py``: its cost model; ``engine.py``: the pattern reducer (torch, imported inside ``rows`` only).

Everything imported here is torch-free; ``ANALYSIS`` is its registry entry (core/analyses/base.py).
"""

from __future__ import annotations

from horizon.core.analyses.attention.cost import COST
from horizon.core.analyses.attention.result import BUCKETS, AttentionReport
from horizon.core.analyses.attention.table import (
    MASSES,
    SCHEMA,
    expected_rows,
    index_bounds,
    recorded_settings,
    report_from_rows,
    report_rows,
    rows,
    view,
)
from horizon.core.analyses.base import Analysis

__all__ = ["ANALYSIS", "BUCKETS", "MASSES", "SCHEMA", "AttentionReport", "report_from_rows", "report_rows"]

ANALYSIS = Analysis(
    name="attention", table="attention", schema=SCHEMA, rows=rows, view=view, settings=recorded_settings,
    expected_rows=expected_rows, render="horizon.tui.cli.report_render:render_attention", pane="attention",
    cost=COST, index_bounds=index_bounds,
)
