"""Screen 5, Attention: a layers x heads heat map of mean attention distance (BOS column removed
by default; b toggles) and the most local and most long-range heads."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

from horizon.core.sources.queries import Query
from horizon.tui.format import fixed
from horizon.tui.state import ViewState
from horizon.tui.widgets.charts import HeatMap, Legend
from horizon.tui.widgets.scales import Scale, note_margin
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

N_LISTED = 5


def distance_matrix(report: Any, no_bos: bool) -> list[list[float | None]]:
    matrix = report.mean_distance_no_bos if no_bos else report.mean_distance
    return [[None if value is None else float(value) for value in row] for row in matrix]


def extreme_heads(report: Any, no_bos: bool, n: int = N_LISTED) -> tuple[list[tuple], list[tuple]]:
    """((layer, head, distance) most local first, most long-range first), as the engine ranks them."""
    ranked = [cell for cell in report.ranked(no_bos) if math.isfinite(cell[2])]
    for listed in (ranked[: n + 1], ranked[::-1][: n + 1]):  # the listed heads' order is a choice too
        for (_, _, first), (_, _, second) in pairwise(listed):
            note_margin("order", first, (second - first) / 2)
    return ranked[:n], ranked[::-1][:n]


class AttentionPane(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield Static("attention: computing…", id="attention-header")
        yield Legend(id="attention-legend")
        yield HeatMap(id="attention-heat")
        yield Static(id="attention-lists")

    def refresh_view(self, state: ViewState) -> None:
        job = Query.attention(state.prompt)
        report = state.source.ready(job)
        header = self.query_one("#attention-header", Static)
        if report is None:
            header.update(Text(state.not_ready(job), style="yellow"))
            return
        no_bos = state.no_bos
        matrix = distance_matrix(report, no_bos)
        title = Text("mean attention distance, layers × heads  ", style="bold")
        title.append("BOS column removed" if no_bos else "BOS included", style="italic")
        title.append("   [b] toggle BOS", style="dim")
        header.update(title)
        heat = self.query_one(HeatMap)
        heat.matrix = matrix
        # Gemma 3 style models mix sliding-window and global layers: rows say which (w512 / global).
        heat.row_labels = [report.layer_label(layer) for layer in range(len(matrix))]
        heat.scale = Scale.fit([value for row in matrix for value in row])
        heat.cell_width = 3
        heat.column_title = "head"
        legend = self.query_one(Legend)
        legend.scale, legend.label = heat.scale, "distance"
        local, far = extreme_heads(report, no_bos)
        table = Table.grid(padding=(0, 2))
        table.add_column()
        table.add_column()
        table.add_row(Text("most local", style="bold"), Text("most long-range", style="bold"))
        for (l1, h1, d1), (l2, h2, d2) in zip(local, far, strict=False):
            table.add_row(f"L{l1}.H{h1}  {fixed(d1, 2)}", f"L{l2}.H{h2}  {fixed(d2, 2)}")
        self.query_one("#attention-lists", Static).update(table)
