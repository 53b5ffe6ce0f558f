"""The attention analysis's cost model (core/memory/budget.py plans its batches with it)."""

from __future__ import annotations

from horizon.core.memory import budget


def cost_parts(dims: budget.ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
               held_tokens: int, position_chunk: int) -> dict[str, int]:
    parts = budget.forward_parts(dims, batch, n_tokens, logits=False)
    # the reducer, QUERY_CHUNK query rows at a time: the einsum's copies of the rows, the distance weights
    query_rows = min(n_tokens, budget.QUERY_CHUNK)
    parts["pattern statistics"] = (batch * dims.n_heads * query_rows * n_tokens * 4 * 3
                                   + 10 * query_rows * n_tokens * 4)
    return parts


# Every pattern reduced to five statistics, with and without BOS, per head: 12 more work per key and head.
COST = budget.Cost(parts=cost_parts, pattern_work_per_head=12, cpu_batch_tokens=1024)
