"""Context truncation (docs/SCIENCE.md section 4, seed 003): do early layers only use recent tokens?

For a length c and a position t with t - c >= 1, the truncated prompt is [BOS] + x_{t-c+1..t}.
Its last-position residual is compared with the full-prompt residual at t, at resid_pre_0..
resid_pre_{L-1} and the final residual (L+1 rows), by mean-centred and by raw cosine.

Cost: all truncated prompts of one length have the same length c + 1, so they go through the
model as plain unpadded batches; only the last position of each is kept, inside the hook, and
the pass is stopped at the final norm's input (the unembedding is never computed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from horizon.core.analyses.truncate.categories import token_category
from horizon.core.analyses.truncate.result import (  # the result type and its summaries (torch-free)
    Outlier,
    TokenRecord,
    TruncationReport,
    _median,
    find_outliers,
    summarise,
)
from horizon.core.capture.capture import run_capture
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import TokenBatch, batches, decode_tokens
from horizon.core.options import DEFAULT_LENGTHS

# Full prompts per forward when the full-context residuals are taken, at most; fewer when the
# prompts are long, so one batch's residuals [L+1, batch, pos, d_model] stay under FULL_BATCH_BYTES.
FULL_BATCH = 8
FULL_BATCH_BYTES = 256 * 2**20
# Keep the full-context residuals between the mean pass and the comparison pass below this size;
# above it they are recomputed (one extra forward over the full prompts) instead of held.
KEEP_FULL_BYTES = 512 * 2**20


def layer_labels(n_layers: int) -> list[str]:
    """Names of the L+1 rows: resid_pre_0..resid_pre_{L-1}, then the final residual."""
    return [f"resid_pre_{layer}" for layer in range(n_layers)] + ["final"]


def _masked_sum(activation: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over batch and positions of the positions ``mask`` keeps, in float64."""
    return (activation.double() * mask).sum(dim=(0, 1))


