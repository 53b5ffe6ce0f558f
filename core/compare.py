"""Several results directories side by side: the `horizon compare` table and the figures' inputs.

Reads each directory through the store (``store.open_results``) and its corpus views
(``views.load_views``: the cache a sweep writes, so no torch is imported when it is intact), and
takes every number from those views: nothing here recomputes an analysis. The few extra arrays
the figures need beyond the views (the resid_pre norms of every position, one prompt's norms per
position) are read from the stored norms table as they are.

The table's columns (README, `horizon compare`):

- ``growth_rate``, ``fit_window``, ``r2``: the norms view's fitted rate (docs/SCIENCE.md 2.3).
- ``bos_norm_ratio``: the largest, over resid_pre rows, of the BOS position's mean norm divided by
  the mean norm of the other positions at that row, with the row (``bos_norm_ratio_layer``).
- ``effective_horizon``: ablation -> start layer -> k, from the scan view (section 3).
- ``median_cosine``: truncation length c -> {early, middle, final} -> the median mean-centred
  cosine at rows 1, L // 2 and L (``cosine_layers``; section 4).
- ``most_local_heads`` / ``most_long_range_heads``: the three heads with the smallest / largest
  mean attention distance without the BOS column (section 5).
- ``corpus`` and ``settings_differ``: what each directory's corpus is, and which of its corpus and
  settings differ from the first directory's (numbers from different set-ups are not comparable).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from horizon.core import store
from horizon.core.errors import HorizonError

TOP_HEADS = 3


@dataclass
class Loaded:
    """One results directory: its manifest, corpus views, and what the store found wrong with it."""

    path: Path
    label: str
    manifest: dict[str, Any]
    views: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    results: store.Results | None = None

    @property
    def n_layers(self) -> int | None:
        value = self.manifest.get("model", {}).get("n_layers")
        return int(value) if isinstance(value, int) else None


def load(path: str | Path) -> Loaded:
    """Open one results directory (HorizonError when nothing in it can be read)."""
    from horizon.core.views import load_views

    results = store.open_results(path)
    views = load_views(results)
    manifest = results.manifest if isinstance(results.manifest, dict) else {}
    stored_model = manifest.get("model")
    model: dict[str, Any] = stored_model if isinstance(stored_model, dict) else {}
    spec = model.get("spec") or results.path.name
    loaded = Loaded(path=results.path, label=str(spec), manifest=manifest, views=views,
                    problems=results.problems, notes=list(results.notes), results=results)
    try:
        model_row(loaded)
    except Exception:  # a stored view of the wrong shape (crafted or stale): compute the views again
        recompute_views(loaded, "compared")
    return loaded


def recompute_views(item: Loaded, how: str) -> None:
    """Replace a directory's stored views (which cannot be ``how``: compared, drawn) by those of its tables."""
    from horizon.core.views import corpus_views

    if item.results is None:
        return
    item.problems.append(f"the stored views cannot be {how} (the cache is damaged or crafted); computed from "
                         "the tables instead")
    item.views = corpus_views(item.results)


def duplicates(loaded: list[Loaded]) -> list[str]:
    """One warning per directory given more than once (the same directory, whatever the path that names it)."""
    seen: dict[Path, Path] = {}
    lines = []
    for item in loaded:
        real = item.path.resolve()
        if real in seen:
            lines.append(f"{item.path} is the same directory as {seen[real]}: its results are shown twice")
        else:
            seen[real] = item.path
    return lines


def load_all(paths: Sequence[str | Path], progress: Callable[[int, int], None] | None = None) -> list[Loaded]:
    """Every directory, with labels made unique (the model's name, then the directory's where two share it).

    ``progress(done, total)`` is called after each directory is read (the app's loading bar)."""
    if not paths:
        raise HorizonError("give at least one results directory")
    loaded = []
    for path in paths:
        loaded.append(load(path))
        if progress is not None:
            progress(len(loaded), len(paths))
    labels = [item.label for item in loaded]
    for item in loaded:
        if labels.count(item.label) > 1:
            item.label = f"{item.label} ({item.path.name})"
    seen: dict[str, int] = {}
    for item in loaded:  # still equal (same model, same folder name elsewhere): number them
        seen[item.label] = seen.get(item.label, 0) + 1
        if seen[item.label] > 1:
            item.label = f"{item.label} #{seen[item.label]}"
    return loaded


# ----------------------------------------------------------------------------- the table


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> dict[str, Any]:
    """A stored JSON object, or {} for anything else (a views file may come from someone else)."""
    return value if isinstance(value, dict) else {}


def _window(value: Any) -> list[int] | None:
    """A stored fit window [first, last] (two integers), or None."""
    if isinstance(value, list) and len(value) == 2 and all(_integer(v) is not None for v in value):
        return list(value)
    return None


def _bos_ratio(norms: dict[str, Any]) -> tuple[float | None, int | None]:
    bos = (norms.get("bos") or {}).get("mean_norm")
    mean = norms.get("sites", {}).get("resid_pre", {}).get("mean_norm")
    if not bos or not mean:
        return None, None
    best: tuple[float | None, int | None] = (None, None)
    for row, (high, typical) in enumerate(zip(bos, mean, strict=False)):
        high, typical = _finite(high), _finite(typical)
        if high is None or not typical:
            continue
        ratio = high / typical
        if best[0] is None or ratio > best[0]:
            best = (ratio, row)
    return best


