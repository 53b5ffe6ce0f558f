"""Screen 2, Norms: per-site sparklines over layers, the fitted growth rate, a layers x
positions heat map of the selected prompt, and the BOS position's curve apart."""

from __future__ import annotations

from typing import Any

import numpy as np
from horizon.tui.format import fixed, fmt, layer_label, sparkline
from horizon.tui.state import ViewState
from horizon.tui.widgets.charts import HeatMap, Legend
from horizon.tui.widgets.scales import Scale
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

SITE_ROWS = ("resid_pre", "resid_mid", "attn_out", "mlp_out")


def site_table(report: Any) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column("site", style="bold", no_wrap=True)
    table.add_column("min", justify="right", style="dim")
    table.add_column("per layer")
    table.add_column("max", justify="right", style="dim")
    for site in SITE_ROWS:
        means = [float(v) for v in report.stats[site].mean_norm]
        table.add_row(site, fmt(min(means)), Text(sparkline(means), style="cyan"), fmt(max(means)))
    ratios = [float(v) for v in report.growth.ratios]
    table.add_row("growth", fmt(min(ratios)), Text(sparkline(ratios), style="magenta"), fmt(max(ratios)))
    if report.bos_mean_norm is not None:
        bos = [float(v) for v in report.bos_mean_norm]
        table.add_row("BOS", fmt(min(bos)), Text(sparkline(bos), style="yellow"), fmt(max(bos)))
    return table


class NormsPane(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield Static("norms: computing…", id="norms-summary")
        yield Static(id="norms-table")
        yield Static(id="norms-heat-title")
        yield Legend(id="norms-legend")
        yield HeatMap(id="norms-heat")

    def refresh_view(self, state: ViewState) -> None:
        report = state.source.ready("norms")
        summary = self.query_one("#norms-summary", Static)
        if report is None:
            summary.update(Text(state.not_ready("norms"), style="yellow"))
            return
        growth = report.growth
        text = Text("mean ‖resid‖ per layer (BOS excluded)  ", style="bold")
        text.append("rate ", style="dim")
        first, last = growth.fit_layers  # growth.describe(), its numbers rounded here for the screen
        text.append(f"{fixed(growth.rate, 3)}/layer over layers {first}-{last} (r^2 {fixed(growth.r2, 2)})")
        summary.update(text)
        self.query_one("#norms-table", Static).update(site_table(report))
        stored = report.norms["resid_pre"][state.prompt]
        if stored is None:  # results mode: this prompt's norms are not in the store
            return
        matrix = np.asarray(stored)  # [L+1, T]
        start = 1 if report.has_bos else 0  # BOS is shown apart: its norm would flatten the colours
        shown = matrix[:, start:]
        n = report.n_layers
        heat = self.query_one(HeatMap)
        heat.matrix = [[float(v) for v in row] for row in shown]
        heat.row_labels = [layer_label(row, n) for row in range(n + 1)]
        heat.scale = Scale.fit([float(v) for v in shown.ravel()])
        heat.column_title = "position"
        heat.cell_width = 2
        legend = self.query_one(Legend)
        legend.scale, legend.label = heat.scale, "‖resid_pre‖"
        self.query_one("#norms-heat-title", Static).update(
            Text(f"layers × positions, prompt {state.prompt + 1} (positions from {start})", style="bold"))
