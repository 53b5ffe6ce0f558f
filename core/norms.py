"""Residual-stream norm growth (docs/SCIENCE.md section 2; seeds 001 and 002).

One capture pass per batch records, for every position, the L2 norm and the standard deviation
over d_model of resid_pre_i (plus the final residual), resid_mid_i, resid_post_i, attn_out_i and
mlp_out_i. Only these two numbers per vector leave the hook (``run_capture``'s ``reduce``), so a
long run never holds a [batch, pos, d_model] tensor per site.

Statistics pool the positions of all prompts, without BOS (position 0) and padding unless asked.

Default fit window (``fit=None``): the longest window of consecutive resid_pre "layers" (index L is
the final residual) with at least ``MIN_FIT_POINTS`` points whose log mean-norm deviates from its
least-squares line by at most ``FIT_TOLERANCE`` (root mean square, natural log: ~5% in norm).
Ties go to the window with the smaller deviation, then the later one (the seeds fit the later,
steady part of the network, after the early transient). If no window qualifies, all layers are
fitted. The criterion is the deviation, not r^2, because r^2 punishes a straight but flat line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from horizon.core.capture import run_capture
from horizon.core.errors import HorizonError
from horizon.core.loader import LoadedModel
from horizon.core.prompts import batches

# The sites reported, in display order; resid_pre carries the final residual as its last row.
NORM_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
QUANTILES = (5, 25, 75, 95)
FIT_TOLERANCE = 0.05
MIN_FIT_POINTS = 3


@dataclass
class Growth:
    """Per-layer growth ratios of the resid_pre mean norm and the fitted exponential rate."""

    ratios: list[float]  # g_i = mean_norm(resid_pre_{i+1}) / mean_norm(resid_pre_i), i = 0..L-1
    rate: float  # exp(slope) of log mean_norm over fit_layers
    fit_layers: tuple[int, int]  # inclusive [A, B] over resid_pre indices 0..L (L = final)
    r2: float
    rms_residual: float  # root-mean-square deviation of log mean_norm from the fitted line
    chosen: str  # "user" (--fit) or "auto" (the default rule above)

    def describe(self) -> str:
        """E.g. '1.087/layer over layers 12-29 (r^2 0.98)'."""
        return f"{self.rate:.3f}/layer over layers {self.fit_layers[0]}-{self.fit_layers[1]} (r^2 {self.r2:.2f})"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Growth:
        return cls(ratios=list(data["ratios"]), rate=data["rate"], fit_layers=tuple(data["fit_layers"]),
                   r2=data["r2"], rms_residual=data["rms_residual"], chosen=data["chosen"])

    def to_json(self) -> dict[str, Any]:
        return {
            "ratios": self.ratios,
            "rate": self.rate,
            "fit_layers": list(self.fit_layers),
            "r2": self.r2,
            "rms_residual": self.rms_residual,
            "chosen": self.chosen,
        }


@dataclass
class SiteStats:
    """Aggregates of one site over the statistics positions, one entry per row (layer)."""

    mean_norm: np.ndarray  # [rows]
    median_norm: np.ndarray  # [rows]
    std: np.ndarray  # [rows], mean over positions of the per-position std over d_model
    quantiles: dict[int, np.ndarray]  # percentile -> [rows]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SiteStats:
        def array(values: list[float | None]) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

        return cls(mean_norm=array(data["mean_norm"]), median_norm=array(data["median_norm"]), std=array(data["std"]),
                   quantiles={int(q): array(values) for q, values in data["quantiles"].items()})

    def to_json(self) -> dict[str, Any]:
        return {
            "mean_norm": self.mean_norm.tolist(),
            "median_norm": self.median_norm.tolist(),
            "std": self.std.tolist(),
            "quantiles": {str(q): values.tolist() for q, values in self.quantiles.items()},
        }


@dataclass
class NormsReport:
    """Everything `horizon norms` measures on activations.

    ``norms`` / ``stds``: site -> one numpy array [rows, T] per prompt (BOS included, no padding);
    resid_pre has L+1 rows, the last being the final residual; the other sites have L rows.
    """

    n_layers: int
    d_model: int
    has_bos: bool
    include_bos: bool
    norms: dict[str, list[np.ndarray]]
    stds: dict[str, list[np.ndarray]]
    stats: dict[str, SiteStats]
    growth: Growth
    bos_mean_norm: np.ndarray | None  # [L+1] mean over prompts of the BOS position's resid_pre norm
    appendix1: dict[str, list[Any]] = field(default_factory=dict)
    n_positions: int = 0  # positions that entered the statistics

    def to_json(self) -> dict[str, Any]:
        """The issue's JSON keys, except model / token_ids / tokens, which the CLI adds.

        ``sites.<site>.quantiles`` maps each percentile ("5", "25", "75", "95") to a per-layer list;
        ``per_position`` is [prompt][layer][position], BOS included.
        """
        sites = {}
        for site in NORM_SITES:
            entry = self.stats[site].to_json()
            entry["per_position"] = [array.tolist() for array in self.norms[site]]
            entry["per_position_std"] = [array.tolist() for array in self.stds[site]]
            sites[site] = entry
        return {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "include_bos": self.include_bos,
            "n_positions": self.n_positions,
            "sites": sites,
            "growth": self.growth.to_json(),
            "bos": {"mean_norm": None if self.bos_mean_norm is None else self.bos_mean_norm.tolist()},
            "appendix1": self.appendix1,
        }


# ----------------------------------------------------------------------------- growth fit


def _line_fit(log_norms: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line through log norms at x = 0..n-1: (slope, r^2, rms residual)."""
    x = np.arange(len(log_norms), dtype=np.float64)
    slope, intercept = np.polyfit(x, log_norms, 1)
    residual = log_norms - (slope * x + intercept)
    total = float(((log_norms - log_norms.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0
    return float(slope), r2, float(np.sqrt((residual**2).mean()))


def default_fit_window(mean_norms: Sequence[float]) -> tuple[int, int]:
    """The longest window whose log-norm is close to a straight line (rule in the module doc)."""
    y = np.log(np.asarray(mean_norms, dtype=np.float64))
    count = len(y)
    if count < MIN_FIT_POINTS:
        return 0, count - 1
    x = np.arange(count, dtype=np.float64)
    # Prefix sums give every window's regression in O(1): O(L^2) windows stay fast for deep models.
    sums = {name: np.concatenate(([0.0], np.cumsum(values)))
            for name, values in (("x", x), ("y", y), ("xx", x * x), ("xy", x * y), ("yy", y * y))}
    best: tuple[int, float, int] | None = None  # (length, -rms, start): larger is better
    for start in range(count):
        for stop in range(start + MIN_FIT_POINTS - 1, count):
            n = stop - start + 1
            sx, sy, sxx, sxy, syy = (sums[name][stop + 1] - sums[name][start] for name in ("x", "y", "xx", "xy", "yy"))
            cxx, cxy, cyy = sxx - sx * sx / n, sxy - sx * sy / n, syy - sy * sy / n
            rms = math.sqrt(max(cyy - cxy * cxy / cxx, 0.0) / n)
            if rms > FIT_TOLERANCE:
                continue
            key = (n, -rms, start)
            if best is None or key > best:
                best = key
    if best is None:
        return 0, count - 1
    length, _, start = best
    return start, start + length - 1


def fit_growth(mean_norms: Sequence[float], fit: tuple[int, int] | None = None) -> Growth:
    """Growth ratios of consecutive mean norms and exp(slope) of log mean norm over ``fit``.

    ``mean_norms`` is resid_pre_0..resid_pre_{L-1} then the final residual; ``fit`` is an
    inclusive [A, B] over those L+1 indices (None: the default window rule).
    """
    norms = np.asarray(mean_norms, dtype=np.float64)
    if norms.ndim != 1 or len(norms) < 2:
        raise HorizonError("the growth fit needs the mean norms of at least two layers")
    if not np.all(np.isfinite(norms)) or np.any(norms <= 0):
        raise HorizonError("the growth fit needs finite, positive mean norms")
    last = len(norms) - 1
    if fit is None:
        start, stop = default_fit_window(norms)
        chosen = "auto"
    else:
        start, stop = fit
        if not 0 <= start < stop <= last:
            raise HorizonError(
                f"--fit {start}:{stop} is out of range: it needs 0 <= A < B <= {last} "
                f"(layers 0..{last - 1}, and {last} for the final residual)"
            )
        chosen = "user"
    slope, r2, rms = _line_fit(np.log(norms[start : stop + 1]))
    ratios = (norms[1:] / norms[:-1]).tolist()
    return Growth(ratios=ratios, rate=math.exp(slope), fit_layers=(start, stop), r2=r2, rms_residual=rms,
                  chosen=chosen)


# ----------------------------------------------------------------------------- activations


def _norm_and_std(key: str, activation: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_model] -> [2, batch, pos]: L2 norm and population std over d_model.

    Population std (no Bessel correction) so that std == norm / sqrt(d_model) exactly when the
    vector's mean is zero (docs/SCIENCE.md s.2). Computed as the norm of the centred vector: torch's
    own std is ~20x slower on CPU and would dominate the hooks' cost.
    """
    values = activation.float()
    centred_norm = (values - values.mean(dim=-1, keepdim=True)).norm(dim=-1)
    return torch.stack((values.norm(dim=-1), centred_norm / math.sqrt(values.shape[-1]))).cpu()


def aggregate_site(rows: list[np.ndarray], include_bos: bool, has_bos: bool) -> tuple[SiteStats, np.ndarray]:
    """Pool the statistics positions of all prompts: per-prompt [2, rows, T] -> SiteStats."""
    skip = 1 if has_bos and not include_bos else 0
    pooled = np.concatenate([array[:, :, skip:] for array in rows], axis=2)  # [2, rows, N]
    if pooled.shape[2] == 0:
        raise HorizonError("no position to aggregate: every prompt is only a BOS token")
    norms, stds = pooled[0], pooled[1]
    percentiles = np.percentile(norms, QUANTILES, axis=1)
    stats = SiteStats(
        mean_norm=norms.mean(axis=1),
        median_norm=np.median(norms, axis=1),
        std=stds.mean(axis=1),
        quantiles={q: percentiles[index] for index, q in enumerate(QUANTILES)},
    )
    return stats, norms


def appendix1_check(
    resid_pre_mean: Sequence[float], attn_mean: Sequence[float], mlp_mean: Sequence[float]
) -> dict[str, list[Any]]:
    """Seed 002 appendix 1: ||attn_out_i|| + ||mlp_out_i|| >= (g_i - 1) ||resid_pre_i||, per layer.

    With mean norms it always holds (triangle inequality, position by position, then averaged),
    so a failure means the captured sites do not add up: a sanity check of the decomposition.
    For parallel attention + MLP the same bound holds (both outputs still sum to the update).
    """
    pre = np.asarray(resid_pre_mean, dtype=np.float64)
    lhs = np.asarray(attn_mean, dtype=np.float64) + np.asarray(mlp_mean, dtype=np.float64)
    growth = pre[1:] / pre[:-1]
    rhs = (growth - 1.0) * pre[:-1]
    # A relative slack for float rounding when the bound is nearly tight.
    holds = lhs >= rhs - 1e-6 * np.maximum(pre[1:], pre[:-1])
    return {"lhs": lhs.tolist(), "rhs": rhs.tolist(), "holds": holds.tolist()}


def analyse_norms(
    model: LoadedModel,
    token_ids: list[list[int]],
    has_bos: bool,
    include_bos: bool = False,
    fit: tuple[int, int] | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> NormsReport:
    """Per-position norms and stds of every residual site, their aggregates and the growth fit.

    ``progress`` is called with the number of prompts finished after each batch.
    """
    if not token_ids:
        raise HorizonError("no prompt to analyse")
    n_layers = model.n_layers
    # [2, rows, T] per prompt and site: norm and std.
    per_prompt: dict[str, list[np.ndarray]] = {site: [] for site in NORM_SITES}
    capture_sites = (*NORM_SITES, "final")
    for batch in batches(model, token_ids, has_bos, batch_size):
        capture = run_capture(model, batch.input_ids, capture_sites, reduce=_norm_and_std, stop_after_final=True)
        # Per-layer sites come back [L, 2, batch, pos]; final [2, batch, pos].
        layered = {site: capture[site].permute(2, 1, 0, 3) for site in NORM_SITES}  # [batch, 2, L, pos]
        final = capture["final"].permute(1, 0, 2).unsqueeze(2)  # [batch, 2, 1, pos]
        layered["resid_pre"] = torch.cat((layered["resid_pre"], final), dim=2)
        for row, length in enumerate(batch.lengths):
            for site in NORM_SITES:
                per_prompt[site].append(layered[site][row, :, :, :length].numpy().astype(np.float64))
        if progress is not None:
            progress(len(batch.lengths))

    stats: dict[str, SiteStats] = {}
    for site in NORM_SITES:
        stats[site], _ = aggregate_site(per_prompt[site], include_bos, has_bos)
    growth = fit_growth(stats["resid_pre"].mean_norm, fit)
    bos_mean = None
    if has_bos:
        bos_mean = np.mean([array[0, :, 0] for array in per_prompt["resid_pre"]], axis=0)
    skip = 1 if has_bos and not include_bos else 0
    return NormsReport(
        n_layers=n_layers,
        d_model=model.d_model,
        has_bos=has_bos,
        include_bos=include_bos,
        norms={site: [array[0] for array in arrays] for site, arrays in per_prompt.items()},
        stds={site: [array[1] for array in arrays] for site, arrays in per_prompt.items()},
        stats=stats,
        growth=growth,
        bos_mean_norm=bos_mean,
        appendix1=appendix1_check(stats["resid_pre"].mean_norm, stats["attn_out"].mean_norm,
                                  stats["mlp_out"].mean_norm),
        n_positions=sum(len(ids) - skip for ids in token_ids),
    )
