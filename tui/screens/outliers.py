"""Screen 4, Outliers: the lowest-cosine tokens at the selected length and layer, filterable
by category and sortable by any column (click a header or press o); enter jumps to the token."""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar

import numpy as np
from horizon.core.categories import CATEGORIES
from horizon.core.untrusted import markup_safe
from horizon.tui.screens.views import layer_name
from horizon.tui.widgets.scales import fixed, note_margin
from horizon.tui.widgets.token_grid import visible_token
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Static

MAX_ROWS = 200
COLUMNS = ("cos", "token", "category", "prompt", "pos", "context")


def outlier_rows(report: Any, tokens_of: Any, length: int, layer: int, category: str | None) -> list[tuple]:
    """(cos, token, category, prompt, pos, context) of the lowest-cosine records, lowest first."""
    keep = report.record_length == length
    if category is not None:
        keep &= np.array([c == category for c in report.record_category], dtype=bool)
    rows = np.nonzero(keep)[0]
    order = rows[np.argsort(report.cos[rows, layer], kind="stable")][: MAX_ROWS + 1]
    shown = [float(report.cos[row, layer]) for row in order]
    for first, second in pairwise(shown):  # the rows' order is a choice too
        note_margin("order", first, (second - first) / 2)
    order = order[:MAX_ROWS]
    out = []
    for row in order:
        prompt, pos = int(report.record_prompt[row]), int(report.record_pos[row])
        tokens = tokens_of(prompt)
        before = "".join(tokens[max(1, pos - 6) : pos]).replace("\n", "↵")
        # DataTable reads str cells as markup: text of the prompt is escaped (markup, control characters).
        out.append((float(report.cos[row, layer]), markup_safe(report.record_token[row]), report.record_category[row],
                    prompt + 1, pos, markup_safe(before[-24:] + "[" + tokens[pos].replace("\n", "↵") + "]")))
    return out


class OutliersTable(DataTable):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "app.cycle_category", "category"),
        Binding("o", "cycle_sort", "sort"),
    ]

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
        options: list[str | None] = [None, *CATEGORIES]
        self.category = options[(options.index(self.category) + 1) % len(options)]
        self.refresh_view()

    def refresh_view(self) -> None:
        app: Any = self.app
        if app.session is None:
            return
        session = app.session
        report = session.cached("truncation")
        header = Text()
        header.append(f"lowest cosine  c={app.length}  {layer_name(app.layer, session.n_layers)}  ", style="bold")
        header.append(f"category={self.category or 'all'}", style="bold")
        header.append("   [l] [ ] [c] filter  [o] sort  enter: show", style="dim")
        self.query_one("#outliers-header", Static).update(header)
        table = self.query_one(OutliersTable)
        table.clear()
        if report is None:
            return
        rows = outlier_rows(report, session.tokens, app.length, app.layer, self.category)
        for index, (cos, token, category, prompt, pos, context) in enumerate(rows):
            table.add_row(
                Text(fixed(cos, 3, sign=True), style="bold"), visible_token(token), category, prompt, pos, context,
                key=f"{prompt - 1}:{pos}:{index}",
            )

    @on(DataTable.RowSelected)
    def _chosen(self, event: DataTable.RowSelected) -> None:
        prompt, pos, _ = str(event.row_key.value).split(":")
        app: Any = self.app
        app.jump_to_token(int(prompt), int(pos))

    @on(DataTable.HeaderSelected)
    def _sort(self, event: DataTable.HeaderSelected) -> None:
        event.data_table.sort(event.column_key)
