"""The prompt as a wrapped grid of token cells, each coloured by the selected metric.

Whitespace is made visible (space -> ·, newline -> ↵, tab -> →) so a cell always shows what
the token is. The grid is focusable: arrows move the selected token, a click selects the token
under the pointer; either posts ``TokenGrid.Selected``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from horizon.core.untrusted import visible
from horizon.tui.widgets.scales import Scale
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

VISIBLE = str.maketrans({" ": "·", "\n": "↵", "\t": "→", "\r": "␍"})
MAX_CELL = 16  # longer tokens are shown cut, with an ellipsis


def visible_token(text: str) -> str:
    """The token with whitespace and control characters made visible, and long tokens cut."""
    shown = visible(text.translate(VISIBLE)) or "∅"
    return shown if len(shown) <= MAX_CELL else shown[: MAX_CELL - 1] + "…"


@dataclass(frozen=True)
class CellPlace:
    line: int
    start: int
    end: int


def layout(cells: list[str], width: int, breaks_after: list[bool] | None = None) -> list[CellPlace]:
    """Place cells left to right, one space apart, wrapping at ``width`` columns.

    A cell flagged in ``breaks_after`` (a token ending in a newline) ends its line, so the grid
    keeps the prompt's own line structure.
    """
    places = []
    line, column = 0, 0
    for index, cell in enumerate(cells):
        if column > 0 and column + len(cell) > width:
            line, column = line + 1, 0
        places.append(CellPlace(line, column, column + len(cell)))
        column += len(cell) + 1
        if breaks_after is not None and breaks_after[index]:
            line, column = line + 1, 0
    return places


class TokenGrid(Widget, can_focus=True):
    """Token cells coloured by ``values`` (None = no value for that token)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(-1)", "prev token", show=False),
        Binding("right", "move(1)", "next token", show=False),
        Binding("up", "move_line(-1)", "line up", show=False),
        Binding("down", "move_line(1)", "line down", show=False),
        Binding("home", "jump(0)", "first", show=False),
        Binding("end", "jump(-1)", "last", show=False),
    ]

    tokens: reactive[list[str]] = reactive(list, layout=True)
    values: reactive[list[float | None]] = reactive(list)
    scale: reactive[Scale] = reactive(lambda: Scale(0.0, 1.0))
    cursor: reactive[int | None] = reactive(None)

    @dataclass(eq=False)
    class Selected(Message):
        """A token was selected (by keyboard or mouse)."""

        grid: TokenGrid
        index: int

        @property
        def control(self) -> TokenGrid:
            return self.grid

    def _places(self, width: int) -> list[CellPlace]:
        breaks = [token.endswith("\n") for token in self.tokens]
        return layout([visible_token(token) for token in self.tokens], max(1, width), breaks)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        places = self._places(width)
        return (places[-1].line + 1) if places else 1

    def render(self) -> Text:
        width = self.content_region.width or self.size.width
        places = self._places(width)
        n_lines = (places[-1].line + 1) if places else 1
        lines: list[Text] = [Text() for _ in range(n_lines)]
        for index, (token, place) in enumerate(zip(self.tokens, places, strict=True)):
            value = self.values[index] if index < len(self.values) else None
            style = self.scale.style(value)
            if index == self.cursor:
                style += Style(bold=True, underline=True, reverse=True)
            line = lines[place.line]
            if place.start > 0:
                line.append(" ")
            line.append(visible_token(token), style)
        return Text("\n").join(lines)

    def set_data(self, tokens: list[str], values: list[float | None], scale: Scale) -> None:
        self.tokens = tokens
        self.values = values
        self.scale = scale

    def select(self, index: int | None) -> None:
        if index is not None and self.tokens:
            index = max(0, min(index, len(self.tokens) - 1))
        self.cursor = index
        if index is not None:
            self.post_message(self.Selected(self, index))
            self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        places = self._places(self.content_region.width or self.size.width)
        if self.cursor is not None and self.cursor < len(places):
            place = places[self.cursor]
            origin = self.virtual_region
            target = Region(origin.x + place.start, origin.y + place.line, place.end - place.start, 1)
            if isinstance(self.parent, Widget):
                self.parent.scroll_to_region(target, animate=False, immediate=True)

    def action_move(self, step: int) -> None:
        self.select(0 if self.cursor is None else self.cursor + step)

    def action_jump(self, index: int) -> None:
        self.select(index if index >= 0 else len(self.tokens) - 1)

    def action_move_line(self, step: int) -> None:
        places = self._places(self.content_region.width or self.size.width)
        if not places:
            return
        if self.cursor is None:
            self.select(0)
            return
        here = places[self.cursor]
        target_line = here.line + step
        candidates = [i for i, place in enumerate(places) if place.line == target_line]
        if candidates:
            self.select(min(candidates, key=lambda i: abs(places[i].start - here.start)))

    def index_at(self, x: int, y: int) -> int | None:
        """The token under content offset (x, y), if any."""
        for index, place in enumerate(self._places(self.content_region.width or self.size.width)):
            if place.line == y and place.start <= x < place.end:
                return index
        return None

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        index = self.index_at(offset.x, offset.y)
        if index is not None:
            self.focus()
            self.select(index)
