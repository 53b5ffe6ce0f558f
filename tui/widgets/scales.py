"""Perceptual colour scales for cell backgrounds, with a readable foreground for each, and the
display quantisation every number on screen goes through.

Sequential values use viridis (perceptually uniform, colour-blind safe); signed values use a
blue-white-red diverging scale centred on zero (ColorBrewer RdBu). Missing values are grey.

Colours come in steps, not a continuous ramp: a scale spans a round range (its ends are
multiples of a 1-2-5 step) cut into at most a dozen equal steps, and a value takes the colour of
its step. So a colour, a printed digit (``fmt``, ``fixed`` in tui/format.py) and a bar height (charts) are each a
discrete choice made from a float, and each choice can report its *margin*: how far the value
lay from the nearest boundary between two choices. ``recording_margins`` collects them; the
snapshot tests use it to check that no picture rests on the last bits of a float.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from rich.color import Color
from rich.style import Style

# Nine evenly spaced stops of matplotlib's viridis, interpolated linearly in between.
VIRIDIS = (
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
)  # fmt: skip
# ColorBrewer RdBu reversed: low = blue, zero = near white, high = red.
DIVERGING = (
    (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240), (247, 247, 247),
    (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43),
)  # fmt: skip
MISSING_BG = (60, 60, 60)
TARGET_STEPS = 10  # a fitted scale has at most TARGET_STEPS + 2 colour steps


# ----------------------------------------------------------------------------- margins


@dataclass(frozen=True)
class Margin:
    """One display choice: ``value`` lay ``distance`` (in its own units) from a boundary."""

    kind: str
    value: float
    distance: float


_margins: list[Margin] | None = None


@contextmanager
def recording_margins() -> Iterator[list[Margin]]:
    """Collect the margin of every display choice made inside the block (tests use this)."""
    global _margins
    previous, _margins = _margins, []
    try:
        yield _margins
    finally:
        _margins = previous


@contextmanager
def unrecorded() -> Iterator[None]:
    """Choices made from exact numbers (a scale's round ends, a legend's columns) are not noted."""
    global _margins
    previous, _margins = _margins, None
    try:
        yield
    finally:
        _margins = previous


def note_margin(kind: str, value: float, distance: float) -> None:
    if _margins is not None:
        _margins.append(Margin(kind, float(value), abs(float(distance))))


def round_half(kind: str, value: float, position: float, unit: float) -> int:
    """``round(position)``, noting how far ``value`` (= position * unit + offset) was from a .5."""
    note_margin(kind, value, (abs(position - math.floor(position) - 0.5)) * unit)
    return round(position)


# ----------------------------------------------------------------------------- scales


def nice_step(span: float, target: int = TARGET_STEPS) -> float:
    """The smallest 1-2-5 step (times a power of ten) that cuts ``span`` into <= target steps.

    Steps are parsed from decimal text (``2e-3``), so the same choice gives the same bits."""
    raw = span / target
    exponent = math.floor(math.log10(raw))
    candidates = [float(f"5e{exponent - 1}")] + [float(f"{mantissa}e{exponent}") for mantissa in (1, 2, 5, 10)]
    note_margin("scale step", span, min(abs(span - candidate * target) for candidate in candidates))
    return next(candidate for candidate in candidates if candidate >= raw)


def _interpolate(stops: tuple[tuple[int, int, int], ...], fraction: float) -> tuple[int, int, int]:
    fraction = min(1.0, max(0.0, fraction))
    position = fraction * (len(stops) - 1)
    low = min(int(position), len(stops) - 2)
    weight = position - low
    a, b = stops[low], stops[low + 1]
    return tuple(round(a[i] + (b[i] - a[i]) * weight) for i in range(3))  # type: ignore[return-value]


def _foreground(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    # Relative luminance (sRGB approximation): dark text on light cells, light text on dark ones.
    luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255
    return (0, 0, 0) if luminance > 0.5 else (255, 255, 255)


@dataclass(frozen=True)
class Scale:
    """Maps a value to a cell style: ``steps`` equal colour steps over [low, high], sequential
    or diverging around zero (values outside take the end colours)."""

    low: float
    high: float
    diverging: bool = False
    steps: int = TARGET_STEPS

    @classmethod
    def fit(cls, values: Sequence[float | None], diverging: bool = False) -> Scale:
        """A round scale over the finite values: its ends are multiples of a 1-2-5 step (and
        symmetric around zero when diverging), so they move only when the data moves a lot."""
        finite = [value for value in values if value is not None and math.isfinite(value)]
        if not finite:
            return cls(0.0, 1.0, diverging)
        low, high = min(finite), max(finite)
        if diverging:
            bound = max(abs(low), abs(high))
            if bound == 0:
                return cls(-1.0, 1.0, True)
            if not math.isfinite(2 * bound):
                return cls(-bound, bound, True)
            step = nice_step(2 * bound)
            half = _ceil(bound, step)
            return cls(-half * step, half * step, True, 2 * half)
        low, high, steps = round_range(low, high)
        return cls(low, high, False, steps)

    def step_of(self, value: float) -> int:
        """The colour step (0 .. steps-1) of a value, noting its margin to the step's edges."""
        width = (self.high - self.low) / self.steps
        if not width > 0:  # a degenerate scale: one colour
            return 0
        position = (value - self.low) / width
        edge = round(position)
        if 0 < edge < self.steps:  # the scale's own ends are no boundary: beyond them is clipped
            note_margin("colour step", value, (position - edge) * width)
        return min(self.steps - 1, max(0, math.floor(position)))

    def step_rgb(self, step: int) -> tuple[int, int, int]:
        return _interpolate(DIVERGING if self.diverging else VIRIDIS, (step + 0.5) / self.steps)

    def rgb(self, value: float | None) -> tuple[int, int, int]:
        if value is None or not math.isfinite(value):
            return MISSING_BG
        return self.step_rgb(self.step_of(value))

    def style(self, value: float | None) -> Style:
        background = self.rgb(value)
        foreground = (170, 170, 170) if value is None or not math.isfinite(value) else _foreground(background)
        return Style(color=Color.from_rgb(*foreground), bgcolor=Color.from_rgb(*background))


def round_range(low: float, high: float, target: int = TARGET_STEPS) -> tuple[float, float, int]:
    """[low, high] widened to multiples of a 1-2-5 step: (round low, round high, steps)."""
    span = high - low
    if not math.isfinite(span):  # ends near the float limits: no round step to be had
        return low, high, target
    step = nice_step(span if span > 0 else (abs(low) or 1.0), target)
    first = _floor(low, step)
    last = max(first + 1, _ceil(high, step))
    return first * step, last * step, last - first


def _floor(value: float, step: float) -> int:
    """floor(value / step), noting the margin (an end of a fitted scale)."""
    position = value / step
    note_margin("scale end", value, (position - round(position)) * step)
    return math.floor(position)


def _ceil(value: float, step: float) -> int:
    position = value / step
    note_margin("scale end", value, (position - round(position)) * step)
    return math.ceil(position)
