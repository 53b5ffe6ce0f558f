"""The norms analysis's cost model (core/memory/budget.py plans its batches with it)."""

from __future__ import annotations

from horizon.core.memory import budget


def cost_parts(dims: budget.ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
               held_tokens: int, position_chunk: int) -> dict[str, int]:
    parts = budget.forward_parts(dims, batch, n_tokens, logits=False)
    # per-position numbers, float32 then float64
    parts["norms"] = 5 * (dims.n_layers + 1) * 2 * batch * n_tokens * 8 * 2
    return parts


# Long prompts on a CPU run in position chunks; 1024 padded tokens per auto CPU batch (core/sweep/worker.py).
COST = budget.Cost(parts=cost_parts, speed_chunks=True, cpu_batch_tokens=1024)
