"""Screen 1, Tokens: the prompt as a coloured token grid, a legend and the detail pane.

A selected token (TokenGrid.Selected, which the app handles) opens the detail pane."""

from __future__ import annotations

from horizon.tui.screens import views
from horizon.tui.state import ViewState
from horizon.tui.widgets.charts import Legend
from horizon.tui.widgets.detail import DetailPane
from horizon.tui.widgets.scales import Scale
from horizon.tui.widgets.token_grid import TokenGrid
from rich.text import Text
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

    def refresh_view(self, state: ViewState) -> None:
        source = state.source
        values, diverging, label = views.token_values(state)
        tokens = source.tokens(state.prompt)
        grid = self.query_one(TokenGrid)
        pending = values is None
        if values is None:
            values = [None] * len(tokens)
        if state.metric == "cosine":
            scale = Scale(-1.0, 1.0, diverging=True)  # cosines are comparable across layers on a fixed scale
        else:
            scale = Scale.fit(values, diverging=diverging)
        grid.set_data(tokens, values, scale)
        if grid.cursor != state.selected:
            grid.cursor = state.selected
        legend = self.query_one(Legend)
        legend.scale, legend.label = scale, views.METRIC_LABELS[state.metric]
        header = Text()
        header.append(label, style="bold")
        header.append(f"   prompt {state.prompt + 1}/{len(source.prompts)}, {len(tokens)} tokens", style="dim")
        if pending:
            header.append("   computing…", style="yellow")
        self.query_one("#tokens-header", Static).update(header)
        detail = self.query_one(DetailPane)
        if state.selected is None or state.selected >= len(tokens):
            detail.display = False
        else:
            detail.display = True
            detail.show(views.token_detail(state, state.selected))
