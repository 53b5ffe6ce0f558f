"""Small text charts: a colour legend and a cell heat map (the inline sparkline is tui/format.py's:
text, so the CLI shares it without importing Textual; real plots with axes are FigurePlot's,
tui/widgets/plot.py).

Textual's own ``Sparkline`` widget is not used: the per-layer sparklines sit inline in a table
row and in the detail pane's text, and their bar heights must go through the noted rounding
(tui/widgets/scales.py) that keeps the snapshot pictures the same on every CPU."""

from __future__ import annotations

import math

from horizon.tui.format import fmt
from horizon.tui.widgets.scales import Scale, unrecorded
from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.reactive import reactive
from textual.widget import Widget


def legend_text(scale: Scale, label: str, width: int = 24) -> Text:
    """A colour bar of the scale's steps with its end labels: ``label  low ████ high``."""
    text = Text(f"{label} ", style="bold")
    with unrecorded():  # the ends are round numbers, the columns whole steps: nothing to round
        text.append(fmt(scale.low) + " ")
        for column in range(width):
            rgb = scale.step_rgb(column * scale.steps // width)
            text.append(" ", Style(bgcolor=Color.from_rgb(*rgb)))
        text.append(" " + fmt(scale.high))
    text.append("  ")
    text.append("  ", scale.style(None))
    text.append(" n/a", style="dim")
    return text


class Legend(Widget):
    """The colour legend of the grid or heat map beside it."""

    DEFAULT_CSS = "Legend { height: 1; }"
    scale: reactive[Scale] = reactive(lambda: Scale(0.0, 1.0))
    label: reactive[str] = reactive("")

    def render(self) -> Text:
        return legend_text(self.scale, self.label, width=max(8, min(32, self.size.width - 30)))


class HeatMap(Widget):
    """A rows x columns matrix as coloured cells, with row labels and column ticks.

    Columns are averaged into buckets when there are more columns than fit, so the whole
    matrix is always visible; ``cell_width`` characters per column otherwise.
    """

    DEFAULT_CSS = "HeatMap { height: auto; }"
    matrix: reactive[list[list[float | None]]] = reactive(list, layout=True)
    row_labels: reactive[list[str]] = reactive(list)
    scale: reactive[Scale] = reactive(lambda: Scale(0.0, 1.0))
    cell_width: reactive[int] = reactive(2)
    column_title: reactive[str] = reactive("")

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.matrix) + 1 if self.matrix else 1

    def _columns(self, width: int) -> tuple[list[list[float | None]], int, int]:
        """The matrix bucketed to fit: (rows, cell width, columns per bucket)."""
        label_width = max((len(label) for label in self.row_labels), default=0) + 1
        n_cols = max((len(row) for row in self.matrix), default=0)
        room = max(1, width - label_width)
        # Wide terminals get wider cells (up to 6 columns each); narrow ones fall back to 1.
        cell = max(self.cell_width, min(6, room // max(1, n_cols)))
        if n_cols * cell > room:
            cell = 1
        per_bucket = max(1, math.ceil(n_cols / room)) if n_cols > room else 1
        rows = []
        for row in self.matrix:
            bucketed = []
            for start in range(0, len(row), per_bucket):
                chunk = [v for v in row[start : start + per_bucket] if v is not None and math.isfinite(v)]
                bucketed.append(sum(chunk) / len(chunk) if chunk else None)
            rows.append(bucketed)
        return rows, cell, per_bucket

    def render(self) -> Text:
        if not self.matrix:
            return Text("no data yet", style="dim")
        width = self.content_region.width or self.size.width or 80
        rows, cell, per_bucket = self._columns(width)
        label_width = max((len(label) for label in self.row_labels), default=0)
        lines = []
        for index, row in enumerate(rows):
            label = self.row_labels[index] if index < len(self.row_labels) else str(index)
            line = Text(label.rjust(label_width) + " ", style="dim")
            for value in row:
                line.append(" " * cell, Style(bgcolor=self.scale.style(value).bgcolor))
            lines.append(line)
        n_cols = len(rows[0]) if rows else 0
        ticks = Text(" " * (label_width + 1), style="dim")
        step = max(1, 10 // cell)
        axis = ""
        for column in range(0, n_cols, step):
            tick = str(column * per_bucket)
            axis = axis.ljust(column * cell) + tick
        ticks.append(axis[: max(0, width - label_width - 1)])
        if self.column_title:
            ticks.append("  " + self.column_title)
        lines.append(ticks)
        return Text("\n").join(lines)