def cosine_layers(n_layers: int) -> dict[str, int]:
    """The rows the table reports the median cosine at: early (1), middle (L // 2), final (L)."""
    return {"early": min(1, n_layers), "middle": n_layers // 2, "final": n_layers}


def _heads(attention: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    values = attention.get("mean_distance_no_bos") or attention.get("mean_distance") or []
    ranked = [(float(value), layer, head) for layer, row in enumerate(values) for head, value in enumerate(row)
              if _finite(value) is not None]
    ranked.sort()

    def entry(item: tuple[float, int, int]) -> dict[str, Any]:
        return {"layer": item[1], "head": item[2], "mean_distance": item[0]}

    return [entry(item) for item in ranked[:TOP_HEADS]], [entry(item) for item in ranked[::-1][:TOP_HEADS]]


def _corpus(manifest: dict[str, Any]) -> dict[str, Any]:
    corpus = manifest.get("corpus") or {}
    return {key: corpus.get(key) for key in ("name", "sha256", "n_prompts", "max_tokens")}


def _settings(manifest: dict[str, Any], both: set[str]) -> dict[str, Any]:
    """What makes two directories' numbers comparable: corpus, BOS, dtype, the settings of the analyses in ``both``."""
    analyses = manifest.get("analyses") or {}
    flat: dict[str, Any] = {f"corpus.{key}": value for key, value in _corpus(manifest).items()}
    flat["bos"] = (manifest.get("bos") or {}).get("enabled")
    flat["dtype"] = manifest.get("dtype")
    for name, settings in analyses.items():
        if isinstance(settings, dict) and name in both:
            for key, value in settings.items():
                if not key.startswith("_") and key not in ("ks", "start_layers"):  # ks: per model depth
                    flat[f"{name}.{key}"] = value
    return flat


def settings_differences(first: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The settings keys whose values differ between two manifests (``corpus`` for any corpus key)."""
    both = set(first.get("analyses") or {}) & set(other.get("analyses") or {})
    a, b = _settings(first, both), _settings(other, both)
    differ = [key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    out: list[str] = []
    for key in differ:
        name = "corpus" if key.startswith("corpus.") else key
        if name not in out:
            out.append(name)
    return out


def model_row(item: Loaded, reference: Loaded | None = None) -> dict[str, Any]:
    """One directory's row of the comparison table (plain JSON)."""
    model = item.manifest.get("model") or {}
    views = item.views
    norms = views.get("norms") or {}
    growth = norms.get("growth") or {}
    n_layers = item.n_layers
    ratio, ratio_row = _bos_ratio(norms)
    row: dict[str, Any] = {
        "dir": str(item.path),
        "label": item.label,
        "model": model.get("spec"),
        "n_layers": n_layers,
        "d_model": _integer(model.get("d_model")),
        "growth_rate": _finite(growth.get("rate")),
        "fit_window": _window(growth.get("fit_layers")),
        "r2": _finite(growth.get("r2")),
        "bos_norm_ratio": ratio,
        "bos_norm_ratio_layer": ratio_row,
        "effective_horizon": None,
        "median_cosine": None,
        "cosine_layers": None,
        "most_local_heads": None,
        "most_long_range_heads": None,
        "corpus": _corpus(item.manifest),
        "settings_differ": [] if reference is None else settings_differences(reference.manifest, item.manifest),
        "problems": item.problems,
    }
    scan = views.get("scan")
    if scan:
        horizons = scan.get("effective_horizon") or {}
        if not isinstance(horizons, dict) or any(k is not None and _integer(k) is None for k in horizons.values()):
            raise ValueError("the scan view's effective horizons are not start layer -> k")
        row["effective_horizon"] = {str(scan.get("ablation", "zero")): dict(horizons)}
    truncate = views.get("truncate")
    if truncate and n_layers is not None:
        layers = cosine_layers(n_layers)
        medians = truncate.get("median_cos") or {}
        row["cosine_layers"] = layers
        row["median_cosine"] = {
            str(c): {where: _finite(values[at]) if at < len(values) else None for where, at in layers.items()}
            for c, values in medians.items()
        }
    attention = views.get("attention")
    if attention:
        row["most_local_heads"], row["most_long_range_heads"] = _heads(attention)
    return row


def compare(loaded: list[Loaded]) -> dict[str, Any]:
    """The comparison table: one row per directory, the warnings (problems, differing set-ups, repeats),
    and the numbers over the models (``across_models``)."""
    reference = loaded[0]
    models = [model_row(item, None if index == 0 else reference) for index, item in enumerate(loaded)]
    warnings: list[str] = duplicates(loaded)
    for item in loaded:
        warnings.extend(f"{item.path}: {problem}" for problem in item.problems)
    for item, row in zip(loaded, models, strict=True):
        if row["settings_differ"]:
            warnings.append(f"{item.path} differs from {reference.path} in {', '.join(row['settings_differ'])}: "
                            "numbers from different set-ups are not comparable")
        missing = [name for name in ("norms", "scan", "truncate", "attention") if name not in item.views]
        if missing:
            warnings.append(f"{item.path} has no {', '.join(missing)} results")
    return {"models": models, "warnings": warnings,
            "across_models": across_models([views_input(item) for item in loaded])}


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
    # One array per row, in one pass (rows are bounded by the store: core/store.py index_problem).
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
