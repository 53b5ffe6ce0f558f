"""The per-layer horizon matrix as a heat map: layers down, k across, each row's horizon marked.

A cell is the loss increase with the horizon enforced at layer N only (core.horizon.scan_by_layer).
Cells with k > N (the windows still reach the embedding: no pass runs, the value is the clean
run's 0) are a dim dot rather than a colour; the row's effective horizon is marked with a
diamond and the selected cell with brackets. A click selects a cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from horizon.tui.format import layer_label
from horizon.tui.widgets.scales import Scale
from rich.style import Style
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

LABEL_WIDTH = 6  # "final " / "L29   "


def unchanged(layer: int, k: int) -> bool:
    """k > N: every reader of layer N still reads the whole stream (K = 2k sublayers)."""
    return k > layer


class LayerMatrix(Widget):
    """Rows = layers 0..L (L labelled final), columns = the scanned ks, coloured by ``scale``."""

    DEFAULT_CSS = "LayerMatrix { height: auto; }"
    result: reactive[Any] = reactive(None, layout=True)
    scale: reactive[Scale] = reactive(lambda: Scale(-1.0, 1.0, True))
    selected: reactive[tuple[int, int] | None] = reactive(None)  # (layer, k)

    @dataclass(eq=False)
    class Selected(Message):
        """A cell was clicked: the horizon at ``layer`` only, window ``k``."""

        layer: int
        k: int

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.result.layers) + 1 if self.result is not None else 1

    def _cell_width(self) -> int:
        width = self.content_region.width or self.size.width or 80
        n_ks = len(self.result.ks) if self.result is not None else 1
        return 2 if LABEL_WIDTH + 2 * n_ks + 6 <= width else 1

    def render(self) -> Text:
        result = self.result
        if result is None:
            return Text("no matrix yet", style="dim")
        cell = self._cell_width()
        n_layers = result.layers[-1]
        lines = []
        for layer, row, horizon in zip(result.layers, result.delta_loss, result.effective_horizon, strict=True):
            label = layer_label(layer, n_layers, "L")
            on_row = self.selected is not None and self.selected[0] == layer
            line = Text(label.ljust(LABEL_WIDTH), style="bold" if on_row else "dim")
            for k, value in zip(result.ks, row, strict=True):
                chosen = self.selected == (layer, k)
                clean = unchanged(layer, k)
                mark = "◆" if k == horizon else ("·" if clean else "")
                if chosen:
                    text = ("[" + (mark or "]")) if cell == 2 else "▣"
                else:
                    text = mark.ljust(cell)
                # A clean cell is exactly 0 and has no pass: it takes no colour (a 0 would sit on a step edge).
                style = Style(dim=not chosen) if clean else self.scale.style(value)
                line.append(text, style + Style(bold=chosen))
            line.append(f" k={horizon}" if horizon is not None else " k=-", style="green")
            lines.append(line)
        ticks = Text(" " * LABEL_WIDTH, style="dim")
        axis = ""
        step = 5 if cell == 2 else 10
        for column, k in enumerate(result.ks):
            if column % step == 0:
                axis = axis.ljust(column * cell) + str(k)
        ticks.append(axis + f"  k →   ◆ row's eff. horizon (tol {result.tol:g})")
        lines.append(ticks)
        return Text("\n").join(lines)

    def on_click(self, event: events.Click) -> None:
        result = self.result
        if result is None:
            return
        row, column = event.y, (event.x - LABEL_WIDTH) // self._cell_width()
        if 0 <= row < len(result.layers) and 0 <= column < len(result.ks) and event.x >= LABEL_WIDTH:
            self.post_message(self.Selected(result.layers[row], result.ks[column]))
