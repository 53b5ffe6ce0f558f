"""Screen 2, Norms: per-site sparklines over layers (log scale, as the seed's log axis), the fitted
growth rate, the norm-growth figure (a plotext plot, log y, the fit over its window, BOS apart),
a layers x positions heat map of the selected prompt, and the BOS position's curve apart.

The growth-ratio sparkline leaves the first ratio (embedding -> layer 1, often 10-20x where the
others are near 1) out of its scale, and says so: with it, every other bar would be flat."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from horizon.core.sources.compare import live_figure_input
from horizon.core.sources.queries import Query
from horizon.tui.format import fixed, fmt, layer_label, sparkline
from horizon.tui.state import ViewState
from horizon.tui.widgets.charts import HeatMap, Legend
from horizon.tui.widgets.plot import FigurePlot
from horizon.tui.widgets.scales import Scale, note_margin
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

SITE_ROWS = ("resid_pre", "resid_mid", "attn_out", "mlp_out")


def log_sparkline(values: list[float]) -> str:
    """The sparkline of log10 of positive values (norms): equal ratios give equal steps."""
    return sparkline([math.log10(v) if v > 0 else None for v in values])


def growth_row(ratios: list[float]) -> tuple[str, Text, str, str]:
    """(min, sparkline, max, note) of the growth ratios, the first left out of the scale."""
    rest = ratios[1:] or ratios
    line = sparkline(ratios, low=min(rest), high=max(rest))  # the first ratio is clipped to the top
    if len(ratios) < 2:
        return fmt(min(rest)), Text(line, style="magenta"), fmt(max(rest)), ""
    note_margin("scale end", ratios[0], min(abs(ratios[0] - min(rest)), abs(ratios[0] - max(rest))))
    note = "" if min(rest) <= ratios[0] <= max(rest) else f"1st ratio {fmt(ratios[0])} off scale"
    return fmt(min(rest)), Text(line, style="magenta"), fmt(max(rest)), note


def site_table(report: Any) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column("site", style="bold", no_wrap=True)
    table.add_column("min", justify="right", style="dim")
    table.add_column("per layer (log)")
    table.add_column("max", justify="right", style="dim")
    table.add_column("note", style="dim", no_wrap=True)
    for site in SITE_ROWS:
        if site in report.absent:  # parallel attention + MLP: no resid_mid, and no number for it
            table.add_row(site, "", Text("none in this model", style="yellow"), "", "parallel blocks")
            continue
        means = [float(v) for v in report.stats[site].mean_norm]
        table.add_row(site, fmt(min(means)), Text(log_sparkline(means), style="cyan"), fmt(max(means)), "log")
    ratios = [float(v) for v in report.growth.ratios]
    low, line, high, note = growth_row(ratios)
    table.add_row("growth", low, line, high, note or "linear")
    if report.bos_mean_norm is not None:
        bos = [float(v) for v in report.bos_mean_norm]
        table.add_row("BOS", fmt(min(bos)), Text(log_sparkline(bos), style="yellow"), fmt(max(bos)), "log")
    return table


class NormsPane(VerticalScroll):
    DEFAULT_CSS = "#norms-plot { height: 60vh; min-height: 12; max-height: 30; margin-bottom: 1; }"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plotted: Any = None  # the NormsReport the figure was last given

    def compose(self) -> ComposeResult:
        yield Static("norms: computing…", id="norms-summary")
        yield Static(id="norms-table")
        yield FigurePlot(figure="norm_growth", id="norms-plot")
        yield Static(id="norms-heat-title")
        yield Legend(id="norms-legend")
        yield HeatMap(id="norms-heat")

    def refresh_view(self, state: ViewState) -> None:
        report = state.source.ready(Query.norms())
        summary = self.query_one("#norms-summary", Static)
        if report is None:
            summary.update(Text(state.not_ready(Query.norms()), style="yellow"))
            return
        growth = report.growth
        text = Text("mean ‖resid‖ per layer (BOS excluded)  ", style="bold")
        text.append("rate ", style="dim")
        first, last = growth.fit_layers  # growth.describe(), its numbers rounded here for the screen
        text.append(f"{fixed(growth.rate, 3)}/layer over layers {first}-{last} (r^2 {fixed(growth.r2, 2)})")
        summary.update(text)
        self.query_one("#norms-table", Static).update(site_table(report))
        if self._plotted is not report:  # the figure's input copies the report: once per report
            self._plotted = report
            self.query_one("#norms-plot", FigurePlot).inputs = [live_figure_input(state.source.label, report=report)]
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
