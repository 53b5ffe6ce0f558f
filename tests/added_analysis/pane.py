"""The peak pane of the app (the registry entry's ``pane``): per layer, the selected prompt's largest resid_pre norm
and where it is, from the source's ``Query.of("peak")`` once it is ready (live or stored alike)."""

from __future__ import annotations

from horizon.core.sources.queries import Query
from horizon.tui.format import number
from horizon.tui.state import ViewState
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tests.added_analysis import NAME, SITE, PeakReport


class PeakPane(Static):
    """One row per layer: the peak norm of the selected prompt and its position (BOS excluded when it has one)."""

    def refresh_view(self, state: ViewState) -> None:
        job = Query.of(NAME)
        report: PeakReport | None = state.source.ready(job)
        if report is None:
            self.update(Text(state.not_ready(job)))
            return
        tokens = state.source.tokens(state.prompt)
        table = Table(title=f"largest {SITE} norm per layer, prompt {state.prompt} "
                            f"({'BOS excluded' if report.has_bos else 'no BOS'})",
                      title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("layer", justify="right")
        table.add_column("peak norm", justify="right")
        table.add_column("position", justify="right")
        table.add_column("token")
        for layer in range(report.n_layers):
            position = int(report.position[state.prompt, layer])
            token = tokens[position] if 0 <= position < len(tokens) else ""
            table.add_row(str(layer), number(float(report.peak[state.prompt, layer])), str(position),
                          Text(repr(token)))
        self.update(table)
