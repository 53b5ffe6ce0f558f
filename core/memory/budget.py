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
  core/analyses/<name>.py, built from the shared formulas here: ``forward_parts``, ``staircase_parts``,
  ``chunked_scan_parts``); patch's is ``PATCH_COST``. ``cost_of(name)`` finds it; ``ANALYSES`` (computed
  on use): every analysis with one (norms, truncate, scan, attention, patch). ``rows``: staircase rows per
  pass (scan); ``windows``: truncated prompts per pass; ``vocab_tile``: readout tile width;
  ``held_tokens``: tokens whose clean runs are kept for the whole run (scan, patch);
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
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from horizon.core.errors import HorizonError

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel

# The one engine with a memory plan that is not a registry analysis (``horizon patch``, the app's patch
# view): its cost is here, with scan's formula (core/analyses/ holds every analysis's own).
PATCH = "patch"
# Auto batch sizes never go above this: past it a bigger batch buys no speed on any device we run on.
MAX_BATCH = 64
# The share of free memory an automatic budget takes (the rest: the allocator's slack, other processes).
CUDA_FRACTION = 0.85
CPU_FRACTION = 0.7
# What torch, transformers and the bridge hold besides the weights once the model has run (CPU RSS,
# measured: ~490 MB). Added to the weights because the resident set before the first forward
# understates both (the weights are mapped and read in lazily).
RUNTIME_BYTES = 480 << 20
# What the allocators keep beyond the live tensors (heap fragmentation, BLAS and oneDNN scratch):
# measured on CPU as up to ~210 MB over the tensors' own bytes at 512-2048 tokens, varying run to run.
ALLOCATOR_SLACK = 224 << 20
# Query rows per step of the attention statistics (core/analyses/attention/engine.py imports it).
QUERY_CHUNK = 512
# Vocabulary columns per readout tile (cache-sized; core/patching/horizon.py imports it), and the narrowest
# tile a tight budget may use.
VOCAB_TILE = 2048
MIN_VOCAB_TILE = 256
# Truncated prompts per forward pass, at most (the windows are short: the batch is their only size).
MAX_WINDOWS = 256
# The shortest position chunk a long prompt's scan goes through (core/patching/horizon.py ChunkedClean):
# below it the per-chunk work of every block no longer pays for itself.
MIN_POSITION_CHUNK = 64
CHUNK_RETENTION = 0.6
# On a CPU, prompts longer than CPU_CHUNK_FROM run in position chunks of CPU_POSITION_CHUNK (norms,
# scan) whatever the budget: eager attention's [heads, T, T] scores leave the caches, a chunk's do
# far less. Measured, bundled model, 2 cores: a 2048-token forward 10.2 s whole vs 5.3 s in chunks of
# 256, 1024 tokens 2.9 s vs 2.3 s, 512 tokens 1.06 s either way (core/capture/capture.py chunked_capture).
CPU_POSITION_CHUNK = 256
CPU_CHUNK_FROM = 512

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


# ----------------------------------------------------------------------------- sizes


def parse_size(text: str) -> int | None:
    """'2GB' -> 2e9 bytes, '512MiB' -> 512 * 2**20, '1.5G' -> 1.5 * 2**30, 'auto' -> None."""
    if text.strip().lower() == "auto":
        return None
    match = _SIZE.match(text)
    if match is None:
        raise HorizonError(f"--max-memory takes a size such as 2GB, 512MiB or 1.5G (or auto), got {text!r}")
    number, prefix, binary, byte = match.groups()
    if binary and not prefix:
        raise HorizonError(f"--max-memory takes a size such as 2GB, 512MiB or 1.5G (or auto), got {text!r}")
    decimal = bool(byte) and not binary and bool(prefix)  # KB, MB, GB: powers of 1000
    base = 1000 if decimal else 1024
    value = int(float(number) * base ** _POWERS[prefix.lower()])
    if value <= 0:
        raise HorizonError(f"--max-memory must be more than 0 bytes, got {text!r}")
    return value


