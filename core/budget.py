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
  Analyses: ``ANALYSES`` (norms, scan, patch, truncate, attention). ``rows``: staircase rows per
  pass (scan); ``windows``: truncated prompts per pass; ``vocab_tile``: readout tile width;
  ``held_tokens``: tokens whose clean runs are kept for the whole run (scan, patch);
  ``position_chunk``: positions per chunk of a scan whose whole prompt cannot fit (0: none).
- ``choose_batch_size(analysis, dims, n_tokens, budget, n_prompts=1, requested=None,
  held_tokens=0) -> int``: the largest batch that fits (at most ``n_prompts`` and ``MAX_BATCH``);
  ``requested`` (an explicit ``--batch-size N``) wins but is still refused when it cannot fit.
- ``staircase_rows(...)``, ``truncation_windows(...)``, ``readout_tile(batch, n_tokens)``,
  ``position_chunk(dims, n_tokens, budget)`` (memory), ``speed_chunk(budget, n_tokens)`` (CPU speed): tiles;
  ``row_bytes`` (one staircase row) and ``clean_run_bytes`` (kept clean runs) for the engine.
- ``plan(analysis, dims, token_lengths, budget, requested=None) -> Plan``: all of it at once.
  ``Plan.batch_size``, ``.tiling`` (rows, windows, vocab_tile, held_tokens), ``.pass_bytes``
  (core/horizon.py's ``max_pass_bytes``), ``.keep_clean_bytes`` (``clean_runs``' keep_bytes),
  ``.peak_bytes`` (predicted) and ``.to_json()``. Raises HorizonError, with the numbers, when
  even batch 1 and the smallest tiles cannot fit. For truncate, ``requested`` is the number of
  truncated prompts per pass (its --batch-size) and the full prompts' batch is always chosen.
  Position chunks only where the model's chunks equal its whole pass (``ModelDims.chunks_refused``,
  core/chunking.py): otherwise speed chunks give way to the whole pass, and a prompt that fits only
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
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError

if TYPE_CHECKING:
    from horizon.core.loader import LoadedModel

ANALYSES = ("norms", "scan", "patch", "truncate", "attention")
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
# Query rows per step of the attention statistics (core/attention.py imports it).
QUERY_CHUNK = 512
# Vocabulary columns per readout tile (cache-sized; core/horizon.py imports it), and the narrowest
# tile a tight budget may use.
VOCAB_TILE = 2048
MIN_VOCAB_TILE = 256
# Truncated prompts per forward pass, at most (the windows are short: the batch is their only size).
MAX_WINDOWS = 256
# The shortest position chunk a long prompt's scan goes through (core/horizon.py ChunkedClean):
# below it the per-chunk work of every block no longer pays for itself.
MIN_POSITION_CHUNK = 64
CHUNK_RETENTION = 0.6
# On a CPU, prompts longer than CPU_CHUNK_FROM run in position chunks of CPU_POSITION_CHUNK (norms,
# scan) whatever the budget: eager attention's [heads, T, T] scores leave the caches, a chunk's do
# far less. Measured, bundled model, 2 cores: a 2048-token forward 10.2 s whole vs 5.3 s in chunks of
# 256, 1024 tokens 2.9 s vs 2.3 s, 512 tokens 1.06 s either way (core/capture.py chunked_capture).
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
    # chunk: ``of`` wires in core/chunking.py's self-check, which runs once per loaded model.
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
    from horizon.core.chunking import refusal

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
    """A horizon clean run kept for its patched passes (core/horizon.py CleanRun)."""
    e, bt, readers = dims.element_bytes, batch * n_tokens, 2 * dims.n_layers + 1
    return {
        # sublayer outputs s_0..s_2L, resid_pre per layer, and their float64 prefix sums
        "clean outputs": bt * dims.d_model * ((readers + dims.n_layers) * e + readers * 8),
        # the clean logits are the forward's own (its "logits" part); the reference's float32 view
        # is a copy only when the model computes in another dtype
        "clean logits": bt * dims.vocab * (4 if e != 4 else 0),
    }


def clean_run_bytes(dims: ModelDims, n_tokens: int) -> int:
    """What clean runs of ``n_tokens`` tokens in all hold once used (core/horizon.py ``clean_runs``)."""
    return sum(_clean_run(dims, 1, n_tokens).values())