def residual_rows(
    model: LoadedModel, input_ids: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """The L+1 rows (resid_pre_0..resid_pre_{L-1}, final) of one forward that stops at the final norm.

    ``reduce`` shrinks each [batch, pos, d_model] activation inside its hook; the rows are stacked
    on a new leading dimension.
    """
    shrink = None if reduce is None else (lambda site, activation: reduce(activation))
    capture = run_capture(model, input_ids, ("resid_pre", "final"), reduce=shrink, stop_after_final=True)
    return capture.resid_pre_and_final()


def full_residuals(model: LoadedModel, batch: TokenBatch) -> torch.Tensor:
    """Residuals of one right-padded batch at every position: [L+1, batch, pos, d_model]."""
    return residual_rows(model, batch.input_ids, lambda activation: activation.float())


def last_position_residuals(model: LoadedModel, input_ids: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Residuals at the last position of equal-length prompts [N, n]: [N, L+1, d_model]."""
    chunks = [
        residual_rows(model, input_ids[start : start + batch_size].to(model.device), lambda a: a[:, -1].float())
        for start in range(0, input_ids.shape[0], batch_size)
    ]
    return torch.cat(chunks, dim=1).transpose(0, 1)


def _sum_non_bos(residuals: torch.Tensor, batch: TokenBatch) -> tuple[torch.Tensor, int]:
    mask = batch.stat_mask().to(residuals.device)
    weights = mask.double()[:, :, None]
    # One row at a time: a float64 copy of every row at once would double the batch's residuals.
    summed = torch.stack([(row.double() * weights).sum(dim=(0, 1)) for row in residuals])
    return summed, int(mask.sum())


def mean_residual(model: LoadedModel, token_ids: list[list[int]], has_bos: bool, batch_size: int = 8) -> torch.Tensor:
    """mu_l: the mean full-context residual over all non-BOS, non-padding positions, [L+1, d_model].

    Reduced inside the hooks (a sum per row), so a corpus of long prompts never holds its residuals.
    """
    total = torch.zeros(model.n_layers + 1, model.d_model, dtype=torch.float64, device=model.device)
    count = 0
    for batch in batches(model, token_ids, has_bos, batch_size):
        mask = batch.stat_mask()[:, :, None].to(model.device)
        total += residual_rows(model, batch.input_ids, functools.partial(_masked_sum, mask=mask))
        count += int(mask.sum())
    if count == 0:
        raise HorizonError("the prompts hold no token after BOS to average over")
    return (total / count).float()


# ----------------------------------------------------------------------------- windows


def n_truncations(token_ids: list[list[int]], lengths: Sequence[int]) -> int:
    """How many truncated prompts the analysis runs (positions t with t - c >= 1, per length)."""
    return sum(max(0, len(ids) - 1 - c) for ids in token_ids for c in lengths)


def truncation_windows(token_ids: list[list[int]], length: int) -> tuple[list[int], list[int], torch.Tensor]:
    """(prompt index, position t, [BOS] + x_{t-c+1..t}) for every t with t - c >= 1, as [N, c+1]."""
    prompt_index: list[int] = []
    positions: list[int] = []
    windows: list[list[int]] = []
    for index, ids in enumerate(token_ids):
        for t in range(length + 1, len(ids)):
            prompt_index.append(index)
            positions.append(t)
            windows.append([ids[0], *ids[t - length + 1 : t + 1]])
    tensor = torch.tensor(windows, dtype=torch.long) if windows else torch.empty(0, length + 1, dtype=torch.long)
    return prompt_index, positions, tensor


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last dimension."""
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


# ----------------------------------------------------------------------------- engine


def _compare_windows(
    model: LoadedModel, windows: torch.Tensor, residuals: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
    mu: torch.Tensor, batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred and raw cosines [N, L+1] of truncated prompts against the full residuals at (rows, cols).

    ``batch_size`` truncated prompts per forward; each batch is compared as soon as it is run, so
    only one batch's residuals (truncated, full, centred) exist at a time, on the device.
    """
    cos_parts: list[torch.Tensor] = []
    raw_parts: list[torch.Tensor] = []
    for start in range(0, windows.shape[0], batch_size):
        part = slice(start, start + batch_size)
        truncated = last_position_residuals(model, windows[part], batch_size)  # [n, L+1, d]
        full = residuals[:, rows[part], cols[part]].transpose(0, 1)  # [n, L+1, d]
        cos_parts.append(cosine(truncated - mu, full - mu))
        raw_parts.append(cosine(truncated, full))
    return torch.cat(cos_parts), torch.cat(raw_parts)



def _full_batches(
    model: LoadedModel, token_ids: list[list[int]], mu: torch.Tensor | None, full_batch: int = FULL_BATCH
) -> tuple[torch.Tensor, Callable[[], Iterator[tuple[int, TokenBatch, torch.Tensor]]]]:
    """mu (computed here when not given) and an iterator over (first prompt, batch, residuals)."""
    row_bytes = (model.n_layers + 1) * model.d_model * 4
    longest = max(len(ids) for ids in token_ids)
    prompt_batches = batches(model, token_ids, True, max(1, min(full_batch, FULL_BATCH_BYTES // (longest * row_bytes))))
    starts = np.cumsum([0] + [len(batch.token_ids) for batch in prompt_batches])[:-1].tolist()
    keep = sum(batch.input_ids.numel() for batch in prompt_batches) * row_bytes <= KEEP_FULL_BYTES
    kept: list[torch.Tensor] = []
    if mu is None:
        total = torch.zeros(model.n_layers + 1, model.d_model, dtype=torch.float64, device=model.device)
        count = 0
        for batch in prompt_batches:
            residuals = full_residuals(model, batch)
            summed, n = _sum_non_bos(residuals, batch)
            total += summed
            count += n
            if keep:
                kept.append(residuals)
        if count == 0:
            raise HorizonError("the prompts hold no token after BOS to average over")
        mu = (total / count).float()

    def iterate() -> Iterator[tuple[int, TokenBatch, torch.Tensor]]:
        for index, (start, batch) in enumerate(zip(starts, prompt_batches, strict=True)):
            yield start, batch, kept[index] if kept else full_residuals(model, batch)

    return mu.to(model.device), iterate


def analyse_truncation(
    model: LoadedModel,
    token_ids: list[list[int]],
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    batch_size: int = 32,
    n_outliers: int = 20,
    mu: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
    outlier_layer: int | None = None,
    full_batch_size: int = FULL_BATCH,
) -> TruncationReport:
    """The truncation analysis of prompts whose first token is BOS (the truncated prompts keep it).

    ``mu`` [L+1, d_model] is the centring mean (see ``mean_residual``); by default it is taken
    over these prompts. ``progress(n)`` is called with the number of truncated prompts just done.
    ``batch_size`` truncated prompts go through the model at once; ``full_batch_size`` full prompts
    (fewer when they are long) when their full-context residuals are taken.
    """
    lengths = list(dict.fromkeys(int(c) for c in lengths))
    if not lengths or min(lengths) < 1:
        raise HorizonError("truncation lengths must be at least 1")
    if batch_size < 1:
        raise HorizonError("--batch-size must be at least 1")
    if outlier_layer is not None and not 0 <= outlier_layer <= model.n_layers:
        raise HorizonError(f"--outlier-layer must be in 0..{model.n_layers} (L = the final residual)")
    if not token_ids:
        raise HorizonError("no prompts to analyse")
    if mu is not None and tuple(mu.shape) != (model.n_layers + 1, model.d_model):
        raise ValueError(f"mu must be [{model.n_layers + 1}, {model.d_model}], got {tuple(mu.shape)}")
    mu, full_iter = _full_batches(model, token_ids, mu, full_batch_size)

    prompt_parts: list[np.ndarray] = []
    pos_parts: list[np.ndarray] = []
    length_parts: list[np.ndarray] = []
    cos_parts: list[np.ndarray] = []
    raw_parts: list[np.ndarray] = []
    for first, batch, residuals in full_iter():
        for c in lengths:
            local_prompt, positions, windows = truncation_windows(batch.token_ids, c)
            if not positions:
                continue
            rows = torch.tensor(local_prompt, device=residuals.device)
            cols = torch.tensor(positions, device=residuals.device)
            cos, raw = _compare_windows(model, windows, residuals, rows, cols, mu, batch_size)
            # One host copy per prompt batch and length, whatever the number of window batches.
            cos_parts.append(cos.cpu().numpy())
            raw_parts.append(raw.cpu().numpy())
            prompt_parts.append(np.asarray(local_prompt, dtype=np.int64) + first)
            pos_parts.append(np.asarray(positions, dtype=np.int64))
            length_parts.append(np.full(len(positions), c, dtype=np.int64))
            if progress is not None:
                progress(len(positions))

    n_rows = model.n_layers + 1
    record_prompt = np.concatenate(prompt_parts) if prompt_parts else np.zeros(0, dtype=np.int64)
    record_pos = np.concatenate(pos_parts) if pos_parts else np.zeros(0, dtype=np.int64)
    decoded = [decode_tokens(model, ids) for ids in token_ids]
    tokens = [decoded[p][t] for p, t in zip(record_prompt.tolist(), record_pos.tolist(), strict=True)]
    report = TruncationReport(
        model=model.spec,
        token_ids=token_ids,
        lengths=lengths,
        n_layers=model.n_layers,
        record_prompt=record_prompt,
        record_pos=record_pos,
        record_length=np.concatenate(length_parts) if length_parts else np.zeros(0, dtype=np.int64),
        record_token=tokens,
        record_category=[token_category(text) for text in tokens],
        cos=np.concatenate(cos_parts) if cos_parts else np.zeros((0, n_rows), dtype=np.float32),
        cos_raw=np.concatenate(raw_parts) if raw_parts else np.zeros((0, n_rows), dtype=np.float32),
    )
    summarise(report)
    report.outliers = find_outliers(report, decoded, n_outliers, outlier_layer)
    return report


__all__ = ["DEFAULT_LENGTHS", "Outlier", "TokenRecord", "TruncationReport", "_median", "analyse_truncation",
           "find_outliers", "summarise"]
