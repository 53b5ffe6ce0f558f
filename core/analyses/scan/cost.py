"""The scan's cost model (core/memory/budget.py plans its batches and staircase rows with it) and its
corpus-wide input: mean ablation's means, computed once per sweep (core/analyses/base.py ``CorpusInput``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from horizon.core.analyses.base import CorpusInput
from horizon.core.memory import budget

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel
    from horizon.core.sweep.sweep_settings import SweepSettings


def cost_parts(dims: budget.ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
               held_tokens: int, position_chunk: int) -> dict[str, int]:
    """The clean run, then staircase passes of ``rows`` configs with a tiled readout (in position chunks
    when ``position_chunk`` is shorter than the prompt)."""
    if 0 < position_chunk < n_tokens:
        return budget.chunked_scan_parts(dims, batch, n_tokens, rows, vocab_tile, position_chunk)
    return budget.staircase_parts(dims, batch, n_tokens, rows, vocab_tile, held_tokens, whole_logits=False)


def staircase_rows(dims: budget.ModelDims, batch: int, n_tokens: int, limit: budget.Budget, held_tokens: int = 0,
                   most: int | None = None, position_chunk: int = 0) -> int:
    """Configs per staircase pass: as many as fit, at least 1."""
    most = most or 2 * dims.n_layers + 2
    width = budget.readout_tile(batch, min(n_tokens, position_chunk or n_tokens))
    return budget.largest(lambda rows: budget.fits("scan", dims, batch, n_tokens, limit, rows=rows, vocab_tile=width,
                                                   held_tokens=held_tokens, position_chunk=position_chunk),
                          1, most)


def cost_tiles(dims: budget.ModelDims, batch: int, n_tokens: int, limit: budget.Budget, tiling: dict[str, int],
               requested: int | None) -> dict[str, int]:
    chunk = tiling.get("position_chunk", 0)
    return {"vocab_tile": budget.readout_tile(batch, chunk or n_tokens),
            "rows": staircase_rows(dims, batch, n_tokens, limit, tiling.get("held_tokens", 0), position_chunk=chunk)}


def relative_work(settings: Any, n_layers: int) -> float:
    """About half a forward plus a readout per horizon row."""
    rows = len(settings.ks or range(n_layers + 1)) * (len(settings.start_layers) + (n_layers + 1) * settings.by_layer)
    return float(1.0 + 0.7 * rows)  # settings is untyped


# 256 padded tokens per auto CPU batch (core/sweep/worker.py: its clean run and float64 prefix sums leave the caches).
COST = budget.Cost(parts=cost_parts, keeps_clean_runs=True, memory_chunks=True, speed_chunks=True, tiles=cost_tiles,
                   relative_work=relative_work, cpu_batch_tokens=256)


def corpus_means(model: LoadedModel, token_ids: list[list[int]], bos: bool) -> np.ndarray:
    """Mean ablation's corpus-wide means of every sublayer output [2L+1, d_model] (float64)."""
    from horizon.core.patching.horizon import corpus_ablation_means

    return corpus_ablation_means(model, token_ids, bos).mean.cpu().numpy()


def means_on_device(means: np.ndarray, model: LoadedModel, settings: SweepSettings) -> Any:
    import torch
    from horizon.core.patching.horizon import AblationMeans

    return AblationMeans(torch.as_tensor(means, dtype=torch.float64, device=model.device), has_bos=settings.bos)


MEANS = CorpusInput(file="ablation_means.npy", checksum_key="_means_sha256", dtype=np.float64,
                    shape=lambda n_layers, d_model: (2 * n_layers + 1, d_model), description="the mean-ablation means",
                    compute=corpus_means, receive=means_on_device, needed=lambda settings: settings.ablation == "mean")
