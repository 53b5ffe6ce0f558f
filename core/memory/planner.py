"""The planner: the largest batch and tiles that fit a budget (``choose_batch_size``, ``plan``), or a refusal.

Batch sizes and tiles are the largest whose predicted peak (core/memory/cost_model.py) fits the budget;
a prompt too long for it may go in position chunks (``position_chunk``), and a long prompt on a CPU
does for speed (``speed_chunk``). A run that cannot fit even at batch size 1 and the smallest tiles is
refused before any forward pass, with the numbers (``too_big``). Part of the memory budget, whose public
face is core/memory/budget.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from horizon.core.errors import HorizonError
from horizon.core.memory.cost_formulas import clean_run_bytes, readout_tile
from horizon.core.memory.cost_model import costs, peak_bytes, planned_cost
from horizon.core.memory.device_budget import Budget, ModelDims
from horizon.core.memory.sizes import format_size

# Auto batch sizes never go above this: past it a bigger batch buys no speed on any device we run on.
MAX_BATCH = 64
# Truncated prompts per forward pass, at most (the windows are short: the batch is their only size).
MAX_WINDOWS = 256
# The shortest position chunk a long prompt's scan goes through (core/patching/horizon.py ChunkedClean):
# below it the per-chunk work of every block no longer pays for itself.
MIN_POSITION_CHUNK = 64
# On a CPU, prompts longer than CPU_CHUNK_FROM run in position chunks of CPU_POSITION_CHUNK (norms,
# scan) whatever the budget: eager attention's [heads, T, T] scores leave the caches, a chunk's do
# far less. Measured, bundled model, 2 cores: a 2048-token forward 10.2 s whole vs 5.3 s in chunks of
# 256, 1024 tokens 2.9 s vs 2.3 s, 512 tokens 1.06 s either way (core/capture/capture.py chunked_capture).
CPU_POSITION_CHUNK = 256
CPU_CHUNK_FROM = 512


def too_big(analysis: str, dims: ModelDims, n_tokens: int, budget: Budget, batch: int, **tiling: int) -> HorizonError:
    parts = costs(analysis, dims, batch, n_tokens, **tiling)
    need = budget.fixed + sum(parts.values())
    biggest = sorted(parts.items(), key=lambda item: -item[1])[:3]
    detail = " + ".join(f"{name} {format_size(size)}" for name, size in biggest)
    what = f"batch {batch}" if batch > 1 else "one prompt at a time"
    return HorizonError(
        f"{analysis} of a {n_tokens}-token prompt ({what}) needs at least {format_size(need)} "
        f"(resident {format_size(budget.fixed)} + {detail} + ...), budget {format_size(budget.total)} "
        f"({budget.source}): raise --max-memory or use --max-tokens"
    )


def fits(analysis: str, dims: ModelDims, batch: int, n_tokens: int, budget: Budget, **tiling: int) -> bool:
    return budget.fixed + peak_bytes(analysis, dims, batch, n_tokens, **tiling) <= budget.total


def largest(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest n in lo..hi with ok(n) (ok is monotone; lo is returned when nothing fits)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def choose_batch_size(analysis: str, dims: ModelDims, n_tokens: int, budget: Budget, n_prompts: int = 1,
                      requested: int | None = None, held_tokens: int = 0, position_chunk: int = 0) -> int:
    """The largest batch (prompts per pass) whose peak fits the budget with the smallest tiles.

    ``n_tokens`` is the longest prompt's length (batches are right-padded to it); ``held_tokens``
    as in ``costs``. ``requested`` (an explicit --batch-size), capped at ``n_prompts``, is returned as is
    when it fits.
    Raises HorizonError with the numbers when even that (or batch 1) cannot fit.
    """
    # one staircase row, one truncated prompt: the smallest tiles
    tiling = {"held_tokens": held_tokens, "position_chunk": position_chunk}
    if requested is not None:  # a batch cannot hold more prompts than there are: --batch-size 10^9 on 3 prompts is 3
        requested = min(requested, max(1, n_prompts))
    first = requested or 1
    if not fits(analysis, dims, first, n_tokens, budget, **tiling):
        raise too_big(analysis, dims, n_tokens, budget, first, **tiling)
    if requested is not None:
        return requested
    most = max(1, min(n_prompts, MAX_BATCH))
    return largest(lambda batch: fits(analysis, dims, batch, n_tokens, budget, **tiling), 1, most)


def speed_chunk(budget: Budget, n_tokens: int) -> int:
    """Positions per chunk that make a long prompt faster on this device (0: run it whole)."""
    return CPU_POSITION_CHUNK if budget.on_cpu and n_tokens > CPU_CHUNK_FROM else 0


def position_chunk(analysis: str, dims: ModelDims, n_tokens: int, budget: Budget) -> int:
    """Positions per chunk for an analysis (scan) whose whole prompt does not fit: the longest that fits
    (halving from the prompt's length down to MIN_POSITION_CHUNK), 0 when the whole prompt fits."""
    if fits(analysis, dims, 1, n_tokens, budget):
        return 0
    chunk = n_tokens
    while chunk > MIN_POSITION_CHUNK:
        chunk = max(MIN_POSITION_CHUNK, chunk // 2)
        if fits(analysis, dims, 1, n_tokens, budget, position_chunk=chunk,
                vocab_tile=readout_tile(1, chunk)):
            return chunk
    return 0


@dataclass(frozen=True)
class Plan:
    """What one analysis run uses under ``budget``: its batch size and tiles, and the predicted peak."""

    analysis: str
    budget: Budget
    batch_size: int
    n_tokens: int
    dims: ModelDims
    tiling: dict[str, int] = field(default_factory=dict)
    keep_clean_bytes: int = 0  # scan, patch: core/patching/horizon.py clean_runs' keep_bytes (0: made batch by batch)

    @property
    def held_tokens(self) -> int:
        return self.tiling.get("held_tokens", 0)

    @property
    def position_chunk(self) -> int | None:
        """Positions per chunk of a long prompt (norms, scan); None: whole prompts."""
        return self.tiling.get("position_chunk") or None

    @property
    def working_bytes(self) -> int:
        return peak_bytes(self.analysis, self.dims, self.batch_size, self.n_tokens, **self.tiling)

    @property
    def peak_bytes(self) -> int:
        return self.budget.fixed + self.working_bytes

    @property
    def pass_bytes(self) -> int:
        """Memory the staircase passes may take (scan, patch): core/patching/horizon.py's ``max_pass_bytes``."""
        rest = costs(self.analysis, self.dims, self.batch_size, self.n_tokens, **{**self.tiling, "rows": 0})
        return max(1, self.budget.working - sum(rest.values()))

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, **self.tiling, "predicted_peak_bytes": self.peak_bytes,
                **self.budget.to_json()}


def plan(analysis: str, dims: ModelDims, token_lengths: list[int], budget: Budget,
         requested: int | None = None) -> Plan:
    """Batch size and tiles for ``analysis`` on prompts of ``token_lengths`` (raises when nothing fits).

    What an analysis may do comes from its ``Cost``: one that ``keeps_clean_runs`` (scan, patch) keeps
    every prompt's clean run when they fit in half the working budget, and makes them batch by batch
    otherwise; ``memory_chunks`` / ``speed_chunks`` allow position chunks; its ``tiles`` are chosen
    once the batch is.
    """
    if not token_lengths:
        raise HorizonError("no prompts to plan for")
    cost = planned_cost(analysis)
    n_tokens = max(token_lengths)
    tiling: dict[str, int] = {}
    keep = 0
    if cost.keeps_clean_runs:
        held = n_tokens * len(token_lengths)  # padded: an upper bound
        if clean_run_bytes(dims, held) <= budget.working // 2:
            keep, tiling["held_tokens"] = clean_run_bytes(dims, held), held
    needed = position_chunk(analysis, dims, n_tokens, budget) if cost.memory_chunks else 0  # for memory
    faster = speed_chunk(budget, n_tokens) if cost.speed_chunks else 0
    if (needed or faster) and dims.chunks_refused is not None and (why := dims.chunks_refused()):
        if needed:
            reason = f"{n_tokens} tokens fit in {format_size(budget.total)} only in position chunks"
            raise HorizonError(f"{reason}, and {why}")
        faster = 0  # chunks were only for speed: the whole pass gives the right numbers, slower
    if chunk := needed or faster:
        tiling = {"position_chunk": chunk}  # chunked clean runs are never kept
        keep = 0
    # an analysis whose tiles take --batch-size (truncate: truncated prompts per pass) has its batch chosen
    batch = choose_batch_size(analysis, dims, n_tokens, budget, len(token_lengths),
                              requested if cost.batch_requested else None, tiling.get("held_tokens", 0),
                              tiling.get("position_chunk", 0))
    if cost.tiles is not None:
        tiling.update(cost.tiles(dims, batch, n_tokens, budget, tiling, requested))
    return Plan(analysis=analysis, budget=budget, batch_size=batch, n_tokens=n_tokens, dims=dims, tiling=tiling,
                keep_clean_bytes=keep)
