"""Context truncation (docs/SCIENCE.md section 4, seed 003): do early layers only use recent tokens?

For a length c and a position t with t - c >= 1, the truncated prompt is [BOS] + x_{t-c+1..t}.
Its last-position residual is compared with the full-prompt residual at t, at resid_pre_0..
resid_pre_{L-1} and the final residual (L+1 rows), by mean-centred and by raw cosine.

Cost: all truncated prompts of one length have the same length c + 1, so they go through the
model as plain unpadded batches; only the last position of each is kept, inside the hook, and
the pass is stopped at the final norm's input (the unembedding is never computed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from horizon.core.capture import run_capture
from horizon.core.categories import CATEGORIES, token_category
from horizon.core.errors import HorizonError
from horizon.core.loader import LoadedModel
from horizon.core.outliers import rank_outliers, token_context
from horizon.core.prompts import TokenBatch, batches, decode_tokens

DEFAULT_LENGTHS = (1, 5, 10)
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
    summed = (residuals.double() * mask[None, :, :, None]).sum(dim=(1, 2))
    return summed, int(mask.sum())


def mean_residual(model: LoadedModel, token_ids: list[list[int]], has_bos: bool, batch_size: int = 8) -> torch.Tensor:
    """mu_l: the mean full-context residual over all non-BOS, non-padding positions, [L+1, d_model].

    Reduced inside the hooks (a sum per row), so a corpus of long prompts never holds its residuals.
    """
    total = torch.zeros(model.n_layers + 1, model.d_model, dtype=torch.float64, device=model.device)
    count = 0
    for batch in batches(model, token_ids, has_bos, batch_size):
        mask = batch.stat_mask()[:, :, None].to(model.device)
        total += residual_rows(model, batch.input_ids, lambda a, mask=mask: (a.double() * mask).sum(dim=(0, 1)))
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


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class TokenRecord:
    """One (token, truncation length): its cosines at the L+1 rows."""

    prompt: int
    pos: int
    token: str
    category: str
    length: int
    cos: list[float]
    cos_raw: list[float]


@dataclass(frozen=True)
class Outlier:
    """A low-cosine token with its context (before/after are decoded text around it)."""

    prompt: int
    pos: int
    token: str
    category: str
    length: int
    layer: int  # row 0..L (L = final residual)
    cos: float
    context_before: str
    context_after: str


@dataclass
class TruncationReport:
    """All records plus the summaries of docs/SCIENCE.md section 4.

    Records are held as arrays (row k of ``cos`` belongs to ``record_prompt[k]``, ...);
    ``per_token`` builds the list of TokenRecord on first use.
    """

    model: str
    token_ids: list[list[int]]
    lengths: list[int]
    n_layers: int
    record_prompt: np.ndarray  # [N] int
    record_pos: np.ndarray  # [N] int
    record_length: np.ndarray  # [N] int
    record_token: list[str]
    record_category: list[str]
    cos: np.ndarray  # [N, L+1] mean-centred
    cos_raw: np.ndarray  # [N, L+1]
    median_cos: dict[int, list[float]] = field(default_factory=dict)
    quartiles_cos: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)
    median_cos_raw: dict[int, list[float]] = field(default_factory=dict)
    categories: dict[int, dict[str, Any]] = field(default_factory=dict)
    outliers: list[Outlier] = field(default_factory=list)

    @cached_property
    def per_token(self) -> list[TokenRecord]:
        return [
            TokenRecord(
                int(self.record_prompt[k]), int(self.record_pos[k]), self.record_token[k], self.record_category[k],
                int(self.record_length[k]), self.cos[k].tolist(), self.cos_raw[k].tolist(),
            )
            for k in range(len(self.record_token))
        ]

    def to_json(self) -> dict[str, Any]:
        """The issue's JSON keys except ``model`` and ``token_ids`` (the command adds those)."""
        return {
            "lengths": list(self.lengths),
            "n_layers": self.n_layers,
            "median_cos": {str(c): v for c, v in self.median_cos.items()},
            "quartiles_cos": {str(c): [q25, q75] for c, (q25, q75) in self.quartiles_cos.items()},
            "median_cos_raw": {str(c): v for c, v in self.median_cos_raw.items()},
            "categories": {str(c): v for c, v in self.categories.items()},
            "per_token": [
                {"prompt": r.prompt, "pos": r.pos, "token": r.token, "category": r.category, "length": r.length,
                 "cos": r.cos, "cos_raw": r.cos_raw}
                for r in self.per_token
            ],
            "outliers": [vars(outlier).copy() for outlier in self.outliers],
        }


