"""What the figures draw, over one or several results directories or the engines' live results: the
arrays the views do not hold (``norm_samples``, ``prompt_norms``, read from the stored norms table),
``FigureInput`` (one model's figure inputs) and ``across_models``, the numbers of the figures over
models 12-14 (the seeds' open questions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from horizon.core.sources.compare_values import _finite, _integer, _mapping

if TYPE_CHECKING:  # compare.py imports this module: its Loaded is named in hints only
    from horizon.core.sources.compare import Loaded

# ----------------------------------------------------------------------------- arrays for the figures


def _has_bos(manifest: dict[str, Any]) -> bool:
    return bool((manifest.get("bos") or {}).get("enabled", True))


def norm_samples(item: Loaded, site: str = "resid_pre") -> list[np.ndarray] | None:
    """The stored norms of every statistics position (BOS left out), one array per row of ``site``."""
    if item.results is None:
        return None
    table = item.results.table("norms", columns=["position", "layer", "site", "norm"])
    if table is None or table.num_rows == 0:
        return None
    keep = np.asarray(table.column("site").to_numpy(zero_copy_only=False) == site)
    layer = table.column("layer").to_numpy()[keep]
    position = table.column("position").to_numpy()[keep]
    norm = table.column("norm").to_numpy()[keep].astype(np.float64)
    if _has_bos(item.manifest):
        layer, norm = layer[position > 0], norm[position > 0]
    if len(layer) == 0:
        return None
    # One array per row, in one pass (rows are bounded by the store: core/results/store.py index_problem).
    order = np.argsort(layer, kind="stable")
    bounds = np.searchsorted(layer[order], np.arange(int(layer.max()) + 2))
    return [norm[order][bounds[row]:bounds[row + 1]] for row in range(int(layer.max()) + 1)]


def prompt_norms(item: Loaded, prompt: int = 0, site: str = "resid_pre") -> tuple[np.ndarray, list[str]] | None:
    """One stored prompt's norms per position, rows x positions (BOS included), and its tokens."""
    if item.results is None:
        return None
    table = item.results.table("norms", columns=["prompt", "position", "token", "layer", "site", "norm"])
    if table is None or table.num_rows == 0:
        return None
    keep = np.asarray(table.column("site").to_numpy(zero_copy_only=False) == site) & \
        np.asarray(table.column("prompt").to_numpy() == prompt)
    if not keep.any():
        return None
    layer = table.column("layer").to_numpy()[keep]
    position = table.column("position").to_numpy()[keep]
    norm = table.column("norm").to_numpy()[keep].astype(np.float64)
    if (int(layer.max()) + 1) * (int(position.max()) + 1) > 2 * len(layer):
        return None  # not one row per (row, position): damaged, and the matrix would be mostly holes
    tokens_column = np.asarray(table.column("token").to_pylist(), dtype=object)[keep]
    matrix = np.full((int(layer.max()) + 1, int(position.max()) + 1), np.nan)
    matrix[layer, position] = norm
    tokens = [""] * matrix.shape[1]
    for at, token in zip(position.tolist(), tokens_column.tolist(), strict=True):
        tokens[at] = str(token)
    return matrix, tokens


# ----------------------------------------------------------------------------- what one figure input holds


@dataclass
class FigureInput:
    """What the figures of one model draw: corpus views (or a live run's result types as JSON) and arrays.

    ``norms``, ``scan``, ``truncate``, ``attention``: the views' shapes (``horizon report --json``;
    a live ``NormsReport.to_json()`` has the norms one). ``weights``: ``core.weights.weight_report``.
    ``samples``: resid_pre norms per row over the statistics positions; ``prompt``: one prompt's
    norms (rows x positions, BOS included) and its tokens.
    """

    label: str
    n_layers: int | None
    has_bos: bool = True
    norms: dict[str, Any] | None = None
    scan: dict[str, Any] | None = None
    truncate: dict[str, Any] | None = None
    attention: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None
    samples: list[np.ndarray] | None = None
    prompt: tuple[np.ndarray, list[str]] | None = None


def figure_input(item: Loaded) -> FigureInput:
    """A results directory's figure input (no torch: the views and the stored norms)."""
    return FigureInput(label=item.label, n_layers=item.n_layers, has_bos=_has_bos(item.manifest),
                       norms=item.views.get("norms"), scan=item.views.get("scan"),
                       truncate=item.views.get("truncate"), attention=item.views.get("attention"),
                       samples=norm_samples(item), prompt=prompt_norms(item))


def norms_view(report: Any) -> dict[str, Any]:
    """What the figures read of a ``NormsReport`` (per-site statistics, growth, BOS), without the
    per-position arrays of ``to_json`` (large, and absent from a results directory's report)."""
    bos = report.bos_mean_norm
    return {"n_layers": report.n_layers, "sites": {site: stats.to_json() for site, stats in report.stats.items()},
            "growth": report.growth.to_json(), "bos": {"mean_norm": None if bos is None else bos.tolist()}}