def row_bytes(dims: ModelDims, batch: int, n_tokens: int, position_chunk: int = 0) -> int:
    """One staircase row: core/horizon.py's ``max_pass_bytes`` divided by this is the rows per pass
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
    """Working bytes of one pass of ``analysis`` by part (the fixed part, weights and runtime, excluded).

    ``held_tokens`` (scan, patch): tokens of every prompt whose clean run is kept for the whole
    run (0: only the current batch's, as when they are made batch by batch). ``position_chunk``
    (scan): prompts longer than it go through the clean run and the passes that many positions at
    a time, with KV caches of the positions before (core/horizon.py ChunkedClean; 0: whole prompts).
    """
    if analysis == "scan" and 0 < position_chunk < n_tokens:
        return _chunked_scan(dims, batch, n_tokens, rows, vocab_tile, position_chunk)
    if analysis not in ANALYSES:
        raise HorizonError(f"unknown analysis {analysis!r}: use one of {', '.join(ANALYSES)}")
    bt = batch * n_tokens
    if analysis == "norms":
        parts = _forward(dims, batch, n_tokens, logits=False)
        parts["norms"] = 5 * (dims.n_layers + 1) * 2 * bt * 8 * 2  # per-position numbers, float32 then float64
        return parts
    if analysis == "attention":
        parts = _forward(dims, batch, n_tokens, logits=False)
        # the reducer, QUERY_CHUNK query rows at a time: the einsum's copies of the rows, the distance weights
        rows = min(n_tokens, QUERY_CHUNK)
        parts["pattern statistics"] = batch * dims.n_heads * rows * n_tokens * 4 * 3 + 10 * rows * n_tokens * 4
        return parts
    if analysis == "truncate":
        rows_bytes = (dims.n_layers + 1) * dims.d_model * 4
        parts = _forward(dims, batch, n_tokens, logits=False)
        # the batch's residuals at every position; stacking them doubles them only after the pass's
        # own activations are freed, so the forward's parts cover the copy
        parts["full residuals"] = bt * rows_bytes
        # each pass of truncated prompts: its last positions, the full ones gathered, centred copies
        parts["truncated windows"] = windows * (rows_bytes * 6 + 16 * dims.d_model * 4)
        return parts
    # scan and patch: the clean run, then staircase passes of ``rows`` configs with a tiled readout
    parts = _forward(dims, batch, n_tokens, logits=True)
    parts.update(_clean_run(dims, 1, max(held_tokens, batch * n_tokens)))
    parts["staircase rows"] = rows * _row_bytes(dims, batch, n_tokens)
    if analysis == "patch":  # the readout holds each config's whole logits
        parts["readout"] = rows * bt * dims.vocab * 4
    else:  # one vocabulary tile of every row in the readout chunk, and the metrics' temporaries
        parts["readout"] = max(1, rows) * bt * vocab_tile * 4 * 4
    return parts


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


def _too_big(analysis: str, dims: ModelDims, n_tokens: int, budget: Budget, batch: int, **tiling: int) -> HorizonError:
    parts = costs(analysis, dims, batch, n_tokens, **tiling)
    need = budget.fixed + sum(parts.values())
    largest = sorted(parts.items(), key=lambda item: -item[1])[:3]
    detail = " + ".join(f"{name} {format_size(size)}" for name, size in largest)
    what = f"batch {batch}" if batch > 1 else "one prompt at a time"
    return HorizonError(
        f"{analysis} of a {n_tokens}-token prompt ({what}) needs at least {format_size(need)} "
        f"(resident {format_size(budget.fixed)} + {detail} + ...), budget {format_size(budget.total)} "
        f"({budget.source}): raise --max-memory or use --max-tokens"
    )


def _fits(analysis: str, dims: ModelDims, batch: int, n_tokens: int, budget: Budget, **tiling: int) -> bool:
    return budget.fixed + peak_bytes(analysis, dims, batch, n_tokens, **tiling) <= budget.total


def _largest(fits: Any, lo: int, hi: int) -> int:
    """The largest n in lo..hi with fits(n) (fits is monotone; lo is returned when nothing fits)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
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
    if not _fits(analysis, dims, first, n_tokens, budget, **tiling):
        raise _too_big(analysis, dims, n_tokens, budget, first, **tiling)
    if requested is not None:
        return requested
    most = max(1, min(n_prompts, MAX_BATCH))
    return _largest(lambda batch: _fits(analysis, dims, batch, n_tokens, budget, **tiling), 1, most)


def readout_tile(batch: int, n_tokens: int, widest: int = VOCAB_TILE) -> int:
    """Vocabulary columns per readout tile of one row: ``widest``, halved for long batches until a tile
    is at most 8 MB (core/horizon.py's ``patched_metrics`` uses the same width)."""
    width = widest
    while width > MIN_VOCAB_TILE and batch * n_tokens * width * 4 > 8 << 20:
        width //= 2
    return width


def staircase_rows(dims: ModelDims, batch: int, n_tokens: int, budget: Budget, held_tokens: int = 0,
                   most: int | None = None, position_chunk: int = 0) -> int:
    """Configs per staircase pass (scan): as many as fit, at least 1."""
    most = most or 2 * dims.n_layers + 2
    width = readout_tile(batch, min(n_tokens, position_chunk or n_tokens))
    return _largest(lambda rows: _fits("scan", dims, batch, n_tokens, budget, rows=rows, vocab_tile=width,
                                       held_tokens=held_tokens, position_chunk=position_chunk), 1, most)


def speed_chunk(budget: Budget, n_tokens: int) -> int:
    """Positions per chunk that make a long prompt faster on this device (0: run it whole)."""
    return CPU_POSITION_CHUNK if budget.on_cpu and n_tokens > CPU_CHUNK_FROM else 0


def position_chunk(dims: ModelDims, n_tokens: int, budget: Budget) -> int:
    """Positions per chunk for a scan whose whole prompt does not fit: the longest that fits (halving
    from the prompt's length down to MIN_POSITION_CHUNK), 0 when the whole prompt fits."""
    if _fits("scan", dims, 1, n_tokens, budget):
        return 0
    chunk = n_tokens
    while chunk > MIN_POSITION_CHUNK:
        chunk = max(MIN_POSITION_CHUNK, chunk // 2)
        if _fits("scan", dims, 1, n_tokens, budget, position_chunk=chunk,
                 vocab_tile=readout_tile(1, chunk)):
            return chunk
    return 0


def truncation_windows(dims: ModelDims, batch: int, n_tokens: int, budget: Budget) -> int:
    """Truncated prompts per pass: as many as fit, at most MAX_WINDOWS."""
    return _largest(lambda n: _fits("truncate", dims, batch, n_tokens, budget, windows=n), 1, MAX_WINDOWS)


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
    keep_clean_bytes: int = 0  # scan, patch: core/horizon.py clean_runs' keep_bytes (0: made batch by batch)

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
        """Memory the staircase passes may take (scan, patch): core/horizon.py's ``max_pass_bytes``."""
        rest = costs(self.analysis, self.dims, self.batch_size, self.n_tokens, **{**self.tiling, "rows": 0})
        return max(1, self.budget.working - sum(rest.values()))

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, **self.tiling, "predicted_peak_bytes": self.peak_bytes,
                **self.budget.to_json()}


def plan(analysis: str, dims: ModelDims, token_lengths: list[int], budget: Budget,
         requested: int | None = None) -> Plan:
    """Batch size and tiles for ``analysis`` on prompts of ``token_lengths`` (raises when nothing fits).

    Scan and patch keep every prompt's clean run when they fit in half the working budget, and
    make them batch by batch otherwise.
    """
    if not token_lengths:
        raise HorizonError("no prompts to plan for")
    n_tokens = max(token_lengths)
    tiling: dict[str, int] = {}
    keep = 0
    if analysis in ("scan", "patch"):
        held = n_tokens * len(token_lengths)  # padded: an upper bound
        if clean_run_bytes(dims, held) <= budget.working // 2:
            keep, tiling["held_tokens"] = clean_run_bytes(dims, held), held
    needed = position_chunk(dims, n_tokens, budget) if analysis == "scan" else 0  # for memory
    faster = speed_chunk(budget, n_tokens) if analysis in ("scan", "norms") else 0
    if (needed or faster) and dims.chunks_refused is not None and (why := dims.chunks_refused()):
        if needed:
            fits = f"{n_tokens} tokens fit in {format_size(budget.total)} only in position chunks"
            raise HorizonError(f"{fits}, and {why}")
        faster = 0  # chunks were only for speed: the whole pass gives the right numbers, slower
    if analysis == "scan" and (chunk := needed or faster):
        tiling = {"position_chunk": chunk}  # chunked clean runs are never kept
        keep = 0
    elif analysis == "norms" and faster:
        tiling["position_chunk"] = faster
    # truncate's --batch-size counts truncated prompts per pass; its full prompts' batch is always chosen
    batch = choose_batch_size(analysis, dims, n_tokens, budget, len(token_lengths),
                              None if analysis == "truncate" else requested, tiling.get("held_tokens", 0),
                              tiling.get("position_chunk", 0))
    if analysis == "scan":
        chunk = tiling.get("position_chunk", 0)
        tiling["vocab_tile"] = readout_tile(batch, chunk or n_tokens)
        tiling["rows"] = staircase_rows(dims, batch, n_tokens, budget, tiling.get("held_tokens", 0),
                                        position_chunk=chunk)
    elif analysis == "truncate":
        if requested is not None:  # no more truncated prompts per pass than the batch has positions
            requested = min(requested, max(1, batch * n_tokens))
        if requested is not None and not _fits(analysis, dims, batch, n_tokens, budget, windows=requested):
            raise _too_big(analysis, dims, n_tokens, budget, batch, windows=requested)
        tiling["windows"] = requested or truncation_windows(dims, batch, n_tokens, budget)
    return Plan(analysis=analysis, budget=budget, batch_size=batch, n_tokens=n_tokens, dims=dims, tiling=tiling,
                keep_clean_bytes=keep)