def _median(values: np.ndarray, n_rows: int) -> list[float]:
    if len(values) == 0:
        return [float("nan")] * n_rows
    return np.median(values, axis=0).astype(float).tolist()


def summarise(report: TruncationReport) -> None:
    """Fill medians, quartiles and per-category medians (per length, per row) in place."""
    n_rows = report.n_layers + 1
    category_array = np.array(report.record_category, dtype=object)
    for c in report.lengths:
        selected = report.record_length == c
        cos, cos_raw = report.cos[selected], report.cos_raw[selected]
        report.median_cos[c] = _median(cos, n_rows)
        report.median_cos_raw[c] = _median(cos_raw, n_rows)
        if len(cos):
            q25, q75 = np.quantile(cos, [0.25, 0.75], axis=0).astype(float).tolist()
        else:
            q25 = q75 = [float("nan")] * n_rows
        report.quartiles_cos[c] = (q25, q75)
        per_category: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for category in CATEGORIES:
            in_category = category_array[selected] == category
            per_category[category] = _median(cos[in_category], n_rows)
            counts[category] = int(in_category.sum())
        per_category["count"] = counts
        report.categories[c] = per_category


def find_outliers(
    report: TruncationReport, tokens: Sequence[Sequence[str]], n_outliers: int, outlier_layer: int | None = None,
    has_bos: bool = True,
) -> list[Outlier]:
    """The ``n_outliers`` records with the lowest outlier score (core/outliers.py: ``rank_outliers``).

    A record's score is its lowest cosine over the L+1 rows (reported with that row), or its
    cosine at ``outlier_layer`` when given: one entry per (token, length), never one per row.
    ``tokens`` holds each prompt's token texts; the context is ``token_context``'s.
    """
    records, rows, scores = rank_outliers(report.cos, max(n_outliers, 0), outlier_layer)
    outliers = []
    for k, row, score in zip(records.tolist(), rows.tolist(), scores.tolist(), strict=True):
        prompt, pos = int(report.record_prompt[k]), int(report.record_pos[k])
        before, _, after = token_context(tokens[prompt], pos, has_bos)
        outliers.append(Outlier(prompt, pos, report.record_token[k], report.record_category[k],
                                int(report.record_length[k]), int(row), float(score), before, after))
    return outliers


# ----------------------------------------------------------------------------- engine


def _full_batches(
    model: LoadedModel, token_ids: list[list[int]], mu: torch.Tensor | None
) -> tuple[torch.Tensor, Callable[[], Iterator[tuple[int, TokenBatch, torch.Tensor]]]]:
    """mu (computed here when not given) and an iterator over (first prompt, batch, residuals)."""
    row_bytes = (model.n_layers + 1) * model.d_model * 4
    longest = max(len(ids) for ids in token_ids)
    prompt_batches = batches(model, token_ids, True, max(1, min(FULL_BATCH, FULL_BATCH_BYTES // (longest * row_bytes))))
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
) -> TruncationReport:
    """The truncation analysis of prompts whose first token is BOS (the truncated prompts keep it).

    ``mu`` [L+1, d_model] is the centring mean (see ``mean_residual``); by default it is taken
    over these prompts. ``progress(n)`` is called with the number of truncated prompts just done.
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
    mu, full_iter = _full_batches(model, token_ids, mu)

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
            truncated = last_position_residuals(model, windows, batch_size)  # [N, L+1, d]
            rows = torch.tensor(local_prompt, device=residuals.device)
            cols = torch.tensor(positions, device=residuals.device)
            full = residuals[:, rows, cols].transpose(0, 1)  # [N, L+1, d]
            cos_parts.append(cosine(truncated - mu, full - mu).cpu().numpy())
            raw_parts.append(cosine(truncated, full).cpu().numpy())
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