def live_figure_input(label: str, report: Any = None, tokens: list[list[str]] | None = None,
                      weights: dict[str, Any] | None = None, scan: Any = None, truncation: Any = None,
                      attention: Any = None, ablation: str = "zero") -> FigureInput:
    """A live run's figure input from the engines' result types (what the app's Session holds).

    ``report``: a ``NormsReport``; ``weights``: ``weight_report``'s dict; ``scan``: a ``ScanResult``
    (with ``ablation``, which it does not record); ``truncation``: a summarised ``TruncationReport``;
    ``attention``: an ``AttentionReport``. Any of them may be None: its figures are then skipped.
    """
    from dataclasses import asdict

    figure = FigureInput(label=label, n_layers=None, weights=weights)
    if report is not None:
        per_prompt = [matrix for matrix in report.norms["resid_pre"] if matrix is not None]
        start = 1 if report.has_bos else 0
        figure.n_layers, figure.has_bos, figure.norms = report.n_layers, report.has_bos, norms_view(report)
        if per_prompt:
            figure.samples = [np.concatenate([np.asarray(matrix[row, start:], dtype=np.float64)
                                              for matrix in per_prompt]) for row in range(report.n_layers + 1)]
            figure.prompt = (np.asarray(per_prompt[0], dtype=np.float64), list(tokens[0]) if tokens else [])
    if scan is not None:
        figure.scan = {**asdict(scan), "ablation": ablation}
    if truncation is not None:
        figure.truncate = truncation.to_json()
        figure.n_layers = figure.n_layers or truncation.n_layers
    if attention is not None:
        figure.attention = attention.to_json()
        figure.n_layers = figure.n_layers or attention.n_layers
    if figure.n_layers is None and weights and weights.get("W_OV_frobenius"):
        figure.n_layers = len(weights["W_OV_frobenius"])
    return figure


def fit_line(norms: dict[str, Any]) -> tuple[list[int], list[float]] | None:
    """The fitted exponential over its window: rows A..B and exp(a + b i).

    b = ln(rate); a is the least-squares intercept for that slope (docs/SCIENCE.md 2.3).
    """
    growth = norms.get("growth") or {}
    mean = norms.get("sites", {}).get("resid_pre", {}).get("mean_norm")
    rate, window = _finite(growth.get("rate")), growth.get("fit_layers")
    if not mean or rate is None or rate <= 0 or not window:
        return None
    first, last = int(window[0]), int(window[1])
    rows = list(range(first, last + 1))
    values = np.array([_finite(mean[row]) or np.nan for row in rows if row < len(mean)], dtype=np.float64)
    if len(values) != len(rows) or not np.all(values > 0):
        return None
    slope = math.log(rate)
    intercept = float(np.mean(np.log(values) - slope * np.asarray(rows, dtype=np.float64)))
    return rows, [math.exp(intercept + slope * row) for row in rows]


# ----------------------------------------------------------------------------- across models (seeds' open questions)
#
# Seed 000 asks how the effective horizon depends on depth and conjectures that slower norm growth
# gives a lower horizon; seed 003 asks at what relative depth local processing ends. These are
# numbers over the models of a comparison, one point per model, defined in docs/SCIENCE.md
# section 6; the figures (tui/figures/plots.py, tui/figures/terminal.py) draw exactly these.

COSINE_DROP_LENGTH = 5  # the truncation length c whose median cosine is followed (seed 003's middle length)
# The level the median cosine must fall below: 1/sqrt(2), where the squared cosine (seed 003's
# reading of a cosine: the fraction of the residual's norm the truncated one explains) is one half.
COSINE_DROP_LEVEL = math.sqrt(0.5)
MIN_RANKED = 3  # fewer models than this: no rank correlation ("n too small")


def spearman(xs: list[float], ys: list[float]) -> tuple[float | None, str | None]:
    """Spearman's rank correlation of paired values (tied values share their mean rank), or
    (None, why): fewer than MIN_RANKED pairs, or one side all equal (no ranking to correlate)."""
    if len(xs) != len(ys):
        raise ValueError("spearman needs paired values")
    if len(xs) < MIN_RANKED:
        return None, "n too small"
    x, y = _ranks(xs), _ranks(ys)
    dx, dy = x - x.mean(), y - y.mean()
    spread = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    if spread == 0:
        return None, "undefined: every value on one side is equal"
    return float(np.sum(dx * dy)) / spread, None


