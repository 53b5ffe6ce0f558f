"""A keyboard-and-mouse integer slider: ←/→ step, Home/End jump, click sets the value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget


class Slider(Widget, can_focus=True):
    """An integer value in [minimum, maximum], drawn as a track with a knob."""

    DEFAULT_CSS = "Slider { height: 1; width: 1fr; }"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left,minus", "step(-1)", "−1", show=False),
        Binding("right,plus,equals_sign", "step(1)", "+1", show=False),
        Binding("home", "jump(0)", "min", show=False),
        Binding("end", "jump(1)", "max", show=False),
    ]

    value: reactive[int] = reactive(0)
    minimum: reactive[int] = reactive(0)
    maximum: reactive[int] = reactive(10)

    @dataclass(eq=False)
    class Changed(Message):
        slider: Slider
        value: int

        @property
        def control(self) -> Slider:
            return self.slider

    def __init__(self, label: str, minimum: int, maximum: int, value: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.set_reactive(Slider.minimum, minimum)
        self.set_reactive(Slider.maximum, maximum)
        self.set_reactive(Slider.value, max(minimum, min(maximum, value)))

    def validate_value(self, value: int) -> int:
        return max(self.minimum, min(self.maximum, int(value)))

    def watch_value(self, old: int, new: int) -> None:
        if old != new:
            self.post_message(self.Changed(self, new))

    def _track(self) -> tuple[int, int]:
        prefix = len(self.label) + 1
        suffix = len(str(self.maximum)) + 2
        return prefix, max(4, self.size.width - prefix - suffix)

    def render(self) -> Text:
        _, track = self._track()
        span = max(1, self.maximum - self.minimum)
        knob = round((self.value - self.minimum) / span * (track - 1))
        text = Text(self.label + " ", style="bold" if self.has_focus else "")
        text.append("━" * knob, "magenta" if self.has_focus else "cyan")
        text.append("●", "bold magenta" if self.has_focus else "bold")
        text.append("─" * (track - 1 - knob), "dim")
        text.append(f" {self.value}".rjust(len(str(self.maximum)) + 2), "bold")
        return text

    def action_step(self, step: int) -> None:
        self.value = self.value + step

    def action_jump(self, to_max: int) -> None:
        self.value = self.maximum if to_max else self.minimum

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        prefix, track = self._track()
        if prefix <= offset.x < prefix + track:
            span = self.maximum - self.minimum
            self.value = self.minimum + round((offset.x - prefix) / max(1, track - 1) * span)
