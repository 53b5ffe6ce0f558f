"""The prompt picker: type to filter the prompts by text, enter to choose one."""

from __future__ import annotations

from typing import ClassVar

from horizon.core.untrusted import visible
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option


def matching(prompts: list[str], query: str) -> list[int]:
    """Indices of the prompts containing every word of ``query`` (case-insensitive)."""
    words = query.lower().split()
    return [index for index, text in enumerate(prompts) if all(word in text.lower() for word in words)]


class PromptPicker(ModalScreen[int | None]):
    """Returns the chosen prompt's index, or None when dismissed."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "close")]

    def __init__(self, prompts: list[str], current: int = 0) -> None:
        super().__init__()
        self.prompts = prompts
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box"):
            yield Input(placeholder="search prompts…", id="picker-search")
            yield OptionList(id="picker-list")

    def on_mount(self) -> None:
        self._fill("")
        self.query_one(Input).focus()

    def _fill(self, query: str) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        for index in matching(self.prompts, query)[:500]:
            label = self.prompts[index].replace("\n", "↵ ")
            # A Text, not a str: the prompt is shown as written, never read as markup.
            options.add_option(Option(Text(f"{index:>4}  {visible(label[:200])}"), id=str(index)))
        if options.option_count:
            options.highlighted = 0

    def on_input_changed(self, event: Input.Changed) -> None:
        self._fill(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        options = self.query_one(OptionList)
        if options.highlighted is not None:
            option = options.get_option_at_index(options.highlighted)
            self.dismiss(int(option.id or 0))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def key_down(self) -> None:
        self.query_one(OptionList).action_cursor_down()

    def key_up(self) -> None:
        self.query_one(OptionList).action_cursor_up()
