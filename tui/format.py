"""The number formatters and layer label of the app and the CLI (tui/ is the UI layer of both):
no other module defines its own.

``fixed`` and ``fmt`` note the margin of each rounding (tui/widgets/scales.py: the snapshot tests
check that no printed digit rests on float noise); ``number`` is the CLI's fixed-decimals form of
``fixed`` with ``-`` for a missing value; ``grouped`` is the ``horizon norms`` tables' form for
values spanning decades (thousands grouped, one decimal from 10, three significant figures below).
``layer_label`` names a residual row: ``final`` for row L (the final residual), the layer's number
otherwise. ``sparkline`` is the one inline sparkline (the app's norms and detail pane, the CLI's
``horizon norms``). ``quantise`` rounds a plotted value to a few significant figures, so a
terminal plot's pixels are chosen from decimal numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from horizon.tui.widgets.scales import note_margin, round_half

BLOCKS = "▁▂▃▄▅▆▇█"


def fixed(value: float, decimals: int, sign: bool = False) -> str:
    """``f"{value:.{decimals}f}"`` (``+`` with ``sign``), noting the rounding margin."""
    unit = 10.0**-decimals
    round_half("digit", value, value / unit, unit)
    return f"{value:{'+' if sign else ''}.{decimals}f}"


def fmt(value: float | None, digits: int = 3) -> str:
    """A short number for labels: ``digits`` decimals below 1, ``digits`` significant figures
    from 1 up (so a label never claims more precision than the value has); n/a when missing."""
    if value is None or not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    if value != 0 and (magnitude >= 1e4 or magnitude < 10**-digits):
        exponent = math.floor(math.log10(magnitude))
        unit = 10.0 ** (exponent - digits + 1)
        round_half("digit", value, value / unit, unit)
        return f"{value:.{digits - 1}e}"
    if magnitude >= 1:  # the number of decimals changes at each power of ten
        exponent = math.floor(math.log10(magnitude))
        note_margin("digit", value, min(magnitude - 10.0**exponent, 10.0 ** (exponent + 1) - magnitude))
    else:
        note_margin("digit", value, min(magnitude - 10.0**-digits, 1 - magnitude) if value != 0 else 1.0)
    if magnitude < 1:
        return fixed(value, digits)
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    return fixed(value, decimals)


def quantise(value: float | None, digits: int = 3, decimals: int | None = None) -> float | None:
    """``value`` to ``digits`` significant figures (or to ``decimals`` decimals: values of a fixed
    range, such as cosines), noting the rounding margin; None when missing.

    The result is the float of its decimal text, so one rounding gives the same bits everywhere:
    a plot drawn from quantised values cannot change with the last bits of a float. (Near a power
    of ten both candidate exponents round to that power, so only the rounding itself is noted.)
    """
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    exponent = -decimals if decimals is not None else math.floor(math.log10(abs(value))) - digits + 1
    unit = 10.0**exponent
    count = round_half("plot value", value, value / unit, unit)
    return float(f"{count}e{exponent}")


def number(value: float | None, digits: int = 3) -> str:
    """The CLI's fixed-decimals number: ``digits`` decimals, ``-`` when missing or not finite."""
    if value is None or not math.isfinite(value):
        return "-"
    return fixed(value, digits)


def grouped(value: float | None) -> str:
    """``20,605`` from 1000 up, ``142.5`` from 10, ``2.73`` below (3 significant figures); ``-`` when missing."""
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def layer_label(layer: int, n_layers: int, prefix: str = "") -> str:
    """``final`` for row ``n_layers`` (the final residual), else ``prefix`` + the layer's number."""
    return "final" if layer == n_layers else f"{prefix}{layer}"


def sparkline(values: Sequence[float | None], low: float | None = None, high: float | None = None) -> str:
    """One block character per value, scaled between ``low`` and ``high`` (default: the data's range)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(values)
    low = min(finite) if low is None else low
    high = max(finite) if high is None else high
    span = high - low
    out = []
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(" ")
            continue
        if span <= 0:
            level = len(BLOCKS) // 2
        else:
            position = (value - low) / span * (len(BLOCKS) - 1)
            level = math.floor(position + 0.5)
            note_margin("bar height", value, (abs(position - math.floor(position) - 0.5)) * span / (len(BLOCKS) - 1))
        out.append(BLOCKS[min(len(BLOCKS) - 1, max(0, level))])
    return "".join(out)
