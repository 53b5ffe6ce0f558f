"""The horizon scan: the loss-vs-k curve over many horizons, and the layer x k matrix (``--by-layer``).

Both batch their configs into staircase passes (core/staircase.py) through ``patched_metrics``
(core/horizon.py) and pool the per-prediction metrics (core/horizon_metrics.py) over every
prediction of every prompt. The effective horizon at ``tol`` is the smallest k whose loss
increase is <= tol (docs/SCIENCE.md section 3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from horizon.core.errors import HorizonError
from horizon.core.horizon import (
    DEFAULT_PASS_BYTES,
    DEFAULT_TOL,
    AblationMeans,
    CleanRun,
    HorizonConfig,
    ablation_means,
    check_model,
    check_unit,
    clean_runs,
    horizon_sublayers,
    needs_means,
    patched_metrics,
)
from horizon.core.horizon_metrics import Totals
from horizon.core.loader import LoadedModel


@dataclass
class ScanResult:
    """The loss-vs-enforced-horizon curve, one row per (k, start layer)."""

    rows: list[dict[str, Any]]
    effective_horizon: dict[int, int | None]
    loss_clean: float
    tol: float
    n_tokens: int
    unit: str = "layer"


def default_ks(n_layers: int, unit: str) -> list[int]:
    """k = 1..L+1 in layers (K = 2..2L+2), k = 1..2L+1 in sublayers: the last one is the clean model."""
    return list(range(1, n_layers + 2)) if unit == "layer" else list(range(1, 2 * n_layers + 2))


def effective_horizon(rows: Sequence[dict[str, Any]], start_layer: int, tol: float) -> int | None:
    """The smallest k whose loss increase is <= tol, at one start layer (None: no k qualifies)."""
    qualifying = [row["k"] for row in rows if row["start_layer"] == start_layer and row["delta_loss"] <= tol]
    return min(qualifying) if qualifying else None


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
    cleans: Sequence[CleanRun] | None = None,
    ablation: str = "zero",
    means: AblationMeans | None = None,
    has_bos: bool = True,
) -> ScanResult:
    """Loss increase, KL and top-1 agreement for every k and start layer.

    ``progress(n)`` advances by n rows' worth of work (fractions as layers complete); ``cleans``
    are the prompts' clean runs when the caller keeps them for reuse; ``means`` the ablation means
    with ``ablation="mean"`` (default: the prompts' own, position 0 a BOS when ``has_bos``).
    """
    ks = _check_scan(model, ks, unit, tol)
    if not start_layers or min(start_layers) < 0:
        raise HorizonError("the start layers must be integers >= 0")
    pairs = [(k, layer) for layer in dict.fromkeys(start_layers) for k in ks]
    configs = [
        HorizonConfig(horizon_sublayers(k, unit), source=source, keep_embed=keep_embed, final=final, start_layer=layer,
                      ablation=ablation)
        for k, layer in pairs
    ]
    totals, loss_clean, n = _evaluate(model, token_ids, configs, progress, batch_size, max_pass_bytes, cleans, means,
                                      has_bos)
    rows = []
    for (k, layer), config, total in zip(pairs, configs, totals, strict=True):
        rows.append({"k": k, "K": config.horizon_sublayers, "start_layer": layer, **total.row(n)})
    horizons = {layer: effective_horizon(rows, layer, tol) for layer in dict.fromkeys(start_layers)}
    return ScanResult(rows=rows, effective_horizon=horizons, loss_clean=loss_clean, tol=tol, n_tokens=n, unit=unit)


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
    cleans: Sequence[CleanRun] | None,
    means: AblationMeans | None,
    has_bos: bool,
) -> tuple[list[Totals], float, int]:
    """Every config's metric totals over the prompts, the clean loss, and the number of predictions.

    All configs go into one staircase per token batch: the largest batched matmuls, one readout.
    """
    cleans = list(cleans) if cleans is not None else clean_runs(model, token_ids, batch_size, has_bos)
    if needs_means(configs) and means is None:
        means = ablation_means(cleans)
    totals = [Totals() for _ in configs]
    clean_totals = Totals()
    scaled = None if progress is None else (lambda n: progress(n / len(cleans)))
    for clean in cleans:
        clean_totals.add(clean.reference.unpatched())
        for index, metrics in patched_metrics(model, clean, configs, max_pass_bytes, scaled, means):
            totals[index].add(metrics)
    n = clean_totals.n_tokens
    return totals, clean_totals.loss_clean / n, n


@dataclass
class ByLayerResult:
    """The per-layer horizon matrix: row N = the horizon enforced at layer N only (N = L: the final readout).

    Every matrix is [L+1][len(ks)]; ``effective_horizon[N]`` is the smallest k of row N whose loss
    increase is <= tol (None: none of the ks).
    """

    layers: list[int]
    ks: list[int]
    loss: list[list[float]]
    delta_loss: list[list[float]]
    kl: list[list[float]]
    top1_agreement: list[list[float]]
    effective_horizon: list[int | None]
    loss_clean: float
    tol: float
    n_tokens: int
    unit: str = "layer"
    ablation: str = "zero"

    def payload(self) -> dict[str, Any]:
        """The ``by_layer`` JSON object of ``horizon scan --by-layer``."""
        return {"layers": self.layers, "ks": self.ks, "delta_loss": self.delta_loss, "kl": self.kl,
                "loss": self.loss, "top1_agreement": self.top1_agreement,
                "effective_horizon": self.effective_horizon, "tol": self.tol}


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
    cleans: Sequence[CleanRun] | None = None,
    means: AblationMeans | None = None,
    has_bos: bool = True,
) -> ByLayerResult:
    """For every layer N = 0..L and every k: the loss increase with the horizon enforced at layer N only.

    With K = 2k (layer unit), layer N's readers are attn_N (j = 2N+1) and mlp_N (j = 2N+2), and the
    window of reader j reaches back to lo = max(0, j - 2k); the final readout (N = L) is j = 2L+1.
    For k > N every such lo is 0 (2N+2 - 2k <= 0; 2L+1 - 2k < 0 when N = L), so the cell is the
    clean run: ``HorizonConfig.patches`` returns False for all its readers and no pass runs for it.
    Every other cell is one row of the staircase: it starts at layer N from the cached clean
    residual (layers below N are unchanged) and runs on to the readout, the layers above N reading
    the full stream of the patched pass. All rows of all layers share the batched passes and the
    vocabulary-tiled readout of ``patched_metrics``. ``progress(n)`` advances by n cells' worth.
    """
    ks = _check_scan(model, ks, unit, tol)
    n_layers = model.n_layers
    cells = by_layer_configs(n_layers, ks, unit, source=source, keep_embed=keep_embed, final=final,
                             ablation=ablation)
    totals, loss_clean, n = _evaluate(model, token_ids, [config for _, _, config in cells], progress, batch_size,
                                      max_pass_bytes, cleans, means, has_bos)
    layers = list(range(n_layers + 1))
    matrices: dict[str, list[list[float]]] = {name: [] for name in BY_LAYER_METRICS}
    for layer in layers:
        row = [totals[layer * len(ks) + column].row(n) for column in range(len(ks))]
        for name, matrix in matrices.items():
            matrix.append([cell[name] for cell in row])
    return ByLayerResult(layers=layers, ks=ks, effective_horizon=row_horizons(ks, matrices["delta_loss"], tol),
                         loss_clean=loss_clean, tol=tol, n_tokens=n, unit=unit, ablation=ablation, **matrices)


BY_LAYER_METRICS = ("loss", "delta_loss", "kl", "top1_agreement")


def row_horizons(ks: Sequence[int], delta_loss: Sequence[Sequence[float]], tol: float) -> list[int | None]:
    """Per row of the matrix, the smallest k whose loss increase is <= tol (None: none)."""
    horizons: list[int | None] = []
    for row in delta_loss:
        qualifying = [k for k, value in zip(ks, row, strict=True) if value <= tol]
        horizons.append(min(qualifying) if qualifying else None)
    return horizons


def join_by_layer(parts: Sequence[ByLayerResult]) -> ByLayerResult:
    """One matrix from parts over disjoint ks of the same prompts (columns side by side, ks in order)."""
    first = parts[0]
    columns = sorted((k, index, column) for index, part in enumerate(parts) for column, k in enumerate(part.ks))
    ks = [k for k, _, _ in columns]
    if len(set(ks)) != len(ks):
        raise HorizonError("the parts of a by-layer matrix overlap in k")
    rows = range(len(first.layers))
    matrices = {
        name: [[getattr(parts[index], name)[row][column] for _, index, column in columns] for row in rows]
        for name in BY_LAYER_METRICS
    }
    horizons = row_horizons(ks, matrices["delta_loss"], first.tol)
    return ByLayerResult(layers=first.layers, ks=ks, effective_horizon=horizons, loss_clean=first.loss_clean,
                         tol=first.tol, n_tokens=first.n_tokens, unit=first.unit, ablation=first.ablation, **matrices)
