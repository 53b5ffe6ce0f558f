"""The truncate analysis's cost model (core/memory/budget.py plans its batches and windows with it) and
its corpus-wide input: the corpus mean residual it centres with (core/analyses/base.py ``CorpusInput``)."""

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
    rows_bytes = (dims.n_layers + 1) * dims.d_model * 4
    parts = budget.forward_parts(dims, batch, n_tokens, logits=False)
    # the batch's residuals at every position; stacking them doubles them only after the pass's
    # own activations are freed, so the forward's parts cover the copy
    parts["full residuals"] = batch * n_tokens * rows_bytes
    # each pass of truncated prompts: its last positions, the full ones gathered, centred copies
    parts["truncated windows"] = windows * (rows_bytes * 6 + 16 * dims.d_model * 4)
    return parts


def truncation_windows(dims: budget.ModelDims, batch: int, n_tokens: int, limit: budget.Budget) -> int:
    """Truncated prompts per pass: as many as fit, at most MAX_WINDOWS."""
    return budget.largest(lambda n: budget.fits("truncate", dims, batch, n_tokens, limit, windows=n), 1,
                          budget.MAX_WINDOWS)


def cost_tiles(dims: budget.ModelDims, batch: int, n_tokens: int, limit: budget.Budget, tiling: dict[str, int],
               requested: int | None) -> dict[str, int]:
    """--batch-size counts truncated prompts per pass (the full prompts' batch is always chosen)."""
    if requested is not None:  # no more truncated prompts per pass than the batch has positions
        requested = min(requested, max(1, batch * n_tokens))
    if requested is not None and not budget.fits("truncate", dims, batch, n_tokens, limit, windows=requested):
        raise budget.too_big("truncate", dims, n_tokens, limit, batch, windows=requested)
    return {"windows": requested or truncation_windows(dims, batch, n_tokens, limit)}


def relative_work(settings: Any, n_layers: int) -> float:
    """One short forward per position and kept length."""
    return 1.0 + 0.5 * len(settings.lengths)


COST = budget.Cost(parts=cost_parts, batch_requested=False, tiles=cost_tiles, relative_work=relative_work)


def corpus_mean_residual(model: LoadedModel, token_ids: list[list[int]], bos: bool) -> np.ndarray:
    """The corpus-wide mean residual [L+1, d_model] truncation centres with (docs/SCIENCE.md section 4)."""
    from horizon.core.analyses.truncate.engine import mean_residual

    return mean_residual(model, token_ids, bos).float().cpu().numpy()


def mu_on_device(mu: np.ndarray, model: LoadedModel, settings: SweepSettings) -> Any:
    import torch

    return torch.as_tensor(mu, dtype=torch.float32, device=model.device)


MU = CorpusInput(file="truncation_mu.npy", checksum_key="_mu_sha256", dtype=np.float32,
                 shape=lambda n_layers, d_model: (n_layers + 1, d_model), description="the corpus mean residual",
                 compute=corpus_mean_residual, receive=mu_on_device, kept_after_sweep=True)
