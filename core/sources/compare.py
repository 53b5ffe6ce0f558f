"""Several results directories side by side: the `horizon compare` table and the figures' inputs
(core/sources/compare_figures.py, re-exported here).

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from horizon.core.errors import HorizonError
from horizon.core.results import store
from horizon.core.sources.compare_figures import (
    COSINE_DROP_LENGTH,
    COSINE_DROP_LEVEL,
    FigureInput,
    across_models,
    figure_input,
    fit_line,
    live_figure_input,
    norm_samples,
    norms_view,
    prompt_norms,
    spearman,
    views_input,
)
from horizon.core.sources.compare_values import _finite, _integer

TOP_HEADS = 3

# The figures' names callers import from here (core/sources/compare_figures.py holds them).
__all__ = [
    "COSINE_DROP_LENGTH",
    "COSINE_DROP_LEVEL",
    "TOP_HEADS",
    "FigureInput",
    "Loaded",
    "across_models",
    "compare",
    "cosine_layers",
    "duplicates",
    "figure_input",
    "fit_line",
    "live_figure_input",
    "load",
    "load_all",
    "model_row",
    "norm_samples",
    "norms_view",
    "prompt_norms",
    "recompute_views",
    "settings_differences",
    "spearman",
    "views_input",
]


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
    from horizon.core.results.views import load_views

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
    from horizon.core.results.views import corpus_views

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
