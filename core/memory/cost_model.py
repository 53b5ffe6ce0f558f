"""The cost model of every analysis: ``Cost`` (declared on its registry entry), ``costs`` and ``peak_bytes``.

An analysis's ``Cost`` says how many working bytes one pass takes by part (``parts``, built from
core/memory/cost_formulas.py) and what ``plan`` may do with it (keep clean runs, chunk positions, its
tiles); patch, the one engine with a plan that is not a registry analysis, has ``PATCH_COST`` here.
``cost_of`` finds an analysis's cost; the registry is read when a plan is made, not imported with this
module. Part of the memory budget, whose public face is core/memory/budget.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from horizon.core.errors import HorizonError
from horizon.core.memory.cost_formulas import VOCAB_TILE, staircase_parts
from horizon.core.memory.device_budget import Budget, ModelDims

# The one engine with a memory plan that is not a registry analysis (``horizon patch``, the app's patch
# view): its cost is here, with scan's formula (core/analyses/ holds every analysis's own).
PATCH = "patch"


class PartsFn(Protocol):
    """An analysis's working bytes of one pass by part (``costs``)."""

    def __call__(self, dims: ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
                 held_tokens: int, position_chunk: int) -> dict[str, int]: ...


# An analysis's tiles once its batch is chosen, added to ``Plan.tiling``:
# (dims, batch, n_tokens, budget, tiling so far, requested: --batch-size or None) -> tiles.
TilesFn = Callable[[ModelDims, int, int, Budget, dict[str, int], int | None], dict[str, int]]


def _one(settings: Any, n_layers: int) -> float:
    return 1.0


@dataclass(frozen=True)
class Cost:
    """An analysis's cost model, declared on its registry entry (``Analysis.cost``): what ``plan`` and
    core/sweep/plan.py's time estimate read instead of branching on analysis names."""

    parts: PartsFn  # working bytes of one pass by part
    keeps_clean_runs: bool = False  # every prompt's clean run may be kept for the whole run (held_tokens)
    memory_chunks: bool = False  # a prompt too long for the budget may run in position chunks
    speed_chunks: bool = False  # a long prompt on a CPU runs in position chunks (``speed_chunk``)
    batch_requested: bool = True  # --batch-size is its batch (False: its ``tiles`` take it)
    tiles: TilesFn | None = None  # its tiles, chosen once the batch is (rows, windows, vocab_tile)
    # core/sweep/plan.py's time model: extra work per token, key and head besides attention's 2 * d_model,
    # and its seconds per unit relative to one forward (settings: SweepSettings, n_layers)
    pattern_work_per_head: int = 0
    relative_work: Callable[[Any, int], float] = _one
    # core/sweep/worker.py: padded tokens (prompts x longest) one auto batch may hold on a CPU (None: no cap)
    cpu_batch_tokens: int | None = None


def _patch_parts(dims: ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
                 held_tokens: int, position_chunk: int) -> dict[str, int]:
    return staircase_parts(dims, batch, n_tokens, rows, vocab_tile, held_tokens, whole_logits=True)


PATCH_COST = Cost(parts=_patch_parts, keeps_clean_runs=True)


def cost_of(analysis: str) -> Cost | None:
    """The cost model of ``analysis`` (its registry entry's, or patch's); None when it declares none."""
    if analysis == PATCH:
        return PATCH_COST
    # The registry (core/analyses/) sits above this module, its entries built from the formulas
    # of core/memory/cost_formulas.py: it is read when a plan is made, not imported with this module.
    from horizon.core.analyses import REGISTRY

    entry = REGISTRY.get(analysis)
    return None if entry is None else entry.cost


def planned() -> tuple[str, ...]:
    """Every analysis with a cost model (the registry's, in its order, then patch)."""
    from horizon.core.analyses import REGISTRY

    return (*(name for name, entry in REGISTRY.items() if entry.cost is not None), PATCH)


def planned_cost(analysis: str) -> Cost:
    cost = cost_of(analysis)
    if cost is None:
        raise HorizonError(f"unknown analysis {analysis!r}: use one of {', '.join(planned())}")
    return cost



def costs(analysis: str, dims: ModelDims, batch: int, n_tokens: int, rows: int = 1, windows: int = 1,
          vocab_tile: int = VOCAB_TILE, held_tokens: int = 0, position_chunk: int = 0) -> dict[str, int]:
    """Working bytes of one pass of ``analysis`` by part (the fixed part, weights and runtime, excluded):
    its entry's ``Cost.parts`` (core/analyses/), or patch's.

    ``held_tokens`` (scan, patch): tokens of every prompt whose clean run is kept for the whole
    run (0: only the current batch's, as when they are made batch by batch). ``position_chunk``
    (scan): prompts longer than it go through the clean run and the passes that many positions at
    a time, with KV caches of the positions before (core/patching/horizon.py ChunkedClean; 0: whole prompts).
    """
    return planned_cost(analysis).parts(dims, batch, n_tokens, rows=rows, windows=windows, vocab_tile=vocab_tile,
                                        held_tokens=held_tokens, position_chunk=position_chunk)


def peak_bytes(analysis: str, dims: ModelDims, batch: int, n_tokens: int, **tiling: int) -> int:
    """The working bytes ``analysis`` peaks at (``costs`` summed)."""
    return sum(costs(analysis, dims, batch, n_tokens, **tiling).values())
