"""Residual-stream norm growth (docs/SCIENCE.md section 2; seeds 001 and 002).

One capture pass per batch records, for every position, the L2 norm and the standard deviation
over d_model of resid_pre_i (plus the final residual), resid_mid_i, resid_post_i, attn_out_i and
mlp_out_i; parallel attention + MLP has no resid_mid (both read resid_pre), reported as absent.
Only these two numbers per vector leave the hook (``run_capture``'s ``reduce``), so a
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
from collections.abc import Callable

import numpy as np
import torch
from horizon.core.analyses.norms.result import (  # the result type and its pure-numpy helpers (torch-free)
    FIT_TOLERANCE,
    MIN_FIT_POINTS,
    NORM_SITES,
    QUANTILES,
    Growth,
    NormsReport,
    SiteStats,
    _line_fit,
    absent_sites,
    aggregate_site,
    appendix1_check,
    default_fit_window,
    fit_growth,
)
from horizon.core.capture.capture import run_capture
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import batches

# ----------------------------------------------------------------------------- activations


def _norm_and_std(key: str, activation: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_model] -> [2, batch, pos]: L2 norm and population std over d_model.

    Population std (no Bessel correction) so that std == norm / sqrt(d_model) exactly when the
    vector's mean is zero (docs/SCIENCE.md s.2). Computed as the norm of the centred vector: torch's
    own std is ~20x slower on CPU and would dominate the hooks' cost.
    """
    values = activation.float()
    centred_norm = (values - values.mean(dim=-1, keepdim=True)).norm(dim=-1)
    # Stays on the device: the batch's numbers reach the host in one copy per site, not one per layer.
    return torch.stack((values.norm(dim=-1), centred_norm / math.sqrt(values.shape[-1])))


def analyse_norms(
    model: LoadedModel,
    token_ids: list[list[int]],
    has_bos: bool,
    include_bos: bool = False,
    fit: tuple[int, int] | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    position_chunk: int | None = None,
) -> NormsReport:
    """Per-position norms and stds of every residual site, their aggregates and the growth fit.

    ``progress`` is called with the number of prompts finished after each batch; ``position_chunk``
    runs longer batches that many positions at a time (core/capture/capture.py ``chunked_capture``).
    """
    if not token_ids:
        raise HorizonError("no prompt to analyse")
    n_layers = model.n_layers
    absent = absent_sites(model.parallel_attn_mlp)  # parallel blocks have no resid_mid
    sites = [site for site in NORM_SITES if site not in absent]
    # [2, rows, T] per prompt and site: norm and std.
    per_prompt: dict[str, list[np.ndarray]] = {site: [] for site in sites}
    capture_sites = (*sites, "final")
    for batch in batches(model, token_ids, has_bos, batch_size):
        # the reducer's [2, batch, pos]: positions on axis 2
        capture = run_capture(model, batch.input_ids, capture_sites, reduce=_norm_and_std, stop_after_final=True,
                              position_chunk=position_chunk, position_axis=2)
        # Per-layer sites come back [L, 2, batch, pos]; final [2, batch, pos].
        layered = {site: capture[site].cpu().permute(2, 1, 0, 3) for site in sites}  # [batch, 2, L, pos]
        final = capture["final"].cpu().permute(1, 0, 2).unsqueeze(2)  # [batch, 2, 1, pos]
        layered["resid_pre"] = torch.cat((layered["resid_pre"], final), dim=2)
        for row, length in enumerate(batch.lengths):
            for site in sites:
                per_prompt[site].append(layered[site][row, :, :, :length].numpy().astype(np.float64))
        if progress is not None:
            progress(len(batch.lengths))

    stats: dict[str, SiteStats] = {}
    for site in sites:
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
        absent=absent,
    )


__all__ = ["FIT_TOLERANCE", "MIN_FIT_POINTS", "NORM_SITES", "QUANTILES", "Growth", "NormsReport", "SiteStats",
           "_line_fit", "aggregate_site", "analyse_norms", "appendix1_check", "default_fit_window", "fit_growth"]
