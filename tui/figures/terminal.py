"""The seeds' figures in the terminal: one function per figure, drawing onto a plotext ``Plot``.

The same eleven figures as tui/figures/plots.py (matplotlib, for files), from the same
``core.compare.FigureInput``; no science here, every number comes from the inputs. Overlaid
figures (1, 4, 7, 9) take a list of inputs, one colour per model, and ``x="depth"`` puts layer i
of an L-layer model at i / L.

Why the pixels cannot flip with the last bits of a float: every plotted value goes through
``tui.format.quantise`` (3 significant figures, cosines 2 decimals; its margin noted like every display
choice, tui/widgets/scales.py), and everything after that (axis ends, ticks, log decades, pixel
positions) is computed from those decimal numbers only, the same bits on every machine. Axes
have round ends and round ticks, spaced so that their labels never meet; log axes (the norms)
are drawn as log10 of the values on a linear plotext axis with decade ticks labelled in the
values' own units.

Over 400 lines for a reason: eleven figures, one short function each, read best side by side
(as in plots.py); the axis and series helpers come first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from horizon.core.sources.compare import FigureInput, across_models, fit_line
from horizon.core.untrusted import visible
from horizon.tui.figures import FIGURES, TABLE, has_input
from horizon.tui.format import fixed, fmt, quantise
from horizon.tui.widgets.scales import Scale, nice_step, note_margin, unrecorded

# Model colours: plots.py's palette (tab10 without its orange, which is the fit line's).
PALETTE = [(31, 119, 180), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
           (127, 127, 127), (188, 189, 34), (23, 190, 207)]
FIT_COLOUR = (255, 127, 14)
MARK_COLOUR = (255, 0, 255)  # the Horizon screen's current k
HORIZON_COLOUR = (0, 200, 0)  # the effective horizon
LABEL_COLOUR = (170, 170, 170)  # text on the canvas (a heat map's scale)
LINE = "braille"  # the finest plotext marker: 2x4 dots per character
# One line of a plot: x positions, y values (None: missing), colour, legend label (None: none), marker.
Series = tuple[list[float], list[float | None], Any, str | None, str]


def colours(n: int) -> list[tuple[int, int, int]]:
    return [PALETTE[index % len(PALETTE)] for index in range(n)]


# ----------------------------------------------------------------------------- names


def name_of(stem: str) -> str:
    """``fig01-norm-growth`` -> ``norm_growth`` (plots.py's function names)."""
    return stem.split("-", 1)[1].replace("-", "_")


# From the one figure table (tui/figures/__init__.py), in its order: by name, the input field each
# needs, the overlaid ones, those over models (one point per model) and the file stems.
NEEDS = {figure.name: figure.need for figure in TABLE}
OVERLAID = tuple(figure.name for figure in TABLE if figure.overlaid)
ACROSS = tuple(figure.name for figure in TABLE if figure.across)
STEMS = {figure.name: figure.stem for figure in TABLE}


def figure_name(figure: str) -> str:
    """A figure's name from its name or its file stem; HorizonError-free: unknown names raise ValueError."""
    name = name_of(figure) if figure in FIGURES else figure
    if name not in NEEDS:
        raise ValueError(f"no terminal figure {figure!r}")
    return name


def has_data(item: FigureInput, name: str) -> bool:
    return has_input(item, NEEDS[figure_name(name)])


def title_of(name: str) -> str:
    return FIGURES[STEMS[figure_name(name)]][0]


# ----------------------------------------------------------------------------- axes


@dataclass(frozen=True)
class Axis:
    """Round ends and ticks (labels given); ``log``: positions are log10 of the values."""

    low: float
    high: float
    ticks: tuple[float, ...]
    labels: tuple[str, ...]
    log: bool = False

    def at(self, value: float) -> float:
        return math.log10(value) if self.log else value

    @property
    def limits(self) -> tuple[float, float]:
        return self.at(self.low), self.at(self.high)


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def linear_axis(values: Sequence[float | None], room: int, per_tick: Callable[[int], int],
                integer: bool = False) -> Axis:
    """A linear axis over ``values`` (quantised): round ends, at most as many round ticks as fit.

    ``room``: characters (x) or rows (y) along the axis; ``per_tick(label width)``: the room one
    tick needs so that neighbouring labels never meet.
    """
    finite = _finite(values)
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high == low:
        low, high = (low - 1, high + 1) if integer or low == 0 else (low - abs(low) / 2, high + abs(high) / 2)
    target = max(1, room // per_tick(3))
    with unrecorded():  # exact decimals: nothing here can flip
        while True:
            step = nice_step(high - low, target)
            if integer:
                step = max(1.0, step)
            first, last = math.floor(round(low / step, 9)), math.ceil(round(high / step, 9))
            decimals = _decimals(step) if not integer else 0
            labels = tuple(f"{index * step:.{decimals}f}" for index in range(first, last + 1))
            width = max(len(label) for label in labels)
            if target == 1 or (last - first) * per_tick(width) <= room - 1:
                break
            target -= 1
    ticks = tuple(index * step for index in range(first, last + 1))
    return Axis(first * step, last * step, ticks, labels)


def _log_label(mantissa: int, exponent: int) -> str:
    value = float(f"{mantissa}e{exponent}")
    return f"{value:g}" if -4 <= exponent <= 5 else f"{mantissa}e{exponent}"


def _log_marks(first: int, last: int) -> list[tuple[int, int]]:
    """(mantissa, exponent) of every 1-2-5 value from 10^first up to 10^last."""
    return [(m, e) for e in range(first, last) for m in (1, 2, 5)] + [(1, last)]


def log_axis(values: Sequence[float | None], rows: int) -> Axis:
    """A log axis over the positive ``values`` (quantised): its ends the nearest 1-2-5 values
    outside the data, ticks at the decades (and at 2 and 5 between them while they fit, one label
    per two rows), always including both ends."""
    positive = [v for v in _finite(values) if v > 0] or [1.0]
    low, high = min(positive), max(positive)
    marks = _log_marks(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    below = [mark for mark in marks if float(f"{mark[0]}e{mark[1]}") <= low]
    above = [mark for mark in marks if float(f"{mark[0]}e{mark[1]}") >= high]
    first, last = marks.index(below[-1]), marks.index(above[0])
    if first == last:
        last += 1
    span = marks[first : last + 1]
    room = max(2, rows // 2 + 1)
    if len(span) > room:  # too many for the rows: the decades, then every few of them
        decades = [mark for mark in span if mark[0] == 1]
        every = max(1, math.ceil((len(decades) + 2) / room))
        span = [span[0], *[mark for mark in decades[::every] if mark not in (span[0], span[-1])], span[-1]]
    positions = [math.log10(float(f"{m}e{e}")) for m, e in span]
    row = (positions[-1] - positions[0]) / max(1, rows - 1)  # log10 units per row
    kept = [0]
    for index in range(1, len(span)):  # two rows at least between labels; the top end always kept
        if positions[index] - positions[kept[-1]] >= 2 * row:
            kept.append(index)
        elif index == len(span) - 1:
            kept[-1:] = [index] if len(kept) > 1 else [0, index]
    marks_kept = [span[index] for index in kept]
    return Axis(float(f"{span[0][0]}e{span[0][1]}"), float(f"{span[-1][0]}e{span[-1][1]}"),
                tuple(positions[index] for index in kept), tuple(_log_label(m, e) for m, e in marks_kept), log=True)


def _x_per_tick(width: int) -> int:
    return width + 2  # one blank either side of a centred label


def _y_per_tick(_: int) -> int:
    return 2  # a blank row between two tick labels


def x_axis(values: Sequence[float | None], width: int, integer: bool = True) -> Axis:
    return linear_axis(values, max(10, width - 10), _x_per_tick, integer=integer)


def y_axis(values: Sequence[float | None], height: int, log: bool = False) -> Axis:
    rows = max(3, height - 5)  # title, tick labels, axis labels and the frame take five rows
    return log_axis(values, rows) if log else linear_axis(values, rows, _y_per_tick)


COSINE_DECIMALS = 2  # cosines lie in [-1, 1]: 0.01 is about one braille dot of a 160x48 plot


def quantised(values: Any, decimals: int | None = None) -> list[float | None]:
    """Every value of a sequence rounded for plotting (None where missing or not finite): to 3
    significant figures, or to ``decimals`` decimals."""
    return [quantise(None if value is None else float(value), decimals=decimals) for value in values]


def _positions(rows: Sequence[float], n_layers: int | None, x: str) -> list[float]:
    return [row / n_layers if x == "depth" and n_layers else float(row) for row in rows]


def xlabel(x: str, what: str = "layer") -> str:
    return "relative depth (layer / L)" if x == "depth" else what


# ----------------------------------------------------------------------------- drawing


@dataclass
class Panel:
    """One plot area of a figure: its plotext subplot (or the figure itself) and its size."""

    plt: Any
    width: int
    height: int


def line(panel: Panel, xs: Sequence[float], ys: Sequence[float | None], yaxis: Axis, colour: Any,
         label: str | None = None, marker: str = LINE, lines: bool = True) -> None:
    """A series, missing points left out (the line joins the points on either side)."""
    points = [(x, yaxis.at(y)) for x, y in zip(xs, ys, strict=True)
              if y is not None and (not yaxis.log or yaxis.low <= y <= yaxis.high)]  # log: BOS apart
    if not points:
        return
    draw = panel.plt.plot if lines and len(points) > 1 else panel.plt.scatter
    draw([p[0] for p in points], [p[1] for p in points], marker=marker, color=colour,
         label=None if label is None else visible(label))


def fit_text(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters (plotext leaves out a title wider than the plot)."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def frame(panel: Panel, title: str, xaxis: Axis, yaxis: Axis, xname: str, yname: str) -> None:
    plt = panel.plt
    plt.title(fit_text(visible(title), panel.width))
    plt.xlabel(xname)
    plt.ylabel(yname)
    plt.xlim(*xaxis.limits)
    plt.ylim(*yaxis.limits)
    plt.xticks(list(xaxis.ticks), list(xaxis.labels))
    plt.yticks(list(yaxis.ticks), list(yaxis.labels))


def empty(panel: Panel, message: str) -> None:
    panel.plt.title(fit_text(visible(message), panel.width))


def _panels(plt: Any, width: int, height: int, n: int) -> list[Panel]:
    if n == 1:
        return [Panel(plt, width, height)]
    plt.subplots(1, n)
    return [Panel(plt.subplot(1, column + 1), width // n, height) for column in range(n)]


# ----------------------------------------------------------------------------- (1) norm growth


def norm_growth(panel: Panel, inputs: list[FigureInput], x: str = "layer", **_: Any) -> None:
    """(1) Mean resid_pre norm per layer on a log axis, the fitted rate over its window, BOS apart."""
    items = [item for item in inputs if item.norms]
    series: list[Series] = []
    bos_series: list[Series] = []
    for item, colour in zip(items, colours(len(items)), strict=True):
        norms = item.norms or {}
        mean = quantised(norms["sites"]["resid_pre"]["mean_norm"])
        rows = list(range(len(mean)))
        series.append((_positions(rows, item.n_layers, x), mean, colour, visible(item.label), LINE))
        fitted = fit_line(norms)
        if fitted is not None:
            growth = norms.get("growth") or {}
            fit_colour = FIT_COLOUR if len(items) == 1 else colour
            label = f"fit {fmt(growth.get('rate'))}/layer, rows {fitted[0][0]}-{fitted[0][-1]}"
            series.append((_positions(fitted[0], item.n_layers, x), quantised(fitted[1]), fit_colour, label, LINE))
        bos = (norms.get("bos") or {}).get("mean_norm")
        if bos:
            bos_series.append((_positions(list(range(len(bos))), item.n_layers, x), quantised(bos), colour,
                               "BOS (apart)" if len(items) == 1 else f"{visible(item.label)} BOS", "x"))
    # BOS is apart: its norm (often 10-100x the others) does not set the axis, which would squeeze
    # the growth curve; its points beyond the axis are left out, and the title says up to where.
    title = "mean ‖resid_pre‖ per layer (log; BOS excluded)"
    if series and bos_series:
        top = log_axis([v for s in series for v in s[1]], max(3, panel.height - 5)).high
        highest = max((v for s in bos_series for v in _finite(s[1])), default=0.0)
        if highest > top:
            with unrecorded():  # a quantised value: an exact decimal
                title = f"mean ‖resid_pre‖ per layer (log; BOS apart, up to {fmt(highest)})"
    _draw_series(panel, series + bos_series, x, title, "‖resid_pre‖", log=True, apart=len(bos_series))


def _draw_series(panel: Panel, series: Sequence[Series], x: str,
                 title: str, yname: str, log: bool = False, xname: str | None = None,
                 integer_x: bool = True, apart: int = 0) -> tuple[Axis, Axis] | None:
    """Axes over every series but the last ``apart`` (drawn where they fall inside), then the
    series (marker ``x``: points only)."""
    if not series:
        empty(panel, f"{title}: no data")
        return None
    xaxis = x_axis([v for s in series for v in s[0]], panel.width, integer=integer_x and x != "depth")
    yaxis = y_axis([v for s in series[: len(series) - apart] for v in s[1]], panel.height, log=log)
    # A legend taller than half the plot would hide the lines: then the title and axes must do.
    legend = sum(1 for s in series if s[3]) <= max(1, (panel.height - 5) // 2)
    for xs, ys, colour, label, marker in series:
        line(panel, xs, ys, yaxis, colour, label if legend else None, marker=marker, lines=marker != "x")
    frame(panel, title, xaxis, yaxis, xname or xlabel(x), yname)
    return xaxis, yaxis


# ----------------------------------------------------------------------------- (4) sublayers


SITE_MARKERS = {"resid_pre": LINE, "attn_out": "dot", "mlp_out": "+"}  # overlays: colour is the model
SITE_COLOURS = {"resid_pre": PALETTE[0], "attn_out": PALETTE[1], "mlp_out": PALETTE[2]}


def sublayer_norms(panel: Panel, inputs: list[FigureInput], x: str = "layer", **_: Any) -> None:
    """(4) Mean norms of attn_out and mlp_out per layer beside the resid_pre growth (log axis)."""
    items = [item for item in inputs if item.norms]
    series: list[Series] = []
    for item, colour in zip(items, colours(len(items)), strict=True):
        sites = (item.norms or {}).get("sites", {})
        for site in SITE_MARKERS:
            if site in sites:
                values = quantised(sites[site]["mean_norm"])
                label = site if len(items) == 1 else f"{visible(item.label)} {site}"
                series.append((_positions(list(range(len(values))), item.n_layers, x), values,
                               SITE_COLOURS[site] if len(items) == 1 else colour, label,
                               LINE if len(items) == 1 else SITE_MARKERS[site]))
    _draw_series(panel, series, x, "sublayer output norms and the residual stream (log)", "mean norm", log=True)


# ----------------------------------------------------------------------------- (7) loss vs k


def loss_vs_k(panel: Panel, inputs: list[FigureInput], x: str = "layer", current_k: int | None = None,
              **_: Any) -> None:
    """(7) Loss against k, one line per start layer (and ablation), the clean loss and its tolerance
    band's top; ``current_k``: the Horizon screen's k, a vertical line."""
    items = [item for item in inputs if item.scan]
    title = "loss under an enforced layer horizon"
    series: list[Series] = []
    marks: list[tuple[float, Any]] = []
    for item, colour in zip(items, colours(len(items)), strict=True):
        scan = item.scan or {}
        ablation = str(scan.get("ablation", "zero"))
        rows = scan.get("rows") or []
        ks_all = sorted({float(row["k"]) for row in rows})
        clean, tol = quantise(scan.get("loss_clean")), scan.get("tol")
        if clean is not None and ks_all:  # drawn first: the loss lines go over them
            ends = _positions([ks_all[0], ks_all[-1]], item.n_layers, x)
            series.append((ends, [clean, clean], FIT_COLOUR if len(items) == 1 else colour,
                           "clean loss" if len(items) == 1 else f"{visible(item.label)} clean", LINE))
            if tol is not None:
                series.append((ends, [quantise(clean + float(tol))] * 2, (150, 150, 150), f"tolerance +{tol:g}", "."))
        for start in sorted({row["start_layer"] for row in rows}):
            chosen = sorted((row for row in rows if row["start_layer"] == start), key=lambda row: row["k"])
            ks = [float(row["k"]) for row in chosen]
            prefix = "" if len(items) == 1 else f"{visible(item.label)} "
            series.append((_positions(ks, item.n_layers, x), quantised([row["loss"] for row in chosen]), colour,
                           f"{prefix}S={start}, {ablation}", LINE))
        horizon = scan.get("effective_horizon") or {}
        first = horizon.get(0, horizon.get("0"))
        if first is not None and len(items) == 1:
            marks.append((_positions([float(first)], item.n_layers, x)[0], HORIZON_COLOUR))
            title += f"; effective horizon k={first} (green)"
    if current_k is not None and items:
        marks.append((_positions([float(current_k)], items[0].n_layers, x)[0], MARK_COLOUR))
    xname = "relative horizon (k / L)" if x == "depth" else "horizon k (layers)"
    axes = _draw_series(panel, series, x, title, "loss (nats)", xname=xname)
    if axes is not None:
        for position, colour in marks:
            panel.plt.vertical_line(position, color=colour)


# ----------------------------------------------------------------------------- (9) cosine


def cosine(panel: Panel, inputs: list[FigureInput], x: str = "layer", length: int | None = None,
           **_: Any) -> None:
    """(9) Median mean-centred cosine per layer, one line per truncation length; with one model,
    the quartiles of one length dotted (``length``, default the shortest: all of them would hide
    the lines in a terminal)."""
    items = [item for item in inputs if item.truncate]
    series: list[Series] = []
    banded = None
    for item_index, item in enumerate(items):
        view = item.truncate or {}
        lengths = sorted((view.get("median_cos") or {}), key=int)
        palette = colours(len(lengths)) if len(items) == 1 else [colours(len(items))[item_index]] * len(lengths)
        for index, c in enumerate(lengths):
            median = quantised(view["median_cos"][c], COSINE_DECIMALS)
            rows = _positions(list(range(len(median))), item.n_layers, x)
            label = f"c = {c}" if len(items) == 1 else f"{visible(item.label)} c = {c}"
            series.append((rows, median, palette[index], label, LINE))
            quartiles = (view.get("quartiles_cos") or {}).get(c)
            wanted = str(length) if str(length) in lengths else lengths[0]
            if quartiles and len(items) == 1 and c == wanted:
                banded = c
                series[:0] = [(rows, quantised(quartiles[0], COSINE_DECIMALS), palette[index], None, "⋅"),
                              (rows, quantised(quartiles[1], COSINE_DECIMALS), palette[index], None, "⋅")]
    dots = f" (dots: quartiles of c = {banded})" if banded is not None else ""
    _draw_series(panel, series, x, f"median mean-centred cosine per layer{dots}", "cosine")


# ----------------------------------------------------------------------------- (2) distribution


def norm_distribution(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(2) The share of positions per log-spaced norm bin, for a few layers (viridis, first to last)."""
    item = inputs[0]
    samples = [np.asarray(quantised(values), dtype=np.float64) for values in (item.samples or [])]
    finite = [values[np.isfinite(values) & (values > 0)] for values in samples]
    pooled = [float(v) for values in finite for v in values]
    if not pooled:
        empty(panel, "norm distribution: no data")
        return
    low, high = min(pooled), max(pooled)
    bins = np.geomspace(low, high if high > low else low * 1.01, 25)
    chosen = sorted({round(i * (len(finite) - 1) / 5) for i in range(6)}) if len(finite) > 6 else range(len(finite))
    scale = Scale(0.0, 1.0)
    series: list[Series] = []
    for row in chosen:
        if not len(finite[row]):
            continue
        counts, edges = np.histogram(finite[row], bins=bins)
        centres = [math.sqrt(a * b) for a, b in pairwise(edges)]
        share = [float(count) / len(finite[row]) for count in counts]
        series.append(([math.log10(c) for c in centres], quantised(share),
                       scale.step_rgb(min(scale.steps - 1, int(row / max(len(finite) - 1, 1) * scale.steps))),
                       f"row {row}", LINE))
    axes = _draw_series(panel, series, "layer", f"norm distribution per layer: {visible(item.label)}",
                        "share", xname="‖resid_pre‖ (log bins)", integer_x=False)
    if axes is not None:  # the x positions are log10 norms: label the ticks with the norms
        decades = log_axis([low, high], max(2, panel.width // 8))
        panel.plt.xlim(*decades.limits)
        panel.plt.xticks(list(decades.ticks), list(decades.labels))


# ----------------------------------------------------------------------------- heat maps (3), (8), (11)


MISSING = (60, 60, 60)


def heatmap(panel: Panel, matrix: Sequence[Sequence[float | None]], title: str, xname: str, yname: str,
            column_labels: Sequence[str], row_labels: Sequence[str], log: bool = False,
            diverging: bool = False) -> None:
    """A matrix (row 0 at the bottom) filling the plot area character by character, in the colour
    steps of a round scale (tui/widgets/scales.py); its range is printed after the title."""
    values = [quantised(row) for row in matrix]
    shown = [[None if v is None or (log and v <= 0) else (math.log10(v) if log else v) for v in row] for row in values]
    finite = [v for row in values for v in row if v is not None and (not log or v > 0)]
    if not finite or not shown or not shown[0]:
        empty(panel, f"{title}: no data")
        return
    n_rows, n_cols = len(shown), len(shown[0])
    yaxis_ticks = linear_axis([0, n_rows - 1], max(3, panel.height - 6), _y_per_tick, integer=True)
    label_width = max(len(row_labels[int(t)]) for t in yaxis_ticks.ticks if int(t) < n_rows)
    # The plot area in characters; its top row is the colour legend.
    width, height = max(4, panel.width - 2 - label_width), max(2, panel.height - 6)
    with unrecorded():  # quantised values: the steps are chosen from exact decimals
        scale = Scale.fit([v for row in shown for v in row], diverging=diverging)
        xs, ys, rgbs = [], [], []
        for cx in range(width):
            for cy in range(height):
                xs.append(cx)
                ys.append(cy)
                rgbs.append(scale.rgb(shown[cy * n_rows // height][cx * n_cols // width]))
    with unrecorded():  # the scale's ends are round numbers
        low, high = (f"{10**scale.low:.3g}", f"{10**scale.high:.3g}") if log else (fmt(scale.low), fmt(scale.high))
    low_text, high_text = f"{'log ' if log else ''}{low} ", f" {high}"
    bar = max(2, min(scale.steps * 2, width - len(low_text) - len(high_text) - 2))
    for column in range(bar):
        xs.append(len(low_text) + column)
        ys.append(height)
        rgbs.append(scale.step_rgb(column * scale.steps // bar))
    plt = panel.plt
    plt.scatter(xs, ys, marker="sd", color=rgbs)
    plt.text(low_text, 0, height, alignment="left", color=LABEL_COLOUR)
    plt.text(high_text, len(low_text) + bar, height, alignment="left", color=LABEL_COLOUR)
    xaxis_ticks = linear_axis([0, n_cols - 1], max(10, width), lambda w: max(_x_per_tick(w),
                              _x_per_tick(max(len(label) for label in column_labels))), integer=True)

    def centre(index: float, cells: int, room: int) -> float:
        return (index + 0.5) * room / cells - 0.5

    columns = [int(t) for t in xaxis_ticks.ticks if int(t) < n_cols]
    rows = [int(t) for t in yaxis_ticks.ticks if int(t) < n_rows]
    plt.title(fit_text(visible(title), panel.width))
    plt.xlabel(xname)
    plt.ylabel(yname)
    plt.xlim(-0.5, width - 0.5)
    plt.ylim(-0.5, height + 0.5)
    plt.xticks([centre(c, n_cols, width) for c in columns], [visible(column_labels[c]) for c in columns])
    plt.yticks([centre(r, n_rows, height) for r in rows], [visible(row_labels[r]) for r in rows])


def _row_labels(n: int, n_layers: int | None) -> list[str]:
    return ["final" if n_layers is not None and row == n_layers else str(row) for row in range(n)]


def position_norms(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(3) One prompt's resid_pre norm per layer and position (log colour; BOS's column left out)."""
    item = inputs[0]
    if item.prompt is None:
        empty(panel, "norm per position: no data")
        return
    matrix = np.asarray(item.prompt[0], dtype=np.float64)
    start = 1 if item.has_bos and matrix.shape[1] > 1 else 0
    shown = [[float(v) if math.isfinite(v) else None for v in row[start:]] for row in matrix]
    heatmap(panel, shown, f"‖resid_pre‖ per position, first prompt: {item.label}",
            f"position (from {start})", "row", [str(p) for p in range(start, matrix.shape[1])],
            _row_labels(matrix.shape[0], item.n_layers), log=True)


def layer_k_matrix(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(8) The loss increase with the horizon enforced at one layer only, layers x k."""
    item = inputs[0]
    matrix = (item.scan or {}).get("by_layer") or {}
    values = matrix.get("delta_loss") or []
    if not values:
        empty(panel, "layer x k: no data")
        return
    heatmap(panel, values, f"Δloss, horizon at layer N only: {item.label}", "horizon k (layers)", "layer N",
            [str(k) for k in matrix["ks"]], [str(layer) for layer in matrix["layers"]], diverging=True)


def attention_distance(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(11) Mean attention distance (without the BOS column where there is one), layers x heads."""
    item = inputs[0]
    key = "mean_distance_no_bos" if item.has_bos else "mean_distance"
    values = (item.attention or {}).get(key) or []
    if not values:
        empty(panel, "attention distance: no data")
        return
    heatmap(panel, values, f"mean attention distance{', BOS removed' if item.has_bos else ''}: {item.label}",
            "head", "layer", [str(head) for head in range(len(values[0]))], _row_labels(len(values), None), log=True)


# ----------------------------------------------------------------------------- (5), (6) weights


def weights(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(5) Per-head ||W_OV||_F per layer, ||b_O|| per layer, and the attn_out mean norm per layer (log)."""
    item = inputs[0]
    report = item.weights or {}
    ov, ov_panel, bo_panel, attn_panel = report.get("W_OV_frobenius") or [], *_panels(panel.plt, panel.width,
                                                                                        panel.height, 3)
    points = [(float(layer), value) for layer, heads in enumerate(ov) for value in quantised(heads)]
    _draw_series(ov_panel, [([p[0] for p in points], [p[1] for p in points], PALETTE[0], None, "x")]
                 if points else [], "layer", "per-head ‖W_OV‖_F", "‖W_OV‖_F")
    b_o = report.get("b_O")
    if b_o:
        _draw_series(bo_panel, [(list(map(float, range(len(b_o)))), quantised(b_o), FIT_COLOUR, None, LINE)],
                     "layer", "‖b_O‖", "‖b_O‖")
    else:
        empty(bo_panel, "no attention output bias")
    attn = ((item.norms or {}).get("sites") or {}).get("attn_out")
    series: list[Series] = [(list(map(float, range(len(attn["mean_norm"])))), quantised(attn["mean_norm"]),
                             PALETTE[1], None, LINE)] if attn else []
    _draw_series(attn_panel, series, "layer", "mean ‖attn_out‖ (log)", "norm", log=True)


def mlp_random(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(6) MLP output norm on random inputs per layer (log), and neuron activation rates."""
    item = inputs[0]
    report = item.weights or {}
    left, right = _panels(panel.plt, panel.width, panel.height, 2)
    random_out = report.get("mlp_out_random")
    _draw_series(left, [(list(map(float, range(len(random_out)))), quantised(random_out), PALETTE[0], None, LINE)]
                 if random_out else [], "layer", f"mean ‖MLP(random)‖ ({report.get('n_random', '?')} inputs, log)",
                 "norm", log=True)
    series = []
    for key, colour in (("real", PALETTE[0]), ("random", FIT_COLOUR), ("resampled", PALETTE[1])):
        rates = report.get(f"neuron_rate_{key}")
        if rates:
            series.append((list(map(float, range(len(rates)))), quantised(rates), colour, key, LINE))
    axes = _draw_series(right, series, "layer", f"neuron activation rate ({report.get('kind', 'in')} > 0)", "rate")
    if axes is not None:
        right.plt.ylim(0, 1)
        right.plt.yticks([0, 0.5, 1], ["0", "0.5", "1"])


# ----------------------------------------------------------------------------- (10) categories


def categories(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(10) Median cosine per token category, one panel per truncation length."""
    item = inputs[0]
    per_length = (item.truncate or {}).get("categories") or {}
    lengths = sorted(per_length, key=int)
    if not lengths:
        empty(panel, "categories: no data")
        return
    for sub, c in zip(_panels(panel.plt, panel.width, panel.height, len(lengths)), lengths, strict=True):
        entry = per_length.get(c) or {}
        counts = entry.get("count") or {}
        kinds = [category for category in entry if category != "count" and counts.get(category)]
        series = [(list(map(float, range(len(entry[kind])))), quantised(entry[kind], COSINE_DECIMALS), colour,
                   f"{kind} ({counts[kind]})", LINE) for kind, colour in zip(kinds, colours(len(kinds)), strict=True)]
        _draw_series(sub, series, "layer", f"c = {c}", "median cosine")


# ----------------------------------------------------------------------------- (12)-(14) across models


POINT = "●"
LABEL_CHARS = 18  # a point's label, cut beyond this


def _note_horizon(item: FigureInput, point: dict[str, Any]) -> None:
    """The effective horizon is a choice (the smallest k with Δloss <= tol): note each compared
    row's distance from tol, so a picture whose k rests on float noise fails its test."""
    scan = item.scan or {}
    tol = _finite([scan.get("tol")])
    for row in scan.get("rows") or []:
        if tol and row["start_layer"] == point["start_layer"] and row["k"] <= point["effective_horizon"] \
                and row.get("delta_loss") is not None:
            note_margin("threshold", float(row["delta_loss"]), abs(float(row["delta_loss"]) - tol[0]))


def _note_drop(item: FigureInput, length: int, level: float, row: int | None) -> None:
    """The cosine drop's row is a choice: note each compared median's distance from the level."""
    values = ((item.truncate or {}).get("median_cos") or {}).get(str(length)) or []
    for index, value in enumerate(values):
        if value is not None and math.isfinite(value) and (row is None or index <= row):
            note_margin("threshold", float(value), abs(float(value) - level))


def _note_order(values: Sequence[float]) -> None:
    """Ranks are choices: note each value's distance to its nearest neighbour (half the gap)."""
    ordered = sorted(values)
    for this, following in pairwise(ordered):
        note_margin("order", this, (following - this) / 2)


def _placed(value: float) -> float:
    """A point's coordinate rounded for plotting: across_models places only models whose values are
    finite (the others are left out), so quantise's None (not finite) cannot reach a point."""
    rounded = quantise(value)
    if rounded is None:
        raise ValueError(f"a point at a value that is not finite: {value!r}")
    return rounded


def short_label(label: str) -> str:
    """A point's label: the model's name, its end kept when long (a path's last part names it)."""
    text = visible(label)
    return text if len(text) <= LABEL_CHARS else "…" + text[-(LABEL_CHARS - 1):]


def _scatter(panel: Panel, points: list[tuple[float, float, str, Any]], title: str, xname: str, yname: str,
             integer_x: bool, y_range: tuple[float, float] | None = None) -> None:
    """One point per model, labelled by the model on its right (quantised values only)."""
    if not points:
        empty(panel, f"{title}: no model to place")
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    with unrecorded():  # quantised values: exact decimals
        span = max(xs) - min(xs) or max(abs(max(xs)), 1.0)
        low = min(xs) - span * 0.1  # no point on the frame
        # Room right of the rightmost point for its label: that share of the plot's width.
        label_width = max(len(short_label(p[2])) for p in points if p[0] == max(xs)) + 2
        share = min(0.6, label_width / max(1, panel.width - 10))
        room = max(xs) + (max(xs) - low) * share / (1 - share)
        xaxis = x_axis([*xs, low, room], panel.width, integer=integer_x)
        yaxis = y_axis([*ys, *(y_range or ())], panel.height)
        char = (xaxis.high - xaxis.low) / max(1, panel.width - 10)
    for x, y, label, colour in points:
        panel.plt.scatter([x], [yaxis.at(y)], marker=POINT, color=colour)
        panel.plt.text(short_label(label), x + 1.5 * char, yaxis.at(y), color=colour, alignment="left")
    frame(panel, title, xaxis, yaxis, xname, yname)


def _left_out(title: str, part: dict[str, Any]) -> str:
    return title + (f"; {len(part['left_out'])} left out" if part["left_out"] else "")


def _model_colours(inputs: list[FigureInput]) -> dict[str, Any]:
    return {item.label: colour for item, colour in zip(inputs, colours(len(inputs)), strict=True)}


def horizon_vs_depth(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(12) Effective horizon against depth: k (layers) left, k / L right, one point per model."""
    part = across_models(inputs)["horizon_vs_depth"]
    by_label, palette = {item.label: item for item in inputs}, _model_colours(inputs)
    for point in part["points"]:
        _note_horizon(by_label[point["label"]], point)
    left, right = _panels(panel.plt, panel.width, panel.height, 2)
    depth = [float(point["n_layers"]) for point in part["points"]]
    _scatter(left, [(x, _placed(float(point["effective_horizon"])), point["label"], palette[point["label"]])
                    for x, point in zip(depth, part["points"], strict=True)],
             _left_out("effective horizon k vs depth L", part), "depth L", "k (layers)", integer_x=True)
    _scatter(right, [(x, _placed(point["fraction"]), point["label"], palette[point["label"]])
                     for x, point in zip(depth, part["points"], strict=True)],
             "k / L vs depth L", "depth L", "k / L", integer_x=True)


def spearman_line(part: dict[str, Any]) -> str:
    """Figure (13)'s rank correlation as printed in the terminal (two decimals, or why there is none)."""
    if part["spearman"] is None:
        return f"ρ: {part['note']} (n = {part['n']})"
    layers = "-" if part["spearman_layers"] is None else fixed(part["spearman_layers"], 2)
    return f"Spearman ρ(rate, k/L) {fixed(part['spearman'], 2)}, ρ(rate, k) {layers}, n = {part['n']}"


def horizon_vs_growth(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(13) k / L against the fitted norm growth rate, one point per model; Spearman's ρ and n in the title."""
    part = across_models(inputs)["horizon_vs_growth"]
    by_label, palette = {item.label: item for item in inputs}, _model_colours(inputs)
    for point in part["points"]:
        _note_horizon(by_label[point["label"]], point)
    rates = [_placed(point["growth_rate"]) for point in part["points"]]
    if part["spearman"] is not None:  # the ranks decide the coefficient (k / L: from integers, exact)
        _note_order([point["growth_rate"] for point in part["points"]])
    _scatter(panel, [(rate, _placed(point["fraction"]), point["label"], palette[point["label"]])
                     for rate, point in zip(rates, part["points"], strict=True)],
             _left_out(spearman_line(part), part), "norm growth rate (per layer)", "k / L", integer_x=False)


def cosine_drop_vs_depth(panel: Panel, inputs: list[FigureInput], **_: Any) -> None:
    """(14) The relative depth where the median cosine at c = 5 first falls below the level, against depth."""
    part = across_models(inputs)["cosine_drop_vs_depth"]
    rows = {point["label"]: point["row"] for point in part["points"]}
    for item in inputs:
        _note_drop(item, part["length"], part["level"], rows.get(item.label))
    palette = _model_colours(inputs)
    title = f"row / L where median cos (c = {part['length']}) first < {part['level']:.3f} (cos² = 0.5)"
    _scatter(panel, [(float(point["n_layers"]), _placed(point["depth"]), point["label"], palette[point["label"]])
                     for point in part["points"]],
             _left_out(title, part), "depth L", "row / L", integer_x=True, y_range=(0.0, 1.0))


# ----------------------------------------------------------------------------- the table


# Each figure of the table drawn by the function of its name above.
DRAW: dict[str, Callable[..., None]] = {figure.name: globals()[figure.name] for figure in TABLE}


def draw(plt: Any, figure: str, inputs: list[FigureInput], width: int, height: int, x: str = "layer",
         **options: Any) -> None:
    """Draw ``figure`` (a name or a file stem) from the inputs that hold its data onto ``plt``
    (a cleared plotext ``Plot`` of ``width`` x ``height`` characters). One-model figures draw the
    first such input; overlaid ones draw them all."""
    name = figure_name(figure)
    usable = [item for item in inputs if has_data(item, name)]
    panel = Panel(plt, width, height)
    if not usable:
        empty(panel, f"{title_of(name)}: no data yet")
        return
    DRAW[name](panel, usable if name in OVERLAID else usable[:1], x=x, **options)
