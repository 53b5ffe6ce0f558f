"""The horizon scan: the loss-vs-k curve over many horizons, and the layer x k matrix (``--by-layer``).

Both batch their configs into staircase passes (core/patching/staircase.py) through ``metric_sums``
(core/patching/horizon.py) and pool the per-prediction metrics (core/patching/horizon_metrics.py) over every
prediction of every prompt. The effective horizon at ``tol`` is the smallest k whose loss
increase is <= tol (docs/SCIENCE.md section 3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from horizon.core.analyses.scan.result import (  # the result types and their pure helpers (torch-free)
    BY_LAYER_METRICS,
    ByLayerResult,
    ScanResult,
    effective_horizon,
    join_by_layer,
    row_horizons,
)
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.patching.horizon import (
    DEFAULT_PASS_BYTES,
    DEFAULT_TOL,
    AblationMeans,
    ChunkedClean,
    CleanRun,
    HorizonConfig,
    ablation_means,
    check_model,
    check_unit,
    clean_runs,
    horizon_sublayers,
    metric_sums,
    needs_means,
)
from horizon.core.patching.horizon_metrics import Totals


def default_ks(n_layers: int, unit: str) -> list[int]:
    """k = 1..L+1 in layers (K = 2..2L+2), k = 1..2L+1 in sublayers: the last one is the clean model."""
    return list(range(1, n_layers + 2)) if unit == "layer" else list(range(1, 2 * n_layers + 2))


def scan(
    model: LoadedModel,
    token_ids: list[list[int]],
    ks: Sequence[int] | None = None,
    start_layers: Sequence[int] = (0,),
    tol: float = DEFAULT_TOL,
    source: str = "recursive",
    keep_embed: bool = False,
    final: str = "window",
    unit: str = "layer",
    progress: Callable[[float], None] | None = None,
    batch_size: int = 8,
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    cleans: Sequence[CleanRun | ChunkedClean] | None = None,
    ablation: str = "zero",
    means: AblationMeans | None = None,
    has_bos: bool = True,
    position_chunk: int | None = None,
    only_layer: int | None = None,
) -> ScanResult:
    """Loss increase, KL and top-1 agreement for every k and start layer.

    ``only_layer`` N: the horizon enforced at layer N's readers alone (N = L: the final readout; one
    row of ``scan_by_layer``'s matrix), with the start layers (0,).

    ``progress(n)`` advances by n rows' worth of work (fractions as layers complete); ``cleans``
    are the prompts' clean runs when the caller keeps them for reuse; ``means`` the ablation means
    with ``ablation="mean"`` (default: the prompts' own, position 0 a BOS when ``has_bos``).
    """
    pairs, configs = _scan_configs(model, ks, start_layers, tol, source, keep_embed, final, unit, ablation, only_layer)
    totals, clean = _evaluate(model, token_ids, configs, progress, batch_size, max_pass_bytes, cleans, means, has_bos,
                              position_chunk)
    return _scan_result(pairs, configs, totals, clean, tol, unit)


def scan_per_prompt(
    model: LoadedModel,
    token_ids: list[list[int]],
    ks: Sequence[int] | None = None,
    start_layers: Sequence[int] = (0,),
    tol: float = DEFAULT_TOL,
    source: str = "recursive",
    keep_embed: bool = False,
    final: str = "window",
    unit: str = "layer",
    batch_size: int = 8,
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    cleans: Sequence[CleanRun | ChunkedClean] | None = None,
    ablation: str = "zero",
    means: AblationMeans | None = None,
    has_bos: bool = True,
    position_chunk: int | None = None,
) -> list[ScanResult]:
    """``scan`` of each prompt on its own (in order), computed from padded batches of ``batch_size``.

    Each prompt's result equals ``scan(model, [ids], ...)`` (to float rounding: the batched
    matmuls differ): its metrics are the per-prompt sums of the batch's per-prediction metrics,
    padded positions masked out. With mean ablation pass ``means`` (the corpus's): the default
    is the means of all the prompts given, not of each prompt alone.
    """
    pairs, configs = _scan_configs(model, ks, start_layers, tol, source, keep_embed, final, unit, ablation)
    per_prompt, cleans_of = _evaluate_prompts(model, token_ids, configs, None, batch_size, max_pass_bytes, cleans,
                                              means, has_bos, position_chunk)
    return [_scan_result(pairs, configs, totals, clean, tol, unit)
            for totals, clean in zip(per_prompt, cleans_of, strict=True)]


def _scan_configs(
    model: LoadedModel, ks: Sequence[int] | None, start_layers: Sequence[int], tol: float, source: str,
    keep_embed: bool, final: str, unit: str, ablation: str, only_layer: int | None = None,
) -> tuple[list[tuple[int, int]], list[HorizonConfig]]:
    """The scan's (k, start layer) pairs and their configs, after the checks."""
    ks = _check_scan(model, ks, unit, tol)
    if not start_layers or min(start_layers) < 0:
        raise HorizonError("the start layers must be integers >= 0")
    pairs = [(k, layer) for layer in dict.fromkeys(start_layers) for k in ks]
    configs = [
        HorizonConfig(horizon_sublayers(k, unit), source=source, keep_embed=keep_embed, final=final, start_layer=layer,
                      ablation=ablation, only_layer=only_layer)
        for k, layer in pairs
    ]
    return pairs, configs


def _scan_result(pairs: Sequence[tuple[int, int]], configs: Sequence[HorizonConfig], totals: Sequence[Totals],
                 clean: Totals, tol: float, unit: str) -> ScanResult:
    n = clean.n_tokens
    rows = []
    for (k, layer), config, total in zip(pairs, configs, totals, strict=True):
        rows.append({"k": k, "K": config.horizon_sublayers, "start_layer": layer, **total.row(n)})
    horizons = {layer: effective_horizon(rows, layer, tol) for layer in dict.fromkeys(layer for _, layer in pairs)}
    return ScanResult(rows=rows, effective_horizon=horizons, loss_clean=clean.loss_clean / n, tol=tol, n_tokens=n,
                      unit=unit)


def _check_scan(model: LoadedModel, ks: Sequence[int] | None, unit: str, tol: float) -> list[int]:
    """Validate a scan's shared arguments; the distinct ks to run, in order."""
    check_unit(unit)
    if not tol >= 0:
        raise HorizonError(f"--tol must be >= 0, got {tol}")
    ks = default_ks(model.n_layers, unit) if ks is None else list(ks)
    if not ks or min(ks) < 1:
        raise HorizonError("the horizons to scan must be integers >= 1")
    check_model(model)
    return list(dict.fromkeys(ks))


def _evaluate(
    model: LoadedModel,
    token_ids: list[list[int]],
    configs: Sequence[HorizonConfig],
    progress: Callable[[float], None] | None,
    batch_size: int,
    max_pass_bytes: int,
    cleans: Sequence[CleanRun | ChunkedClean] | None,
    means: AblationMeans | None,
    has_bos: bool,
    position_chunk: int | None = None,
) -> tuple[list[Totals], Totals]:
    """Every config's metric totals pooled over the prompts, and the clean run's totals."""
    per_prompt, cleans_of = _evaluate_prompts(model, token_ids, configs, progress, batch_size, max_pass_bytes, cleans,
                                              means, has_bos, position_chunk)
    totals = [Totals() for _ in configs]
    clean_totals = Totals()
    for prompt_totals, clean in zip(per_prompt, cleans_of, strict=True):
        totals = [total.plus(part) for total, part in zip(totals, prompt_totals, strict=True)]
        clean_totals = clean_totals.plus(clean)
    return totals, clean_totals


def _evaluate_prompts(
    model: LoadedModel,
    token_ids: list[list[int]],
    configs: Sequence[HorizonConfig],
    progress: Callable[[float], None] | None,
    batch_size: int,
    max_pass_bytes: int,
    cleans: Sequence[CleanRun | ChunkedClean] | None,
    means: AblationMeans | None,
    has_bos: bool,
    position_chunk: int | None = None,
) -> tuple[list[list[Totals]], list[Totals]]:
    """Per prompt, in the order of the clean runs' batches: every config's totals, and the clean totals.

    All configs go into one staircase per token batch: the largest batched matmuls, one readout.
    Each config's per-prompt sums stay on the device; a batch's sums reach the host in one copy.
    """
    # Not list()-ed: clean_runs may make them batch by batch (core/memory/budget.py), one alive at a time.
    cleans = cleans if cleans is not None else clean_runs(model, token_ids, batch_size, has_bos,
                                                               position_chunk=position_chunk)
    if needs_means(configs) and means is None:
        means = ablation_means(cleans)
    per_prompt: list[list[Totals]] = []
    clean_totals: list[Totals] = []
    scaled = None if progress is None else (lambda n: progress(n / len(cleans)))
    for clean in cleans:
        values = metric_sums(model, clean, configs, max_pass_bytes, scaled, means).cpu().tolist()  # one host copy
        for row in range(clean.batch_size):
            per_prompt.append([Totals.of(values[index][row]) for index in range(len(configs))])
            clean_totals.append(Totals.of(values[-1][row]))
    return per_prompt, clean_totals


def by_layer_configs(
    n_layers: int, ks: Sequence[int], unit: str = "layer", **options: Any
) -> list[tuple[int, int, HorizonConfig]]:
    """(layer N, k, config) for every cell of the matrix, row by row."""
    return [(layer, k, HorizonConfig(horizon_sublayers(k, unit), only_layer=layer, **options))
            for layer in range(n_layers + 1) for k in ks]


def scan_by_layer(
    model: LoadedModel,
    token_ids: list[list[int]],
    ks: Sequence[int] | None = None,
    tol: float = DEFAULT_TOL,
    source: str = "recursive",
    keep_embed: bool = False,
    final: str = "window",
    unit: str = "layer",
    ablation: str = "zero",
    progress: Callable[[float], None] | None = None,
    batch_size: int = 8,
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    cleans: Sequence[CleanRun | ChunkedClean] | None = None,
    means: AblationMeans | None = None,
    has_bos: bool = True,
    position_chunk: int | None = None,
) -> ByLayerResult:
    """For every layer N = 0..L and every k: the loss increase with the horizon enforced at layer N only.

    With K = 2k (layer unit), layer N's readers are attn_N (j = 2N+1) and mlp_N (j = 2N+2), and the
    window of reader j reaches back to lo = max(0, j - 2k); the final readout (N = L) is j = 2L+1.
    For k > N every such lo is 0 (2N+2 - 2k <= 0; 2L+1 - 2k < 0 when N = L), so the cell is the
    clean run: ``HorizonConfig.patches`` returns False for all its readers and no pass runs for it.
    Every other cell is one row of the staircase: it starts at layer N from the cached clean
    residual (layers below N are unchanged) and runs on to the readout, the layers above N reading
    the full stream of the patched pass. All rows of all layers share the batched passes and the
    vocabulary-tiled readout of ``metric_sums``. ``progress(n)`` advances by n cells' worth.
    """
    ks = _check_scan(model, ks, unit, tol)
    cells = by_layer_configs(model.n_layers, ks, unit, source=source, keep_embed=keep_embed, final=final,
                             ablation=ablation)
    totals, clean = _evaluate(model, token_ids, [config for _, _, config in cells], progress, batch_size,
                              max_pass_bytes, cleans, means, has_bos, position_chunk)
    return _by_layer_result(model.n_layers, ks, totals, clean, tol, unit, ablation)


def scan_by_layer_per_prompt(
    model: LoadedModel,
    token_ids: list[list[int]],
    ks: Sequence[int] | None = None,
    tol: float = DEFAULT_TOL,
    source: str = "recursive",
    keep_embed: bool = False,
    final: str = "window",
    unit: str = "layer",
    ablation: str = "zero",
    batch_size: int = 8,
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    cleans: Sequence[CleanRun | ChunkedClean] | None = None,
    means: AblationMeans | None = None,
    has_bos: bool = True,
    position_chunk: int | None = None,
) -> list[ByLayerResult]:
    """``scan_by_layer`` of each prompt on its own (in order), from padded batches (see ``scan_per_prompt``)."""
    ks = _check_scan(model, ks, unit, tol)
    cells = by_layer_configs(model.n_layers, ks, unit, source=source, keep_embed=keep_embed, final=final,
                             ablation=ablation)
    per_prompt, cleans_of = _evaluate_prompts(model, token_ids, [config for _, _, config in cells], None, batch_size,
                                              max_pass_bytes, cleans, means, has_bos, position_chunk)
    return [_by_layer_result(model.n_layers, ks, totals, clean, tol, unit, ablation)
            for totals, clean in zip(per_prompt, cleans_of, strict=True)]


def _by_layer_result(n_layers: int, ks: list[int], totals: Sequence[Totals], clean: Totals, tol: float, unit: str,
                     ablation: str) -> ByLayerResult:
    n = clean.n_tokens
    layers = list(range(n_layers + 1))
    matrices: dict[str, list[list[float]]] = {name: [] for name in BY_LAYER_METRICS}
    for layer in layers:
        row = [totals[layer * len(ks) + column].row(n) for column in range(len(ks))]
        for name, matrix in matrices.items():
            matrix.append([cell[name] for cell in row])
    return ByLayerResult(layers=layers, ks=ks, effective_horizon=row_horizons(ks, matrices["delta_loss"], tol),
                         loss_clean=clean.loss_clean / n, tol=tol, n_tokens=n, unit=unit, ablation=ablation,
                         **matrices)


__all__ = ["BY_LAYER_METRICS", "ByLayerResult", "ScanResult", "by_layer_configs", "default_ks", "effective_horizon",
           "join_by_layer", "row_horizons", "scan", "scan_by_layer", "scan_by_layer_per_prompt", "scan_per_prompt"]
