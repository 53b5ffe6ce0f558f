"""Screen 1, Tokens: the prompt as a coloured token grid, a legend and the detail pane."""

from __future__ import annotations

from typing import Any

from horizon.tui.screens import views
from horizon.tui.widgets.charts import Legend
from horizon.tui.widgets.detail import DetailPane
from horizon.tui.widgets.scales import Scale
from horizon.tui.widgets.token_grid import TokenGrid
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static


class TokensPane(Horizontal):
    """Grid on the left, detail pane on the right (shown once a token is selected)."""

    def compose(self) -> ComposeResult:
        with Vertical(id="tokens-main"):
            yield Static(Text("loading the model and tokenising…", style="yellow"), id="tokens-header")
            yield Legend(id="tokens-legend")
            with VerticalScroll(id="tokens-scroll"):
                yield TokenGrid(id="tokens-grid")
        yield DetailPane(id="detail")

    def focus_grid(self) -> None:
        self.query_one(TokenGrid).focus()

    def refresh_view(self) -> None:
        app: Any = self.app
        if app.session is None:
            return
        session = app.session
        if session is None:
            return
        values, diverging, label = views.token_values(app)
        tokens = session.tokens(app.prompt_index)
        grid = self.query_one(TokenGrid)
        pending = values is None
        if pending:
            values = [None] * len(tokens)
        if app.metric == "cosine":
            scale = Scale(-1.0, 1.0, diverging=True)  # cosines are comparable across layers on a fixed scale
        else:
            scale = Scale.fit(values, diverging=diverging)
        grid.set_data(tokens, values, scale)
        if grid.cursor != app.selected:
            grid.cursor = app.selected
        legend = self.query_one(Legend)
        legend.scale, legend.label = scale, views.METRIC_LABELS[app.metric]
        header = Text()
        header.append(label, style="bold")
        header.append(f"   prompt {app.prompt_index + 1}/{len(session.prompts)}, {len(tokens)} tokens", style="dim")
        if pending:
            header.append("   computing…", style="yellow")
        self.query_one("#tokens-header", Static).update(header)
        detail = self.query_one(DetailPane)
        if app.selected is None or app.selected >= len(tokens):
            detail.display = False
        else:
            detail.display = True
            detail.show(views.token_detail(app, app.selected))

    @on(TokenGrid.Selected)
    def _selected(self, event: TokenGrid.Selected) -> None:
        app: Any = self.app
        app.selected = event.index
