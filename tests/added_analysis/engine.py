"""The peak engine: one hooked forward pass per batch (core/capture/capture.py), each resid_pre reduced to
its per-position norms inside the hook, then the largest over each prompt's own positions."""

from __future__ import annotations

import numpy as np
import torch
from horizon.core.capture.capture import run_capture
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import batches

from tests.added_analysis import SITE, PeakReport


def _norms(key: str, activation: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_model] -> [batch, pos]: the L2 norm of each position's residual."""
    return activation.float().norm(dim=-1)


def peak_norms(model: LoadedModel, token_ids: list[list[int]], has_bos: bool, batch_size: int = 8) -> PeakReport:
    skip = 1 if has_bos else 0
    if not token_ids or any(len(ids) <= skip for ids in token_ids):
        raise HorizonError("peak needs at least one token after BOS in every prompt")
    peaks: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    for batch in batches(model, token_ids, has_bos, batch_size):
        capture = run_capture(model, batch.input_ids, [SITE], reduce=_norms, stop_after_final=True)
        norms = capture[SITE].cpu().double()  # [layers, batch, pos]
        for row, length in enumerate(batch.lengths):  # right padding: a prompt's positions are 0..length-1
            value, index = norms[:, row, skip:length].max(dim=1)
            peaks.append(value.numpy())
            positions.append(index.numpy() + skip)
    return PeakReport(n_layers=model.n_layers, has_bos=has_bos, peak=np.stack(peaks), position=np.stack(positions))
