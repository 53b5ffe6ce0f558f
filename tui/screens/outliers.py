"""Screen 4, Outliers: the lowest-cosine tokens at the selected length and layer, filterable
by category and sortable by any column (click a header or press o); enter jumps to the token."""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar

import numpy as np
from horizon.core.analyses.truncate.categories import CATEGORIES
from horizon.core.analyses.truncate.outliers import rank_outliers, token_context
from horizon.core.sources.queries import Query
from horizon.core.untrusted import markup_safe
from horizon.tui.format import fixed, layer_label
from horizon.tui.keys import bindings
from horizon.tui.state import JumpToToken, ViewState
from horizon.tui.widgets.scales import note_margin
from horizon.tui.widgets.token_grid import visible_token
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Static

MAX_ROWS = 200
CONTEXT_CHARS = 18  # of the context before the token, half that after (the token itself is never cut)
COLUMNS = ("cos", "token", "category", "prompt", "pos", "context")


def outlier_rows(report: Any, tokens_of: Any, length: int, layer: int, category: str | None,
                 has_bos: bool = True) -> list[tuple]:
    """(cos, token, category, prompt, pos, context) of the lowest-cosine records, lowest first.

    The one outlier definition (core/analyses/truncate/outliers.py: ``rank_outliers`` over the selected layer's
    row) and its one context (``token_context``): the token is always shown whole.
    """
    keep = report.record_length == length
    if category is not None:
        keep &= np.array([c == category for c in report.record_category], dtype=bool)
    records, _, scores = rank_outliers(report.cos, MAX_ROWS + 1, layer=layer, keep=keep)
    for first, second in pairwise(float(score) for score in scores):  # the rows' order is a choice too
        note_margin("order", first, (second - first) / 2)
    out = []
    for record, score in zip(records[:MAX_ROWS], scores[:MAX_ROWS], strict=True):
        prompt, pos = int(report.record_prompt[record]), int(report.record_pos[record])
        before, token, after = token_context(tokens_of(prompt), pos, has_bos)
        # DataTable reads str cells as markup: text of the prompt is escaped (markup, control characters).
        context = ("[dim]…" + _shown(before[-CONTEXT_CHARS:]) + "[/][bold reverse]" + _shown(token) + "[/][dim]"
                   + _shown(after[:CONTEXT_CHARS // 2]) + "…[/]")
        out.append((float(score), markup_safe(report.record_token[record]), report.record_category[record],
                    prompt + 1, pos, context))
    return out


def _shown(text: str) -> str:
    return markup_safe(text.replace("\n", "↵"))


class OutliersTable(DataTable):
    BINDINGS: ClassVar[list[BindingType]] = bindings("outliers")  # c, o (tui/keys.py)

    sort_index = 0

    def action_cycle_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(COLUMNS)
        self.sort(self.ordered_columns[self.sort_index].key)


class OutliersPane(Vertical):
    category: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="outliers-header")
        yield OutliersTable(id="outliers-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(OutliersTable)
        for name in COLUMNS:
            table.add_column(name, key=name)

    def cycle_category(self) -> None:
        """The next category filter (the app redraws the pane)."""
        options: list[str | None] = [None, *CATEGORIES]
        self.category = options[(options.index(self.category) + 1) % len(options)]

    def refresh_view(self, state: ViewState) -> None:
        source = state.source
        report = source.ready(Query.truncate())
        header = Text()
        header.append(f"lowest-cosine tokens  c={state.length}  {layer_label(state.layer, state.n_layers, 'L')}  ",
                      style="bold")
        header.append(f"category={self.category or 'all'}", style="bold")
        header.append("   [l] [ ] [c] filter  [o] sort  enter: show", style="dim")
        self.query_one("#outliers-header", Static).update(header)
        table = self.query_one(OutliersTable)
        table.clear()
        if report is None:
            return
        rows = outlier_rows(report, source.tokens, state.length, state.layer, self.category, source.has_bos)
        for index, (cos, token, category, prompt, pos, context) in enumerate(rows):
            table.add_row(
                Text(fixed(cos, 3, sign=True), style="bold"), visible_token(token), category, prompt, pos, context,
                key=f"{prompt - 1}:{pos}:{index}",
            )

    @on(DataTable.RowSelected)
    def _chosen(self, event: DataTable.RowSelected) -> None:
        prompt, pos, _ = str(event.row_key.value).split(":")
        self.post_message(JumpToToken(int(prompt), int(pos)))

    @on(DataTable.HeaderSelected)
    def _sort(self, event: DataTable.HeaderSelected) -> None:
        event.data_table.sort(event.column_key)
