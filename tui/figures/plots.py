"""One function per figure: each takes figure inputs (``core.compare.FigureInput``) and returns a Figure.

Every drawn series carries a ``gid`` (``norm-line-<label>``, ``fit-line-<label>`` ...) and every
axes one (``axes-<figure>``, ``-logy`` appended when its y-axis is logarithmic), so an exported SVG
can be read back: ``<g id="norm-line-smollm2-135m">``. Overlays (several models) take a list;
``x="depth"`` puts layer i of an L-layer model at i / L so that models of different depth line up.

Over 400 lines for a reason: eleven figures, one short function each, read best side by side in one
file (their shared steps are the helpers at the top).
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # never a window: figures are written to files

import matplotlib.pyplot as plt
import numpy as np
from horizon.core.sources.compare import FigureInput, across_models, fit_line
from horizon.tui.figures import TABLE, has_input
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType, RcKeyType

STYLE: dict[RcKeyType, Any] = {
    "svg.hashsalt": "horizon",  # deterministic ids in SVGs
    "svg.fonttype": "none",  # text stays text: smaller files, labels readable in the SVG
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
}
FIT_COLOUR = "#ff7f0e"  # the seeds' orange fit line


def gid_part(text: str) -> str:
    """``text`` made safe for an SVG id (letters, digits, ., _ and -)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def plain(text: str) -> str:
    """Outside text (a model name, a token) drawn literally: no mathtext, no control characters."""
    from horizon.core.untrusted import visible

    return visible(text).replace("$", r"\$")


def _figure(width: float = 6.0, height: float = 3.6, ncols: int = 1) -> tuple[Figure, Any]:
    matplotlib.rcParams.update(STYLE)  # read when text is drawn and when the figure is saved
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def _axes_gid(ax: Any, name: str) -> None:
    from matplotlib.ticker import AutoLocator, MaxNLocator

    integer_x = not ax.get_xlabel().startswith("relative") and "||" not in ax.get_xlabel()
    if integer_x and isinstance(ax.xaxis.get_major_locator(), AutoLocator):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers, heads, positions, k
    ax.set_gid(f"axes-{name}" + ("-logy" if ax.get_yscale() == "log" else ""))


# Model colours: the tab10 palette without its orange, which is the fit line's.
PALETTE = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _colours(n: int) -> list[Any]:
    """``n`` colours, all different: the palette up to its size, then evenly spaced over a wide colour map."""
    if n <= len(PALETTE):
        return PALETTE[:n]
    return [tuple(float(v) for v in colour) for colour in plt.get_cmap("turbo")(np.linspace(0.04, 0.96, n))]


# Legends with more entries than this go below the axes (the figure grows to hold them), never over them.
LEGEND_INSIDE = 10


