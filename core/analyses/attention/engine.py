"""Attention distance per head (docs/SCIENCE.md section 5, seed 003's comment thread).

For head h of layer l and query t, with pattern A[t, s]: mean distance sum_s A[t, s] (t - s) and
the mass at distance 0, 1..5, 6..10 and > 10, averaged over query positions t >= 1 (real tokens
only), once as is and once with the BOS column removed and the row renormalised.

Streaming: each layer's pattern [batch, head, query, key] is reduced to per-head sums inside its
hook, so no pattern outlives its layer. Every query head is reported (with grouped-query attention
the bridge's pattern already has one row block per query head).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from horizon.core.analyses.attention.result import BUCKETS, AttentionReport  # the result type (torch-free)
from horizon.core.capture.capture import stop_forward
from horizon.core.errors import HorizonError
from horizon.core.memory.budget import QUERY_CHUNK
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import batches

PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"


# Query rows per step of ``pattern_statistics`` (QUERY_CHUNK, defined with the cost model that
# counts it): the distance weights and the einsum's working copy are [5, rows, T] and
# [batch, head, rows, T], not [5, T, T] and a copy of the whole pattern (at T = 2048 with 9 heads:
# ~80 MB instead of ~240 MB per layer, at about 1.2x the time).


def distance_weights(n_pos: int, device: torch.device | str = "cpu", queries: slice = slice(None)) -> torch.Tensor:
    """[5, query, key]: the distance t - s (0 above the diagonal), then one 0/1 mask per bucket.

    ``queries`` selects query rows (all by default); keys are always 0..n_pos-1.
    """
    query = torch.arange(n_pos, device=device)[queries, None]
    key = torch.arange(n_pos, device=device)[None, :]
    # Each weight depends on t - s alone: build the five rows for every distance once, then index
    # them (one gather instead of five comparisons over the whole [query, key] block).
    distance = torch.arange(1 - n_pos, n_pos, device=device)
    causal = distance >= 0
    table = torch.stack([
        distance.clamp_min(0),
        distance == 0,
        causal & (distance >= 1) & (distance <= 5),
        causal & (distance >= 6) & (distance <= 10),
        distance > 10,
    ]).float()
    return table[:, query - key + (n_pos - 1)]


def pattern_statistics(pattern: torch.Tensor, drop_bos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query statistics of a pattern [batch, head, query, key].

    Returns ``stats`` [5, batch, head, query] (mean distance, then the four bucket masses) and
    ``valid`` [batch, head, query]: with ``drop_bos`` the key column 0 is removed and each row
    renormalised; a row with no mass left off BOS is not valid (its statistics are 0). Computed
    ``QUERY_CHUNK`` query rows at a time (the same sums; memory bounded for long prompts).
    """
    pattern = pattern.float()
    n_queries, n_keys = pattern.shape[-2:]
    floor = torch.finfo(torch.float32).tiny
    stats_parts: list[torch.Tensor] = []
    valid_parts: list[torch.Tensor] = []
    for start in range(0, n_queries, QUERY_CHUNK):
        rows = slice(start, min(n_queries, start + QUERY_CHUNK))
        weights = distance_weights(n_keys, pattern.device, rows)
        chunk = pattern[..., rows, :]
        if not drop_bos:
            stats_parts.append(torch.einsum("bhts,kts->kbht", chunk, weights))
            continue
        rest = chunk[..., 1:]
        remaining = rest.sum(dim=-1)  # summed directly, not 1 - A[t, 0], to keep precision near 1
        valid = remaining > 0
        stats = torch.einsum("bhts,kts->kbht", rest, weights[..., 1:]) / remaining.clamp_min(floor)
        stats_parts.append(stats * valid)
        valid_parts.append(valid)
    stats = torch.cat(stats_parts, dim=-1)
    if not drop_bos:
        return stats, torch.ones(pattern.shape[:-1], dtype=torch.bool, device=pattern.device)
    return stats, torch.cat(valid_parts, dim=-1)


def sliding_windows(model: LoadedModel) -> list[int | None]:
    """Per layer: the sliding-window size of a local-attention layer, None for a global one."""
    config = model.hf_model.config
    window = getattr(config, "sliding_window", None) or getattr(config, "window_size", None)
    kinds = getattr(config, "layer_types", None)
    if kinds is None and getattr(config, "attention_layers", None) is not None:  # GPT-Neo
        kinds = ["sliding_attention" if kind == "local" else "full_attention" for kind in config.attention_layers]
    if kinds is None:
        kinds = ["sliding_attention" if window else "full_attention"] * model.n_layers
    return [int(window) if window and "sliding" in str(kind) else None for kind in kinds][: model.n_layers]