def _ranks(values: list[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda index: values[index])
    ranks = np.zeros(len(values), dtype=np.float64)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _start_layer(key: Any) -> bool:
    """True for a start layer key: a non-negative int, or its decimal digits (as JSON stores it)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return 0 <= key < 1_000_000
    return isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 7


def horizon_point(item: FigureInput) -> tuple[dict[str, Any] | None, str | None]:
    """One model's effective horizon: k (layers) and k / L, at its first start layer (0 where
    scanned), with the ablation and tol it was read at; or (None, why it is left out)."""
    scan = _mapping(item.scan)
    if not scan:
        return None, "no scan results"
    if not item.n_layers:
        return None, "its depth is unknown"
    # A views file may come from someone else: start layers that are not integers are not read,
    # and a k that is neither an integer in 1..L+1 nor null leaves the model out. JSON gives the
    # start layers as digit strings; a live session's scan gives them as ints.
    stored = scan.get("effective_horizon")
    horizons = {int(start): k for start, k in (stored.items() if isinstance(stored, dict) else ())
                if _start_layer(start)}
    if not horizons:
        return None, "no effective horizon in its scan"
    start = min(horizons)
    k, tol = horizons[start], _finite(scan.get("tol"))
    if k is None:
        return None, f"no scanned k within tol {tol:g} (start layer {start})" if tol is not None else \
            f"no scanned k within tol (start layer {start})"
    if _integer(k) is None or not 1 <= k <= item.n_layers + 1:
        return None, f"its stored effective horizon is not a k in 1..{item.n_layers + 1}"
    return {"label": item.label, "n_layers": item.n_layers, "effective_horizon": int(k),
            "fraction": int(k) / item.n_layers, "start_layer": start, "ablation": str(scan.get("ablation", "zero")),
            "tol": tol}, None


def cosine_drop_point(item: FigureInput, length: int = COSINE_DROP_LENGTH,
                      level: float = COSINE_DROP_LEVEL) -> tuple[dict[str, Any] | None, str | None]:
    """The first row (0..L) whose median mean-centred cosine at truncation length ``length`` is
    below ``level``, and that row / L (its relative depth); or (None, why it is left out)."""
    medians = _mapping(_mapping(item.truncate).get("median_cos"))
    if not item.truncate:
        return None, "no truncate results"
    if not item.n_layers:
        return None, "its depth is unknown"
    values = medians.get(str(length))
    if not isinstance(values, list):
        return None, f"no c = {length} in its truncate results"
    for row, value in enumerate(values):
        value = _finite(value)
        if value is not None and value < level:
            return {"label": item.label, "n_layers": item.n_layers, "row": row, "depth": row / item.n_layers,
                    "median_cosine": value}, None
    finite = [(value, row) for row, value in enumerate(_finite(v) for v in values) if value is not None]
    if not finite:
        return None, f"no median cosine at c = {length}"
    lowest, row = min(finite)
    return None, (f"its median cosine at c = {length} never falls below {level:.3f} "
                  f"(lowest {lowest:.3f}, row {row})")


def across_models(inputs: list[FigureInput]) -> dict[str, Any]:
    """The numbers of the three figures over models (plain JSON; docs/SCIENCE.md section 6).

    ``horizon_vs_depth``: per model its effective horizon k and k / L against its depth L.
    ``horizon_vs_growth``: per model k / L (and k) against its fitted norm growth rate, with
    Spearman's rank correlation of (rate, k / L) and of (rate, k) over the ``n`` models that have
    both (None with ``note`` "n too small" below MIN_RANKED). ``cosine_drop_vs_depth``: per model
    the relative depth at which the median cosine at c = ``length`` first falls below ``level``.
    Each lists the models it leaves out (``left_out``: label and reason).
    """
    depth: dict[str, Any] = {"points": [], "left_out": []}
    growth: dict[str, Any] = {"points": [], "left_out": []}
    drop: dict[str, Any] = {"length": COSINE_DROP_LENGTH, "level": COSINE_DROP_LEVEL, "points": [], "left_out": []}
    for item in inputs:
        point, reason = horizon_point(item)
        if point is None:
            depth["left_out"].append({"label": item.label, "reason": reason})
            growth["left_out"].append({"label": item.label, "reason": reason})
        else:
            depth["points"].append(point)
            rate = _finite(_mapping(_mapping(item.norms).get("growth")).get("rate"))
            if rate is None:
                growth["left_out"].append({"label": item.label, "reason": "no fitted growth rate"})
            else:
                growth["points"].append({"label": item.label, "growth_rate": rate, "fraction": point["fraction"],
                                         "effective_horizon": point["effective_horizon"],
                                         "n_layers": point["n_layers"], "start_layer": point["start_layer"]})
        point, reason = cosine_drop_point(item)
        if point is None:
            drop["left_out"].append({"label": item.label, "reason": reason})
        else:
            drop["points"].append(point)
    rates = [point["growth_rate"] for point in growth["points"]]
    growth["n"] = len(rates)
    growth["spearman"], growth["note"] = spearman(rates, [point["fraction"] for point in growth["points"]])
    growth["spearman_layers"], growth["note_layers"] = spearman(
        rates, [float(point["effective_horizon"]) for point in growth["points"]])
    return {"horizon_vs_depth": depth, "horizon_vs_growth": growth, "cosine_drop_vs_depth": drop}


def views_input(item: Loaded) -> FigureInput:
    """A results directory's views as a figure input, without the stored arrays (what
    ``across_models`` reads: the norms, scan and truncate views and the depth)."""
    return FigureInput(label=item.label, n_layers=item.n_layers, has_bos=_has_bos(item.manifest),
                       norms=item.views.get("norms"), scan=item.views.get("scan"), truncate=item.views.get("truncate"))