def _legend(figure: Figure, ax: Any, handles: list[Any] | None = None, ncols: int = 1) -> None:
    """The axes' legend: inside while small; below the axes, in columns, once it would crowd them."""
    if handles is None:
        handles = [handle for handle in ax.get_legend_handles_labels()[0]]
    if not handles:
        return
    if len(handles) <= LEGEND_INSIDE:
        ax.legend(handles=handles, ncols=ncols)
        return
    columns = min(4, max(2, -(-len(handles) // 12)))
    rows = -(-len(handles) // columns)
    width, height = figure.get_size_inches()
    figure.set_size_inches(max(width, 2.6 * columns), height + 0.16 * rows + 0.3)
    figure.legend(handles=handles, loc="outside lower center", ncols=columns)


# Library warnings that say nothing to the user of a figure: a token or name in a script the font
# lacks (the glyph is drawn as a box; the warning would print the raw character), and a layout that
# could not be tightened. Filtered by message, only while figures are drawn and written.
QUIET = (r"Glyph \d+ .*missing from (current )?font", r"constrained_layout not applied",
         r"Tight layout not applied")


def quiet_warnings() -> None:
    """Inside ``warnings.catch_warnings()``: ignore QUIET's library warnings, and only those."""
    for message in QUIET:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def _x(rows: Any, n_layers: int | None, x: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / n_layers if x == "depth" and n_layers else rows


def _xlabel(x: str, what: str = "layer (resid_pre row; L = final)") -> str:
    return "relative depth (layer / L)" if x == "depth" else what


def _fixed(value: Any, digits: int) -> str:
    """A stored number with ``digits`` decimals ("nan" for anything that is not one)."""
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "nan"


def _array(values: Any) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in values], dtype=np.float64)


def _positive(values: np.ndarray) -> np.ndarray:
    return np.where(values > 0, values, np.nan)


def _single(inputs: list[FigureInput] | FigureInput) -> FigureInput:
    return inputs[0] if isinstance(inputs, list) else inputs


def _many(inputs: list[FigureInput] | FigureInput) -> list[FigureInput]:
    return list(inputs) if isinstance(inputs, list) else [inputs]


def _matrix(rows: Any) -> np.ndarray:
    """A stored table of rows (None where a cell is missing) as a float matrix with NaN."""
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


def _log_norm(values: np.ndarray) -> LogNorm | None:
    """A log colour scale over the positive finite entries of ``values``; None where there are none."""
    finite = values[np.isfinite(values) & (values > 0)]
    if not finite.size:
        return None
    low, high = float(finite.min()), float(finite.max())
    return LogNorm(vmin=low, vmax=high if high > low else low * 1.01)


def _heatmap(figure: Figure, ax: Any, values: np.ndarray, gid: str, cmap: str, label: str,
             norm: LogNorm | None = None) -> None:
    """One matrix drawn cell by cell (row 0 at the bottom) with its colour bar."""
    image = ax.imshow(values, aspect="auto", origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    image.set_gid(gid)
    figure.colorbar(image, ax=ax, label=label)


def _heatmap_axes(ax: Any, xlabel: str, ylabel: str, title: str, gid: str) -> None:
    """A heatmap's labels and title, no grid over the cells, and its axes gid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(False)
    _axes_gid(ax, gid)


# ----------------------------------------------------------------------------- (1) norm growth


def norm_growth(inputs: list[FigureInput] | FigureInput, x: str = "layer") -> Figure:
    """(1) Mean resid_pre norm per layer on a log axis, the fitted rate over its window, BOS apart."""
    items = [item for item in _many(inputs) if item.norms]
    figure, (ax,) = _figure()
    many = len(items) > LEGEND_INSIDE // 3  # one legend entry per model: its name and fitted rate
    for item, colour in zip(items, _colours(len(items)), strict=True):
        norms, name = item.norms or {}, gid_part(item.label)
        mean = _positive(_array(norms["sites"]["resid_pre"]["mean_norm"]))
        rows = np.arange(len(mean))
        growth = norms.get("growth") or {}
        (line,) = ax.plot(_x(rows, item.n_layers, x), mean, marker="o", markersize=3, color=colour,
                          label=plain(item.label))
        line.set_gid(f"norm-line-{name}")
        fitted = fit_line(norms)
        if fitted is not None:
            fit_rows, values = fitted
            window = growth.get("fit_layers") or [fit_rows[0], fit_rows[-1]]
            label = plain(f"{_fixed(growth.get('rate'), 3)}/layer, rows {window[0]}-{window[1]} "
                          f"(r\u00b2 {_fixed(growth.get('r2'), 2)})")
            if many:
                line.set_label(f"{plain(item.label)}: {label}")
            (fit,) = ax.plot(_x(fit_rows, item.n_layers, x), values, color=FIT_COLOUR, linewidth=2.5, alpha=0.75,
                             zorder=3, label=None if many else label)
            fit.set_gid(f"fit-line-{name}")
        bos = (norms.get("bos") or {}).get("mean_norm")
        if bos:
            (bos_line,) = ax.plot(_x(np.arange(len(bos)), item.n_layers, x), _positive(_array(bos)), color=colour,
                                  linestyle=":", marker="x", markersize=3, linewidth=1, label="BOS (apart)"
                                  if len(items) == 1 else None if many else f"{plain(item.label)} BOS")
            bos_line.set_gid(f"bos-line-{name}")
    ax.set_yscale("log")
    ax.set_xlabel(_xlabel(x))
    ax.set_ylabel("mean ||resid_pre|| (BOS excluded)")
    ax.set_title("Residual stream norm per layer" + (" (orange: fits; dotted: BOS, apart)" if many else ""))
    _legend(figure, ax)
    _axes_gid(ax, "norm-growth")
    return figure


# ----------------------------------------------------------------------------- (2) distribution


def norm_distribution(inputs: list[FigureInput] | FigureInput) -> Figure:
    """(2) Histograms of the resid_pre norms of every statistics position, one per layer (log-spaced bins)."""
    item = _single(inputs)
    samples = item.samples or []
    figure, (ax,) = _figure()
    finite = [values[np.isfinite(values) & (values > 0)] for values in samples]
    pooled = np.concatenate([values for values in finite if len(values)]) if any(len(v) for v in finite) else None
    if pooled is not None:
        low, high = float(pooled.min()), float(pooled.max())
        bins = np.geomspace(low, high if high > low else low * 1.01, 60)
        cmap = plt.get_cmap("viridis")
        for row, values in enumerate(finite):
            if not len(values):
                continue
            counts, edges = np.histogram(values, bins=bins)
            (line,) = ax.step(edges[:-1], counts / max(len(values), 1), where="post",
                              color=cmap(row / max(len(finite) - 1, 1)), linewidth=1,
                              label=f"row {row}" if len(finite) <= 13 or row % max(len(finite) // 12, 1) == 0
                              else None)
            line.set_gid(f"hist-row-{row}")
    ax.set_xscale("log")
    ax.set_xlabel("||resid_pre|| (log-spaced bins; BOS excluded)")
    ax.set_ylabel("fraction of positions")
    ax.set_title(f"Norm distribution per layer: {plain(item.label)}")
    if samples:
        ax.legend(ncols=2)
    _axes_gid(ax, "norm-distribution")
    return figure


# ----------------------------------------------------------------------------- (3) per position


def position_norms(inputs: list[FigureInput] | FigureInput) -> Figure:
    """(3) One prompt's resid_pre norm per layer and position (log colour; the range ignores BOS)."""
    item = _single(inputs)
    matrix, tokens = item.prompt if item.prompt is not None else (np.full((1, 1), np.nan), [])
    width = min(max(4.0, 0.12 * matrix.shape[1] + 2), 14.0)
    figure, (ax,) = _figure(width=width, height=3.8)
    norm = _log_norm(matrix[:, 1:] if item.has_bos and matrix.shape[1] > 1 else matrix)
    if norm is not None:
        _heatmap(figure, ax, _positive(matrix), "position-norms", "magma",
                 "||resid_pre||" + (" (BOS column clipped)" if item.has_bos else ""), norm)
    if tokens and len(tokens) <= 48:
        ax.set_xticks(range(len(tokens)), [plain(token) for token in tokens], rotation=90, fontsize=6)
    _heatmap_axes(ax, "position", "row (L = final)", f"Norm per position, first prompt: {plain(item.label)}",
                  "position-norms")
    return figure


# ----------------------------------------------------------------------------- (4) sublayers


def sublayer_norms(inputs: list[FigureInput] | FigureInput, x: str = "layer") -> Figure:
    """(4) Mean norms of attn_out and mlp_out per layer beside the resid_pre growth (log axis)."""
    items = [item for item in _many(inputs) if item.norms]
    figure, (ax,) = _figure()
    styles: dict[str, tuple[LineStyleType, str]] = {"resid_pre": ("-", "o"), "attn_out": ("--", "s"),
                                                     "mlp_out": ("-.", "^")}
    compact = len(items) * len(styles) > LEGEND_INSIDE  # one entry per model (colour) and per site (line style)
    handles: list[Any] = []
    for item, colour in zip(items, _colours(len(items)), strict=True):
        sites, name = (item.norms or {}).get("sites", {}), gid_part(item.label)
        for site, (linestyle, marker) in styles.items():
            if site not in sites:
                continue
            values = _positive(_array(sites[site]["mean_norm"]))
            label = site if len(items) == 1 else f"{plain(item.label)} {site}"
            (line,) = ax.plot(_x(np.arange(len(values)), item.n_layers, x), values, linestyle=linestyle,
                              marker=marker, markersize=3, color=colour, label=label)
            line.set_gid(f"{site.split('_')[0]}-line-{name}")
        if compact:
            handles.append(Line2D([], [], color=colour, linewidth=2, label=plain(item.label)))
    if compact:
        handles += [Line2D([], [], color="black", linestyle=linestyle, marker=marker, markersize=3, label=site)
                    for site, (linestyle, marker) in styles.items()]
    ax.set_yscale("log")
    ax.set_xlabel(_xlabel(x, "layer"))
    ax.set_ylabel("mean norm (BOS excluded)")
    ax.set_title("Sublayer output norms and the residual stream")
    _legend(figure, ax, handles or None, ncols=2 if len(items) > 1 else 1)
    _axes_gid(ax, "sublayer-norms")
    return figure


# ----------------------------------------------------------------------------- (5), (6) weights


def weights(inputs: list[FigureInput] | FigureInput) -> Figure:
    """(5) Per-head ||W_OV||_F per layer, ||b_O|| per layer, and the attn_out mean norm per layer."""
    item = _single(inputs)
    report = item.weights or {}
    figure, axes = _figure(width=9.0, height=3.2, ncols=3)
    ov = np.asarray(report.get("W_OV_frobenius") or [[np.nan]], dtype=np.float64)
    for layer, heads in enumerate(ov):
        points = axes[0].scatter(np.full(len(heads), layer), heads, s=10, color="C0", alpha=0.7)
        points.set_gid(f"ov-heads-{layer}")
    axes[0].set_title("per-head ||W_OV||_F")
    b_o = report.get("b_O")
    if b_o:
        (line,) = axes[1].plot(range(len(b_o)), _array(b_o), marker="o", markersize=3, color="C1")
        line.set_gid("bo-line")
    else:
        axes[1].text(0.5, 0.5, "no attention output bias", ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set_title("||b_O||")
    attn = ((item.norms or {}).get("sites") or {}).get("attn_out")
    if attn:
        (line,) = axes[2].plot(range(len(attn["mean_norm"])), _positive(_array(attn["mean_norm"])), marker="o",
                               markersize=3, color="C2")
        line.set_gid("attn-line")
        axes[2].set_yscale("log")
    axes[2].set_title("mean ||attn_out||")
    for ax, name in zip(axes, ("ov", "bo", "attn"), strict=True):
        ax.set_xlabel("layer")
        _axes_gid(ax, f"weights-{name}")
    figure.suptitle(f"Attention weights: {plain(item.label)} ({plain(report.get('processing', 'raw'))} weights)")
    return figure


def mlp_random(inputs: list[FigureInput] | FigureInput) -> Figure:
    """(6) MLP output norm on random inputs per layer, and neuron activation rates (real, random, resampled)."""
    item = _single(inputs)
    report = item.weights or {}
    figure, axes = _figure(width=8.0, height=3.2, ncols=2)
    random_out = report.get("mlp_out_random")
    if random_out:
        (line,) = axes[0].plot(range(len(random_out)), _positive(_array(random_out)), marker="o", markersize=3)
        line.set_gid("mlp-random-line")
        axes[0].set_yscale("log")
    axes[0].set_title(f"mean ||MLP(random)|| ({plain(report.get('n_random', '?'))} inputs)")
    for key, colour in (("real", "C0"), ("random", "C1"), ("resampled", "C2")):
        rates = report.get(f"neuron_rate_{key}")
        if rates:
            (line,) = axes[1].plot(range(len(rates)), _array(rates), marker="o", markersize=3, color=colour, label=key)
            line.set_gid(f"rate-line-{key}")
    axes[1].set_ylim(0, 1)
    axes[1].set_title(f"neuron activation rate ({plain(report.get('kind', 'in'))} > 0)")
    axes[1].legend()
    for ax, name in zip(axes, ("random", "rates"), strict=True):
        ax.set_xlabel("layer")
        _axes_gid(ax, f"mlp-{name}")
    figure.suptitle(f"MLPs: {plain(item.label)}")
    return figure


# ----------------------------------------------------------------------------- (7), (8) horizon


def loss_vs_k(inputs: list[FigureInput] | FigureInput, x: str = "layer") -> Figure:
    """(7) Loss against k, one line per start layer (and ablation), the clean loss and its tolerance band."""
    items = [item for item in _many(inputs) if item.scan]
    figure, (ax,) = _figure()
    markers = ["o", "s", "^", "D", "v", "P"]
    for item, colour in zip(items, _colours(len(items)), strict=True):
        scan, name = item.scan or {}, gid_part(item.label)
        ablation = plain(scan.get("ablation", "zero"))
        rows = scan.get("rows") or []
        starts = sorted({row["start_layer"] for row in rows})
        for index, start in enumerate(starts):
            chosen = sorted((row for row in rows if row["start_layer"] == start), key=lambda row: row["k"])
            ks = np.array([row["k"] for row in chosen], dtype=np.float64)
            label = plain(f"S={start}, ") + ablation if len(items) == 1 \
                else f"{plain(item.label)} {plain(f'S={start}, ')}{ablation}"
            (line,) = ax.plot(_x(ks, item.n_layers, x), _array([row["loss"] for row in chosen]), color=colour,
                              marker=markers[index % len(markers)], markersize=3, label=label,
                              linestyle="-" if ablation == "zero" else "--")
            line.set_gid(f"loss-line-{name}-s{start}-{gid_part(ablation)}")
        clean, tol = scan.get("loss_clean"), scan.get("tol")
        if clean is not None:
            clean_line = ax.axhline(clean, color=colour, linestyle=":", linewidth=1,
                                    label="clean loss" if len(items) == 1 else f"{plain(item.label)} clean"
                                    if len(items) <= LEGEND_INSIDE // 3 else None)
            clean_line.set_gid(f"clean-line-{name}")
            if tol is not None:
                band = ax.axhspan(clean, clean + tol, color=colour, alpha=0.12, linewidth=0,
                                  label=f"tolerance +{tol:g}" if len(items) == 1 else None)
                band.set_gid(f"tol-band-{name}")
    ax.set_xlabel("relative horizon (k / L)" if x == "depth" else "horizon k (layers)")
    ax.set_ylabel("loss (nats)")
    ax.set_title("Loss under an enforced layer horizon" + (" (dotted: clean loss)" if len(items) > LEGEND_INSIDE // 3
                                                             else ""))
    _legend(figure, ax)
    _axes_gid(ax, "loss-vs-k")
    return figure


def layer_k_matrix(inputs: list[FigureInput] | FigureInput) -> Figure:
    """(8) The layer x k matrix of the loss increase (the horizon enforced at one layer only)."""
    item = _single(inputs)
    matrix = (item.scan or {}).get("by_layer") or {}
    figure, (ax,) = _figure(width=5.5, height=4.0)
    values = _matrix(matrix.get("delta_loss", []))
    if values.size:
        _heatmap(figure, ax, values, "layer-k-matrix", "viridis", "loss increase (nats)")
        ax.set_xticks(range(len(matrix["ks"])), [plain(k) for k in matrix["ks"]])
        ax.set_yticks(range(len(matrix["layers"])), [plain(layer) for layer in matrix["layers"]])
    _heatmap_axes(ax, "horizon k (layers)", "layer N (horizon enforced there only)",
                  f"Layer x k: {plain(item.label)}", "layer-k-matrix")
    return figure


# ----------------------------------------------------------------------------- (9), (10), (11) local processing


def cosine(inputs: list[FigureInput] | FigureInput, x: str = "layer") -> Figure:
    """(9) Median mean-centred cosine per layer, one line per truncation length, with the quartile band."""
    items = [item for item in _many(inputs) if item.truncate]
    figure, (ax,) = _figure()
    styles: list[LineStyleType] = ["-", "--", "-.", ":"]
    every_length = sorted({c for item in items for c in (item.truncate or {}).get("median_cos") or {}}, key=int)
    compact = len(items) > 1 and len(items) * len(every_length) > LEGEND_INSIDE  # models by colour, c by style
    for item_index, item in enumerate(items):
        view, name = item.truncate or {}, gid_part(item.label)
        lengths = sorted((view.get("median_cos") or {}), key=int)
        colours = _colours(len(lengths)) if len(items) == 1 else [_colours(len(items))[item_index]] * len(lengths)
        for index, c in enumerate(lengths):
            median = _array(view["median_cos"][c])
            rows = _x(np.arange(len(median)), item.n_layers, x)
            label = f"c = {plain(c)}" if len(items) == 1 else f"{plain(item.label)} c = {plain(c)}"
            (line,) = ax.plot(rows, median, color=colours[index], linestyle=styles[every_length.index(c) % len(styles)]
                              if len(items) > 1 else "-", marker="o", markersize=3, label=None if compact else label)
            line.set_gid(f"cos-line-{name}-c{gid_part(c)}")
            quartiles = (view.get("quartiles_cos") or {}).get(c)
            if quartiles:
                band = ax.fill_between(rows, _array(quartiles[0]), _array(quartiles[1]), color=colours[index],
                                       alpha=0.15, linewidth=0)
                band.set_gid(f"cos-band-{name}-c{gid_part(c)}")
    ax.set_xlabel(_xlabel(x))
    ax.set_ylabel("median cosine (truncated vs full)")
    ax.set_title("Local processing: mean-centred cosine per layer")
    handles = None
    if compact:
        handles = [Line2D([], [], color=colour, linewidth=2, label=plain(item.label))
                   for item, colour in zip(items, _colours(len(items)), strict=True)]
        handles += [Line2D([], [], color="black", linestyle=styles[index % len(styles)], label=f"c = {plain(c)}")
                    for index, c in enumerate(every_length)]
    _legend(figure, ax, handles, ncols=2 if len(items) > 1 else 1)
    _axes_gid(ax, "cosine")
    return figure


def categories(inputs: list[FigureInput] | FigureInput) -> Figure:
    """(10) Median cosine per token category, one panel per truncation length."""
    item = _single(inputs)
    view = item.truncate or {}
    per_length = view.get("categories") or {}
    lengths = sorted(per_length, key=int) or ["?"]
    figure, axes = _figure(width=min(3.2 * len(lengths) + 1, 12), height=3.2, ncols=len(lengths))
    for ax, c in zip(axes, lengths, strict=True):
        entry = per_length.get(c) or {}
        counts = entry.get("count") or {}
        for category, values in entry.items():
            if category == "count" or not counts.get(category):
                continue
            (line,) = ax.plot(range(len(values)), _array(values), marker="o", markersize=2,
                              label=plain(f"{category} ({counts[category]})"))
            line.set_gid(f"cat-line-c{gid_part(c)}-{gid_part(category)}")
        ax.set_title(f"c = {plain(c)}")
        ax.set_xlabel("layer")
        ax.legend()
        _axes_gid(ax, f"categories-c{gid_part(c)}")
    axes[0].set_ylabel("median cosine")
    figure.suptitle(f"Median cosine per token category: {plain(item.label)}")
    return figure


def attention_distance(inputs: list[FigureInput] | FigureInput) -> Figure:
    """(11) Mean attention distance without the BOS column, layers x heads (log colour)."""
    item = _single(inputs)
    view = item.attention or {}
    key = "mean_distance_no_bos" if item.has_bos else "mean_distance"
    values = _matrix(view.get(key, []))
    figure, (ax,) = _figure(width=min(max(4.0, 0.35 * (values.shape[1] if values.ndim == 2 else 1) + 2), 10),
                            height=4.0)
    norm = _log_norm(values)
    if norm is not None:
        _heatmap(figure, ax, _positive(values), "attention-distance", "coolwarm", "mean distance (tokens)", norm)
    _heatmap_axes(ax, "head", "layer", f"Mean attention distance{', BOS removed' if item.has_bos else ''}: "
                  f"{plain(item.label)}", "attention-distance")
    return figure


# ----------------------------------------------------------------------------- (12)-(14) across models


def _across(inputs: list[FigureInput] | FigureInput, need: str) -> tuple[dict[str, Any], dict[str, str]]:
    """core/sources/compare.py's numbers over the models (the ones ``compare --json`` prints) and each
    model's colour: its place among the inputs that hold ``need``, as in the other overlays."""
    items = _many(inputs)
    usable = [item for item in items if has_data(item, need)]
    return across_models(items), {item.label: colour for item, colour in zip(usable, _colours(len(usable)),
                                                                               strict=True)}


def _point(ax: Any, x: float, y: float, label: str, colour: str, gid: str) -> None:
    """One model's point, labelled by the model."""
    points = ax.scatter([x], [y], s=28, color=colour, zorder=3)
    points.set_gid(gid)
    text = ax.annotate(plain(label), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color=colour)
    text.set_gid(f"{gid}-label")


def _left_out(figure: Figure, entries: list[dict[str, Any]]) -> None:
    """The models a figure could not place, one short line each under the axes (at most five)."""
    if not entries:
        return
    lines = [f"{plain(entry['label'])}: {plain(entry['reason'])}" for entry in entries[:5]]
    if len(entries) > 5:
        lines.append(f"and {len(entries) - 5} more (compare --json lists them)")
    text = figure.text(0.01, -0.02, "left out: " + "; ".join(lines), fontsize=6, color="#444", va="top",
                       wrap=True)
    text.set_gid("left-out")


def _depth_axis(ax: Any, points: list[dict[str, Any]]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if points:  # room for the labels right of the deepest model
        depths = [point["n_layers"] for point in points]
        ax.set_xlim(min(depths) - 1, max(depths) + max(2, (max(depths) - min(depths)) * 0.25))


def horizon_vs_depth(inputs: list[FigureInput] | FigureInput, x: str = "layer") -> Figure:
    """(12) Effective horizon against depth, in layers (left) and as a fraction of depth (right)."""
    numbers, colours = _across(inputs, "scan")
    part = numbers["horizon_vs_depth"]
    figure, (left, right) = _figure(width=8.0, height=3.4, ncols=2)
    for point in part["points"]:
        name = gid_part(point["label"])
        colour = colours.get(point["label"], PALETTE[0])
        _point(left, point["n_layers"], point["effective_horizon"], point["label"], colour, f"horizon-point-{name}")
        _point(right, point["n_layers"], point["fraction"], point["label"], colour, f"fraction-point-{name}")
    from matplotlib.ticker import MaxNLocator

    left.yaxis.set_major_locator(MaxNLocator(integer=True))  # k counts layers
    left.set_ylabel("effective horizon k (layers)")
    right.set_ylabel("k / L")
    for ax, gid in ((left, "horizon-vs-depth"), (right, "fraction-vs-depth")):
        ax.margins(y=0.15)  # the labels above the highest point
        ax.set_xlabel("depth L (layers)")
        _depth_axis(ax, part["points"])
        _axes_gid(ax, gid)
    settings = sorted({(point["start_layer"], point["ablation"], point["tol"]) for point in part["points"]},
                      key=str)
    where = "; ".join(f"S={start}, {ablation}, tol {tol:g}" if tol is not None else f"S={start}, {ablation}"
                      for start, ablation, tol in settings)
    figure.suptitle("Effective layer horizon against depth" + (f" ({where})" if where else ""))
    _left_out(figure, part["left_out"])
    return figure


def spearman_text(part: dict[str, Any]) -> str:
    """What figure (13) prints of the rank correlation: both coefficients and n, or why there is none."""
    n = part["n"]
    if part["spearman"] is None:
        return f"Spearman \u03c1: {part['note']} (n = {n})"
    layers = "-" if part["spearman_layers"] is None else f"{part['spearman_layers']:.2f}"
    return f"Spearman \u03c1(rate, k/L) = {part['spearman']:.2f}, \u03c1(rate, k) = {layers} (n = {n})"


def horizon_vs_growth(inputs: list[FigureInput] | FigureInput, x: str = "layer") -> Figure:
    """(13) Effective horizon as a fraction of depth against the fitted norm growth rate, with
    Spearman's rank correlation and its n (seed 000: slower growth, lower horizon?)."""
    numbers, colours = _across(inputs, "scan")
    part = numbers["horizon_vs_growth"]
    figure, (ax,) = _figure(width=6.0, height=3.8)
    for point in part["points"]:
        _point(ax, point["growth_rate"], point["fraction"], point["label"], colours.get(point["label"], PALETTE[0]),
               f"growth-point-{gid_part(point['label'])}")
    text = ax.text(0.02, 0.98, spearman_text(part), transform=ax.transAxes, va="top", fontsize=8)
    text.set_gid("spearman")
    ax.set_xlabel("fitted norm growth rate (per layer)")
    ax.set_ylabel("effective horizon k / L")
    ax.set_title("Effective horizon against norm growth")
    ax.margins(x=0.25, y=0.2)
    _axes_gid(ax, "horizon-vs-growth")
    _left_out(figure, part["left_out"])
    return figure


def cosine_drop_vs_depth(inputs: list[FigureInput] | FigureInput, x: str = "layer") -> Figure:
    """(14) The relative depth at which the median cosine at c = 5 first falls below the level, against depth."""
    numbers, colours = _across(inputs, "truncate")
    part = numbers["cosine_drop_vs_depth"]
    figure, (ax,) = _figure(width=6.0, height=3.8)
    for point in part["points"]:
        _point(ax, point["n_layers"], point["depth"], point["label"], colours.get(point["label"], PALETTE[0]),
               f"drop-point-{gid_part(point['label'])}")
    ax.set_xlabel("depth L (layers)")
    ax.set_ylabel("relative depth (row / L)")
    ax.set_ylim(-0.05, 1.1)
    ax.set_title(f"First row where the median cosine (c = {part['length']}) is below {part['level']:.3f} "
                 "(cos\u00b2 = 0.5)")
    _depth_axis(ax, part["points"])
    _axes_gid(ax, "cosine-drop-vs-depth")
    _left_out(figure, part["left_out"])
    return figure


# From the one figure table (tui/figures/__init__.py): id -> (the function of its name above,
# whether it overlays several models, which input field it needs).
PLOTS: dict[str, tuple[Any, bool, str]] = {figure.stem: (globals()[figure.name], figure.overlaid, figure.need)
                                           for figure in TABLE}
COMPARE_FIGURES = tuple(figure.stem for figure in TABLE if figure.overlaid)  # compare --out, study
# Figures over models (one point per model): drawn only from two or more models.
ACROSS_MODELS = tuple(figure.stem for figure in TABLE if figure.across)
has_data = has_input  # (item, need): whether an input holds what a figure needs