def attention_distance(
    model: LoadedModel,
    token_ids: list[list[int]],
    has_bos: bool,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> AttentionReport:
    """Attention-distance statistics over all query positions t >= 1 of the prompts.

    Without a BOS token there is no BOS column to remove, so the ``_no_bos`` arrays equal the
    plain ones. ``progress(n)`` is called with the number of prompts just done.
    """
    sums = _prompt_sums(model, token_ids, has_bos, batch_size, progress)
    return _report(model, token_ids, has_bos, *(part.sum(dim=0) for part in sums))


def attention_distance_per_prompt(
    model: LoadedModel, token_ids: list[list[int]], has_bos: bool, batch_size: int = 8
) -> list[AttentionReport]:
    """``attention_distance`` of each prompt on its own (in order), from padded batches of ``batch_size``.

    Each prompt's statistics are its own rows of the batch's reducer sums; padded queries have
    weight 0 and padded keys come after every real query (causal), so padding changes no number.
    """
    sums = _prompt_sums(model, token_ids, has_bos, batch_size, None)
    return [_report(model, [ids], has_bos, *(part[row] for part in sums)) for row, ids in enumerate(token_ids)]


def _prompt_sums(
    model: LoadedModel, token_ids: list[list[int]], has_bos: bool, batch_size: int,
    progress: Callable[[int], None] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt: the query-weighted statistic sums [P, L, 5, H] (plain and without BOS), the
    without-BOS query counts [P, L, H] and the number of queries [P], all on the device."""
    n_layers, n_heads = model.n_layers, model.n_heads
    device = model.device
    sums = torch.zeros(len(token_ids), n_layers, 5, n_heads, dtype=torch.float64, device=device)
    sums_no_bos = torch.zeros_like(sums)
    counts_no_bos = torch.zeros(len(token_ids), n_layers, n_heads, dtype=torch.float64, device=device)
    n_queries = torch.zeros(len(token_ids), dtype=torch.float64, device=device)
    fired: list[bool] = []  # per batch: which layers' pattern hooks ran
    first = 0
    for batch in batches(model, token_ids, has_bos, batch_size):
        queries = batch.mask.clone()
        queries[:, 0] = False  # t >= 1, real tokens only
        query_weight = queries.to(torch.float64)
        rows = slice(first, first + len(batch.token_ids))
        first = rows.stop

        def reducer(layer: int, query_weight: torch.Tensor = query_weight,
                    rows: slice = rows) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            def hook(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
                if pattern.shape[1] != n_heads:
                    raise RuntimeError(f"layer {layer} pattern has {pattern.shape[1]} heads, expected {n_heads}")
                stats, _ = pattern_statistics(pattern.detach())
                sums[rows, layer] += torch.einsum("kbht,bt->bkh", stats.double(), query_weight)
                if has_bos:
                    stats, valid = pattern_statistics(pattern.detach(), drop_bos=True)
                    sums_no_bos[rows, layer] += torch.einsum("kbht,bt->bkh", stats.double(), query_weight)
                    counts_no_bos[rows, layer] += torch.einsum("bht,bt->bh", valid.double(), query_weight)
                fired[layer] = True
                return pattern

            return hook

        fired[:] = [False] * n_layers
        hooks = [(PATTERN_HOOK.format(layer=layer), reducer(layer)) for layer in range(n_layers)]
        # Nothing after the last layer's pattern is needed: end the pass there.
        hooks.append((PATTERN_HOOK.format(layer=n_layers - 1), stop_forward))
        with torch.inference_mode():
            model.bridge.run_with_hooks(batch.input_ids, fwd_hooks=hooks, return_type=None)
        if not all(fired):
            raise RuntimeError(f"attention pattern hooks did not fire on {model.architecture}")
        n_queries[rows] = query_weight.sum(dim=1)
        if progress is not None:
            progress(len(batch.token_ids))
    return sums, sums_no_bos, counts_no_bos, n_queries


def _report(model: LoadedModel, token_ids: list[list[int]], has_bos: bool, sums: torch.Tensor,
            sums_no_bos: torch.Tensor, counts_no_bos: torch.Tensor, queries: torch.Tensor) -> AttentionReport:
    """The report of summed statistics: sums [L, 5, H], counts [L, H], the number of queries."""
    n_layers, n_heads = model.n_layers, model.n_heads
    n_queries = round(float(queries))
    if n_queries == 0:
        raise HorizonError("the prompts hold no query position after the first token")
    plain = (sums / n_queries).cpu().numpy()
    if has_bos:
        no_bos = (sums_no_bos / counts_no_bos.clamp_min(1)[:, None, :]).cpu().numpy()
        # A head whose every query put all its mass on BOS has no renormalised statistics.
        no_bos = np.where((counts_no_bos == 0).cpu().numpy()[:, None, :], np.nan, no_bos)
    else:
        no_bos = plain.copy()
    return AttentionReport(
        model=model.spec,
        token_ids=token_ids,
        n_layers=n_layers,
        n_heads=n_heads,
        has_bos=has_bos,
        n_queries=n_queries,
        mean_distance=plain[:, 0],
        mean_distance_no_bos=no_bos[:, 0],
        mass={bucket: plain[:, 1 + k] for k, bucket in enumerate(BUCKETS)},
        mass_no_bos={bucket: no_bos[:, 1 + k] for k, bucket in enumerate(BUCKETS)},
        windows=sliding_windows(model),
    )


__all__ = ["BUCKETS", "AttentionReport", "attention_distance", "attention_distance_per_prompt"]
