"""The peak pane of the app (the registry entry's ``pane``): per layer, the selected prompt's largest resid_pre norm
and where it is, from the source's ``Query.of("peak")`` once it is ready (live or stored alike)."""

from __future__ import annotations

from horizon.core.sources.queries import Query
from horizon.tui.state import ViewState
from rich.text import Text
from textual.widgets import Static

from tests.added_analysis import NAME, SITE, PeakReport
from tests.added_analysis.render import prompt_table


class PeakPane(Static):
    """One row per layer: the peak norm of the selected prompt and its position (BOS excluded when it has one)."""

    def refresh_view(self, state: ViewState) -> None:
        job = Query.of(NAME)
        report: PeakReport | None = state.source.ready(job)
        if report is None:
            self.update(Text(state.not_ready(job)))
            return
        title = f"largest {SITE} norm per layer, prompt {state.prompt}"
        self.update(prompt_table(report, state.prompt, state.source.tokens(state.prompt), title))