def format_size(n_bytes: float) -> str:
    """Bytes for people: '1.3 GB', '512 MB', '12 KB' (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n_bytes) >= scale:
            value = n_bytes / scale
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f} {unit}"
    return f"{int(n_bytes)} B"


# ----------------------------------------------------------------------------- the model and the budget


@dataclass(frozen=True)
class ModelDims:
    """What the cost model needs to know of a model."""

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    vocab: int
    element_bytes: int = 4  # the activations' dtype (float32: 4, bfloat16: 2)
    weight_bytes: int = 0  # parameters and buffers, resident for the whole run
    kv_width: int = 0  # a layer's key (or value) width per position: n_kv_heads * d_head (0: d_model)
    # Why position chunks may not run on this model (None: they may), asked only when a plan would
    # chunk: ``of`` wires in core/checks/chunking.py's self-check, which runs once per loaded model.
    chunks_refused: Callable[[], str | None] | None = field(default=None, compare=False, repr=False)

    @property
    def kv_bytes_per_token(self) -> int:
        """A KV cache's keys and values of one position over every layer."""
        return 2 * self.n_layers * (self.kv_width or self.d_model) * self.element_bytes

    @classmethod
    def of(cls, model: LoadedModel) -> ModelDims:
        cfg = model.bridge.cfg
        module = model.hf_model
        weights = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        d_head = int(getattr(cfg, "d_head", None) or model.d_model // model.n_heads)
        return cls(
            n_layers=model.n_layers,
            d_model=model.d_model,
            n_heads=model.n_heads,
            d_mlp=int(getattr(cfg, "d_mlp", None) or 4 * model.d_model),
            vocab=int(cfg.d_vocab),
            element_bytes=int(next(module.parameters()).element_size()),
            weight_bytes=int(weights),
            kv_width=model.n_kv_heads * d_head,
            chunks_refused=functools.partial(_chunks_refused, model),
        )


def _chunks_refused(model: LoadedModel) -> str | None:
    from horizon.core.checks.chunking import refusal

    return refusal(model)


@dataclass(frozen=True)
class Budget:
    """The memory a run may peak at (``total``), of which ``fixed`` is resident before it starts."""

    total: int
    fixed: int
    source: str  # how it was chosen, for messages and JSON
    on_cpu: bool = True  # the device is a CPU (long prompts then run in position chunks: ``speed_chunk``)

    @property
    def working(self) -> int:
        return self.total - self.fixed

    def to_json(self) -> dict[str, Any]:
        return {"max_memory_bytes": self.total, "fixed_bytes": self.fixed, "source": self.source}


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
    # here: it is read when a plan is made, not imported with this module.
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


def __getattr__(name: str) -> Any:
    # The registry can grow after import (a test registers an analysis): computed on use.
    if name == "ANALYSES":
        return planned()
    raise AttributeError(name)


def _is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


def resident_bytes(device: Any = "cpu") -> int | None:
    """What this process holds now: allocated CUDA memory, or the resident set on CPU (None: unknown)."""
    if _is_cuda(device):
        import torch

        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fixed_bytes(dims: ModelDims, device: Any = "cpu", measured: bool = True) -> int:
    """The fixed part: the weights plus the runtime, or (``measured``) what is resident now if more."""
    estimate = dims.weight_bytes + (0 if _is_cuda(device) else RUNTIME_BYTES)
    resident = resident_bytes(device) if measured else None
    return max(estimate, resident or 0)


def available_bytes(device: Any = "cpu") -> int:
    """Free memory on the device: CUDA's free memory, or MemAvailable on CPU."""
    if _is_cuda(device):
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise HorizonError("cannot read the available memory (/proc/meminfo): give --max-memory SIZE")


def default_budget(device: Any, fixed: int) -> Budget:
    """A safe fraction of the free memory on top of what is already resident (``fixed``)."""
    cuda = _is_cuda(device)
    free = available_bytes(device)
    fraction = CUDA_FRACTION if cuda else CPU_FRACTION
    where = "free GPU memory" if cuda else "available RAM"
    return Budget(total=fixed + int(fraction * free), fixed=fixed,
                  source=f"auto: {fraction:.0%} of {format_size(free)} {where} + {format_size(fixed)} resident")


def make_budget(max_memory: int | None, dims: ModelDims, device: Any = "cpu", measured: bool = True) -> Budget:
    """The budget of ``--max-memory`` (bytes; None: automatic) for a model of ``dims`` on ``device``."""
    fixed = fixed_bytes(dims, device, measured)
    budget = default_budget(device, fixed) if max_memory is None else Budget(
        total=max_memory, fixed=fixed, source=f"--max-memory {format_size(max_memory)}")
    return dataclasses.replace(budget, on_cpu=str(device).startswith("cpu"))


# ----------------------------------------------------------------------------- the cost model


def _forward(dims: ModelDims, batch: int, n_tokens: int, logits: bool, kv_tokens: int = 0) -> dict[str, int]:
    """One eager forward pass of ``n_tokens`` positions attending to ``kv_tokens`` (default: the same
    positions): a layer's activations, its attention scores, and (when asked) the logits."""
    e, bt = dims.element_bytes, batch * n_tokens
    parts = {
        "allocator slack": ALLOCATOR_SLACK,
        "activations": bt * (8 * dims.d_model + 3 * dims.d_mlp) * e,
        # Eager attention holds the scores, their softmax and the bridge's pattern hook copy; the
        # causal mask is one more [batch, T, T].
        "attention": batch * n_tokens * (kv_tokens or n_tokens) * (3 * dims.n_heads + 1) * e,
    }
    if logits:
        parts["logits"] = bt * dims.vocab * e
    return parts


def _clean_run(dims: ModelDims, batch: int, n_tokens: int) -> dict[str, int]:
    """A horizon clean run kept for its patched passes (core/patching/horizon.py CleanRun)."""
    e, bt, readers = dims.element_bytes, batch * n_tokens, 2 * dims.n_layers + 1
    return {
        # sublayer outputs s_0..s_2L, resid_pre per layer, and their float64 prefix sums
        "clean outputs": bt * dims.d_model * ((readers + dims.n_layers) * e + readers * 8),
        # the clean logits are the forward's own (its "logits" part); the reference's float32 view
        # is a copy only when the model computes in another dtype
        "clean logits": bt * dims.vocab * (4 if e != 4 else 0),
    }


def clean_run_bytes(dims: ModelDims, n_tokens: int) -> int:
    """What clean runs of ``n_tokens`` tokens in all hold once used (core/patching/horizon.py ``clean_runs``)."""
    return sum(_clean_run(dims, 1, n_tokens).values())


def row_bytes(dims: ModelDims, batch: int, n_tokens: int, position_chunk: int = 0) -> int:
    """One staircase row: core/patching/horizon.py's ``max_pass_bytes`` divided by this is the rows per pass
    (with ``position_chunk``: one row of a chunked pass, its KV cache and heap retention included)."""
    if 0 < position_chunk < n_tokens:
        width = readout_tile(batch, position_chunk)
        one, none = (sum(_chunked_scan(dims, batch, n_tokens, rows, width, position_chunk).values()) for rows in (1, 0))
        return one - none
    return _row_bytes(dims, batch, n_tokens)


def _row_bytes(dims: ModelDims, batch: int, n_tokens: int, kv_tokens: int = 0) -> int:
    """One staircase row (one config over the token batch, or over a position chunk of ``n_tokens``
    attending to ``kv_tokens``) inside a batched pass."""
    e = dims.element_bytes
    live_prefixes = 2 * dims.n_layers + 2  # float64 prefix sums still to be subtracted, at most
    per_position = (dims.d_model * (live_prefixes * 8 + 8 * e) + 3 * dims.d_mlp * e
                    + 3 * dims.n_heads * (kv_tokens or n_tokens) * e)
    return batch * n_tokens * per_position


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


def forward_parts(dims: ModelDims, batch: int, n_tokens: int, logits: bool) -> dict[str, int]:
    """One forward pass's working bytes by part (the formula every analysis's cost starts from)."""
    return _forward(dims, batch, n_tokens, logits=logits)


def staircase_parts(dims: ModelDims, batch: int, n_tokens: int, rows: int, vocab_tile: int, held_tokens: int,
                    whole_logits: bool) -> dict[str, int]:
    """Scan and patch: the clean run, then staircase passes of ``rows`` configs with a readout (one
    vocabulary tile of every row; ``whole_logits``: each config's whole logits, as patch holds them)."""
    bt = batch * n_tokens
    parts = _forward(dims, batch, n_tokens, logits=True)
    parts.update(_clean_run(dims, 1, max(held_tokens, batch * n_tokens)))
    parts["staircase rows"] = rows * _row_bytes(dims, batch, n_tokens)
    if whole_logits:  # the readout holds each config's whole logits
        parts["readout"] = rows * bt * dims.vocab * 4
    else:  # one vocabulary tile of every row in the readout chunk, and the metrics' temporaries
        parts["readout"] = max(1, rows) * bt * vocab_tile * 4 * 4
    return parts


def chunked_scan_parts(dims: ModelDims, batch: int, n_tokens: int, rows: int, vocab_tile: int,
                       chunk: int) -> dict[str, int]:
    """A scan whose prompts go ``chunk`` positions at a time (see ``_chunked_scan``)."""
    return _chunked_scan(dims, batch, n_tokens, rows, vocab_tile, chunk)


def _chunked_scan(dims: ModelDims, batch: int, n_tokens: int, rows: int, vocab_tile: int, chunk: int) -> dict[str, int]:
    """A scan whose prompts go ``chunk`` positions at a time: what one chunk holds, plus the KV caches
    (the clean pass's and one per staircase row) that grow to the whole prompt."""
    parts = _forward(dims, batch, chunk, logits=True, kv_tokens=n_tokens)
    parts.update(_clean_run(dims, batch, chunk))
    parts["staircase rows"] = rows * _row_bytes(dims, batch, chunk, kv_tokens=n_tokens)
    parts["readout"] = max(1, rows) * batch * chunk * vocab_tile * 4 * 4
    per_chunk = sum(size for name, size in parts.items() if name != "allocator slack")
    # The same chunk-sized tensors are allocated and freed once per chunk and pass, and the heap
    # keeps more of them than the live ones: measured on CPU (SmolLM2, 2048 tokens, chunks of 128,
    # 256 and 512) the peak exceeds the tensors by up to 0.6 of the chunk's own bytes.
    parts["allocator retention"] = int(CHUNK_RETENTION * per_chunk)
    parts["kv caches"] = (1 + rows) * batch * n_tokens * dims.kv_bytes_per_token
    return parts


def peak_bytes(analysis: str, dims: ModelDims, batch: int, n_tokens: int, **tiling: int) -> int:
    """The working bytes ``analysis`` peaks at (``costs`` summed)."""
    return sum(costs(analysis, dims, batch, n_tokens, **tiling).values())


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


def readout_tile(batch: int, n_tokens: int, widest: int = VOCAB_TILE) -> int:
    """Vocabulary columns per readout tile of one row: ``widest``, halved for long batches until a tile
    is at most 8 MB (core/patching/horizon.py's ``patched_metrics`` uses the same width)."""
    width = widest
    while width > MIN_VOCAB_TILE and batch * n_tokens * width * 4 > 8 << 20:
        width //= 2
    return width


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


# ----------------------------------------------------------------------------- everything at once


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
