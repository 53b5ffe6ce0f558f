"""Memory budgets: ``--max-memory``, the cost model of every analysis, and the batch and tile sizes it allows.

A budget bounds the peak memory of the whole run (weights and the runtime included). It is split
into a *fixed* part, resident before any analysis starts (the weights, torch and its libraries;
on CPU the process's resident set when the plan is made), and the *working* part the analysis
may use on top. The cost model gives an analysis's working bytes from the model's dimensions,
the batch size and the prompt length; batch sizes and tiles are the largest that fit. A run that
cannot fit even at batch size 1 (and the smallest tile) is refused before any forward pass, with
the numbers.

API (stable: the commands and the sweep's planner call it):

- ``parse_size("2GB" | "512MiB" | "1.5G" | "auto") -> int | None``: bytes (None for auto).
  KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB and bare K/M/G/T powers of 1024.
- ``format_size(n) -> "1.30 GB"``.
- ``ModelDims.of(model)``: the dimensions the cost model needs (or build one from a config).
- ``make_budget(max_memory, dims, device) -> Budget``: ``--max-memory`` in bytes, or None for
  ``default_budget(device, fixed)``: a safe share of free CUDA memory (``torch.cuda.mem_get_info``)
  or of MemAvailable on CPU, on top of the fixed part (``fixed_bytes``: the weights plus the
  runtime, or what is resident now if more). ``Budget.source`` says how it was chosen.
- ``costs(analysis, dims, batch, n_tokens, rows=1, windows=1, vocab_tile=VOCAB_TILE,
  held_tokens=0) -> dict[str, int]``: working bytes by part; ``peak_bytes(...)`` is their sum.
  Each analysis's parts and planning flags are its registry entry's ``Cost`` (``Analysis.cost``, in
  core/analyses/<name>/, built from the shared formulas of cost_formulas: ``forward_parts``,
  ``staircase_parts``, ``chunked_scan_parts``); patch's is ``PATCH_COST``. ``cost_of(name)`` finds it;
  ``ANALYSES`` (computed on use): every analysis with one (norms, truncate, scan, attention, patch).
  ``rows``: staircase rows per pass (scan); ``windows``: truncated prompts per pass; ``vocab_tile``: readout
  tile width; ``held_tokens``: tokens whose clean runs are kept for the whole run (scan, patch);
  ``position_chunk``: positions per chunk of a scan whose whole prompt cannot fit (0: none).
- ``choose_batch_size(analysis, dims, n_tokens, budget, n_prompts=1, requested=None,
  held_tokens=0) -> int``: the largest batch that fits (at most ``n_prompts`` and ``MAX_BATCH``);
  ``requested`` (an explicit ``--batch-size N``) wins but is still refused when it cannot fit.
- ``readout_tile(batch, n_tokens)``, ``position_chunk(analysis, dims, n_tokens, budget)`` (memory),
  ``speed_chunk(budget, n_tokens)`` (CPU speed): tiles (scan's ``staircase_rows`` and truncate's
  ``truncation_windows`` live in their analysis modules, with ``fits``/``largest``/``too_big`` from here);
  ``row_bytes`` (one staircase row) and ``clean_run_bytes`` (kept clean runs) for the engine.
- ``plan(analysis, dims, token_lengths, budget, requested=None) -> Plan``: all of it at once.
  ``Plan.batch_size``, ``.tiling`` (rows, windows, vocab_tile, held_tokens), ``.pass_bytes``
  (core/patching/horizon.py's ``max_pass_bytes``), ``.keep_clean_bytes`` (``clean_runs``' keep_bytes),
  ``.peak_bytes`` (predicted) and ``.to_json()``. Raises HorizonError, with the numbers, when
  even batch 1 and the smallest tiles cannot fit. For an analysis whose ``Cost.batch_requested`` is
  False (truncate), ``requested`` goes to its ``tiles`` (truncated prompts per pass) and the full
  prompts' batch is always chosen.
  Position chunks only where the model's chunks equal its whole pass (``ModelDims.chunks_refused``,
  core/checks/chunking.py): otherwise speed chunks give way to the whole pass, and a prompt that fits only
  in chunks is refused with the reason.

torch is imported lazily (only the CUDA paths touch it; ``ModelDims.of`` reads a loaded model), so the
sweep's planner and option checks stay light.

This module is the memory budget's public face: callers import from here, and its parts live beside
it in core/memory/: ``sizes`` (``parse_size``, ``format_size``), ``device_budget`` (``ModelDims``,
``Budget``, ``make_budget`` and the device's memory), ``cost_formulas`` (the shared formulas,
``row_bytes``, ``clean_run_bytes``, ``readout_tile``), ``cost_model`` (``Cost``, ``cost_of``, ``costs``,
``peak_bytes``) and ``planner`` (``choose_batch_size``, the chunks, ``Plan``, ``plan``).
"""

from __future__ import annotations

from typing import Any

from horizon.core.memory.cost_formulas import (
    ALLOCATOR_SLACK,
    CHUNK_RETENTION,
    MIN_VOCAB_TILE,
    QUERY_CHUNK,
    VOCAB_TILE,
    chunked_scan_parts,
    clean_run_bytes,
    forward_parts,
    readout_tile,
    row_bytes,
    staircase_parts,
)
from horizon.core.memory.cost_model import (
    PATCH,
    PATCH_COST,
    Cost,
    PartsFn,
    TilesFn,
    cost_of,
    costs,
    peak_bytes,
    planned,
    planned_cost,
)
from horizon.core.memory.device_budget import (
    CPU_FRACTION,
    CUDA_FRACTION,
    RUNTIME_BYTES,
    Budget,
    ModelDims,
    available_bytes,
    default_budget,
    fixed_bytes,
    make_budget,
    resident_bytes,
)
from horizon.core.memory.planner import (
    CPU_CHUNK_FROM,
    CPU_POSITION_CHUNK,
    MAX_BATCH,
    MAX_WINDOWS,
    MIN_POSITION_CHUNK,
    Plan,
    choose_batch_size,
    fits,
    largest,
    plan,
    position_chunk,
    speed_chunk,
    too_big,
)
from horizon.core.memory.sizes import format_size, parse_size

__all__ = [
    "ALLOCATOR_SLACK",
    "CHUNK_RETENTION",
    "CPU_CHUNK_FROM",
    "CPU_FRACTION",
    "CPU_POSITION_CHUNK",
    "CUDA_FRACTION",
    "MAX_BATCH",
    "MAX_WINDOWS",
    "MIN_POSITION_CHUNK",
    "MIN_VOCAB_TILE",
    "PATCH",
    "PATCH_COST",
    "QUERY_CHUNK",
    "RUNTIME_BYTES",
    "VOCAB_TILE",
    "Budget",
    "Cost",
    "ModelDims",
    "PartsFn",
    "Plan",
    "TilesFn",
    "available_bytes",
    "choose_batch_size",
    "chunked_scan_parts",
    "clean_run_bytes",
    "cost_of",
    "costs",
    "default_budget",
    "fits",
    "fixed_bytes",
    "format_size",
    "forward_parts",
    "largest",
    "make_budget",
    "parse_size",
    "peak_bytes",
    "plan",
    "planned",
    "planned_cost",
    "position_chunk",
    "readout_tile",
    "resident_bytes",
    "row_bytes",
    "speed_chunk",
    "staircase_parts",
    "too_big",
]


def __getattr__(name: str) -> Any:
    # The registry can grow after import (a test registers an analysis): computed on use.
    if name == "ANALYSES":
        return planned()
    raise AttributeError(name)
