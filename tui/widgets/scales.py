"""Perceptual colour scales for cell backgrounds, with a readable foreground for each.

Sequential values use viridis (perceptually uniform, colour-blind safe); signed values use a
blue-white-red diverging scale centred on zero (ColorBrewer RdBu). Missing values are grey.
"""

from __future__ import annotations

import math
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
    """Maps a value to a cell style: sequential over [low, high], or diverging around zero."""

    low: float
    high: float
    diverging: bool = False

    @classmethod
    def fit(cls, values: list[float | None], diverging: bool = False) -> Scale:
        """A scale spanning the finite values (symmetric around zero when diverging)."""
        finite = [value for value in values if value is not None and math.isfinite(value)]
        if not finite:
            return cls(0.0, 1.0, diverging)
        low, high = min(finite), max(finite)
        if diverging:
            bound = max(abs(low), abs(high)) or 1.0
            return cls(-bound, bound, True)
        if high - low < 1e-12:
            high = low + 1.0
        return cls(low, high, False)

    def fraction(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low) if self.high > self.low else 0.5

    def rgb(self, value: float | None) -> tuple[int, int, int]:
        if value is None or not math.isfinite(value):
            return MISSING_BG
        return _interpolate(DIVERGING if self.diverging else VIRIDIS, self.fraction(value))

    def style(self, value: float | None) -> Style:
        background = self.rgb(value)
        foreground = (170, 170, 170) if value is None or not math.isfinite(value) else _foreground(background)
        return Style(color=Color.from_rgb(*foreground), bgcolor=Color.from_rgb(*background))


def fmt(value: float | None, digits: int = 3) -> str:
    """A short number for labels: n/a for missing values."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 10 ** -(digits)):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if abs(value) >= 100 else f"{value:.{digits}f}"
