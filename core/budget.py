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
- ``format_size(n) -> "1.3 GB"``.
- ``ModelDims.of(model)``: the dimensions the cost model needs (or build one from a config).
- ``default_budget(device, fixed=None) -> Budget``: a safe fraction of free CUDA memory
  (``torch.cuda.mem_get_info``) or of MemAvailable on CPU, plus what is already resident.
- ``make_budget(max_memory, dims, device) -> Budget``: ``--max-memory`` (bytes or None = auto).
- ``costs(analysis, dims, batch, n_tokens, **tiling) -> dict[str, int]``: working bytes by part;
  ``peak_bytes(...)`` is their sum. Analyses: ``ANALYSES`` (norms, scan, patch, truncate,
  attention). Tiling keywords: ``rows`` (staircase rows per pass, scan/patch), ``windows``
  (truncated prompts per pass, truncate), ``vocab_tile`` (columns per readout tile, scan/patch).
- ``choose_batch_size(analysis, dims, n_tokens, budget, n_prompts=1, requested=None) -> int``:
  the largest batch that fits (at most ``n_prompts`` and ``MAX_BATCH``); ``requested`` (an
  explicit ``--batch-size N``) wins but is still refused when it cannot fit.
- ``staircase_rows(dims, batch, n_tokens, budget)``, ``truncation_windows(dims, n_tokens,
  budget)``, ``vocab_tile(dims, batch, n_tokens, budget)``: the tile sizes.
- ``plan(analysis, dims, token_lengths, budget, requested=None) -> Plan``: all of it at once
  (batch size, tiles, predicted peak); raises HorizonError when it cannot fit.

torch is imported lazily (only ``default_budget`` and ``ModelDims.of`` touch it), so the
sweep's planner and option checks stay light.
"""

from __future__ import annotations

import re
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
# What torch, transformers and the bridge hold besides the weights before any analysis (CPU RSS),
# used when the plan is made without a loaded model to measure.
RUNTIME_BYTES = 350 << 20
# Vocabulary columns per readout tile (cache-sized), and the narrowest tile a tight budget may use.
VOCAB_TILE = 2048
MIN_VOCAB_TILE = 256
# Truncated prompts per forward pass, at most (the windows are short: the batch is their only size).
MAX_WINDOWS = 256

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

    @classmethod
    def of(cls, model: LoadedModel) -> ModelDims:
        cfg = model.bridge.cfg
        module = model.hf_model
        weights = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        return cls(
            n_layers=model.n_layers,
            d_model=model.d_model,
            n_heads=model.n_heads,
            d_mlp=int(getattr(cfg, "d_mlp", None) or 4 * model.d_model),
            vocab=int(cfg.d_vocab),
            element_bytes=int(next(module.parameters()).element_size()),
            weight_bytes=int(weights),
        )


@dataclass(frozen=True)
class Budget:
    """The memory a run may peak at (``total``), of which ``fixed`` is resident before it starts."""

    total: int
    fixed: int
    source: str  # how it was chosen, for messages and JSON

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
    if max_memory is None:
        return default_budget(device, fixed)
    return Budget(total=max_memory, fixed=fixed, source=f"--max-memory {format_size(max_memory)}")


# ----------------------------------------------------------------------------- the cost model


def _forward(dims: ModelDims, batch: int, n_tokens: int, logits: bool) -> dict[str, int]:
    """One eager forward pass: a layer's activations, its attention scores, and (when asked) the logits."""
    e, bt = dims.element_bytes, batch * n_tokens
    parts = {
        "activations": bt * (8 * dims.d_model + 3 * dims.d_mlp) * e,
        # Eager attention holds the scores, their softmax and the bridge's pattern hook copy; the
        # causal mask is one more [batch, T, T].
        "attention": batch * n_tokens * n_tokens * (3 * dims.n_heads + 1) * e,
    }
    if logits:
        parts["logits"] = bt * dims.vocab * 4
    return parts


def _clean_run(dims: ModelDims, batch: int, n_tokens: int) -> dict[str, int]:
    """A horizon clean run kept for its patched passes (core/horizon.py CleanRun)."""
    e, bt, readers = dims.element_bytes, batch * n_tokens, 2 * dims.n_layers + 1
    return {
        # sublayer outputs s_0..s_2L, resid_pre per layer, and their float64 prefix sums
        "clean outputs": bt * dims.d_model * ((readers + dims.n_layers) * e + readers * 8),
        # the clean logits, and the reference's tiled logits and probabilities (float32)
        "clean logits": bt * dims.vocab * (e + 2 * 4),
    }


def _row_bytes(dims: ModelDims, batch: int, n_tokens: int) -> int:
    """One staircase row (one config over the token batch) inside a batched pass."""
    e = dims.element_bytes
    live_prefixes = 2 * dims.n_layers + 2  # float64 prefix sums still to be subtracted, at most
    per_position = dims.d_model * (live_prefixes * 8 + 8 * e) + 3 * dims.d_mlp * e + 3 * dims.n_heads * n_tokens * e
    return batch * n_tokens * per_position


def costs(analysis: str, dims: ModelDims, batch: int, n_tokens: int, rows: int = 1, windows: int = 1,
          vocab_tile: int = VOCAB_TILE) -> dict[str, int]:
    """Working bytes of one pass of ``analysis`` by part (the fixed part, weights and runtime, excluded)."""
    if analysis not in ANALYSES:
        raise HorizonError(f"unknown analysis {analysis!r}: use one of {', '.join(ANALYSES)}")
    bt = batch * n_tokens
    if analysis == "norms":
        parts = _forward(dims, batch, n_tokens, logits=False)
        parts["norms"] = 5 * (dims.n_layers + 1) * 2 * bt * 8 * 2  # per-position numbers, float32 then float64
        return parts
    if analysis == "attention":
        parts = _forward(dims, batch, n_tokens, logits=False)
        # the reducer: the pattern in float32 (and without its BOS column), the distance weights
        parts["pattern statistics"] = batch * n_tokens * n_tokens * (2 * dims.n_heads * 4) + 10 * n_tokens**2 * 4
        return parts
    if analysis == "truncate":
        rows_bytes = (dims.n_layers + 1) * dims.d_model * 4
        parts = _forward(dims, batch, n_tokens, logits=False)
        parts["full residuals"] = bt * rows_bytes * 2  # the batch's residuals at every position (and mu's pass)
        # each pass of truncated prompts: its last positions, the full ones gathered, centred copies
        parts["truncated windows"] = windows * (rows_bytes * 6 + 16 * dims.d_model * 4)
        return parts
    # scan and patch: the clean run, then staircase passes of ``rows`` configs with a tiled readout
    parts = _forward(dims, batch, n_tokens, logits=True)
    parts.update(_clean_run(dims, batch, n_tokens))
    parts["staircase rows"] = rows * _row_bytes(dims, batch, n_tokens)
    if analysis == "patch":  # the readout holds each config's whole logits
        parts["readout"] = rows * bt * dims.vocab * 4
    else:  # one vocabulary tile of every row in the readout chunk, and the metrics' temporaries
        parts["readout"] = max(1, rows) * bt * vocab_tile * 4 * 4
    return parts


def peak_bytes(analysis: str, dims: ModelDims, batch: int, n_tokens: int, **tiling: int) -> int:
    """The working bytes ``analysis`` peaks at (``costs`` summed)."""
    return sum(costs(analysis, dims, batch, n_tokens, **tiling).values())


def _too_big(analysis: str, dims: ModelDims, n_tokens: int, budget: Budget, batch: int, **tiling: int) -> HorizonError:
    parts = costs(analysis, dims, batch, n_tokens, **tiling)
    need = budget.fixed + sum(parts.values())
    largest = sorted(parts.items(), key=lambda item: -item[1])[:3]
    detail = " + ".join(f"{name} {format_size(size)}" for name, size in largest)
    what = f"batch {batch}" if batch > 1 else "one prompt"
    return HorizonError(
        f"{analysis} of a {n_tokens}-token prompt ({what}) needs at least {format_size(need)} "
        f"(resident {format_size(budget.fixed)} + {detail}), budget {format_size(budget.total)} "
        f"({budget.source}): raise --max-memory or use --max-tokens"
    )


def _smallest_tiling(analysis: str) -> dict[str, int]:
    return {"rows": 1, "windows": 1, "vocab_tile": MIN_VOCAB_TILE} if analysis in ("scan", "patch", "truncate") else {}


def choose_batch_size(analysis: str, dims: ModelDims, n_tokens: int, budget: Budget, n_prompts: int = 1,
                      requested: int | None = None) -> int:
    """The largest batch (prompts per pass) whose peak fits the budget with the smallest tiles.

    ``n_tokens`` is the longest prompt's length (batches are right-padded to it). ``requested``
    (an explicit --batch-size) is returned as is when it fits. Raises HorizonError with the
    numbers when even that (or batch 1) cannot fit.
    """
    tiling = _smallest_tiling(analysis)
    if requested is not None:
        if budget.fixed + peak_bytes(analysis, dims, requested, n_tokens, **tiling) > budget.total:
            raise _too_big(analysis, dims, n_tokens, budget, requested, **tiling)
        return requested
    if budget.fixed + peak_bytes(analysis, dims, 1, n_tokens, **tiling) > budget.total:
        raise _too_big(analysis, dims, n_tokens, budget, 1, **tiling)
    batch, most = 1, max(1, min(n_prompts, MAX_BATCH))
    while batch < most and budget.fixed + peak_bytes(analysis, dims, batch + 1, n_tokens, **tiling) <= budget.total:
        batch += 1
    return batch


def _largest(fits: Any, lo: int, hi: int) -> int:
    """The largest n in lo..hi with fits(n) (fits is monotone; lo is returned when nothing fits)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def staircase_rows(analysis: str, dims: ModelDims, batch: int, n_tokens: int, budget: Budget,
                   most: int | None = None, vocab_tile: int = VOCAB_TILE) -> int:
    """Configs per staircase pass (scan, patch): as many as fit, at least 1."""
    most = most or 2 * dims.n_layers + 2
    return _largest(lambda rows: budget.fixed + peak_bytes(analysis, dims, batch, n_tokens, rows=rows,
                                                           vocab_tile=vocab_tile) <= budget.total, 1, most)


def vocab_tile(dims: ModelDims, batch: int, n_tokens: int, budget: Budget) -> int:
    """Readout tile width: VOCAB_TILE (cache-sized) unless a tight budget needs narrower ones."""
    width = VOCAB_TILE
    def fits(width: int) -> bool:
        return budget.fixed + peak_bytes("scan", dims, batch, n_tokens, vocab_tile=width) <= budget.total

    while width > MIN_VOCAB_TILE and not fits(width):
        width //= 2
    return width


def truncation_windows(dims: ModelDims, batch: int, n_tokens: int, budget: Budget) -> int:
    """Truncated prompts per pass: as many as fit, at most MAX_WINDOWS."""
    return _largest(lambda n: budget.fixed + peak_bytes("truncate", dims, batch, n_tokens, windows=n) <= budget.total,
                    1, MAX_WINDOWS)


# ----------------------------------------------------------------------------- everything at once


@dataclass(frozen=True)
class Plan:
    """What one analysis run uses: its batch size and tiles under ``budget``, and the predicted peak."""

    analysis: str
    budget: Budget
    batch_size: int
    n_tokens: int
    dims: ModelDims
    tiling: dict[str, int] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return self.budget.fixed + self.working_bytes

    @property
    def working_bytes(self) -> int:
        return peak_bytes(self.analysis, self.dims, self.batch_size, self.n_tokens, **self.tiling)

    @property
    def pass_bytes(self) -> int:
        """Memory the staircase passes may take (scan, patch): core/horizon.py's ``max_pass_bytes``."""
        return max(1, self.budget.total - self.budget.fixed
                   - sum(costs(self.analysis, self.dims, self.batch_size, self.n_tokens, rows=0).values()))

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, **self.tiling, "predicted_peak_bytes": self.peak_bytes,
                **self.budget.to_json()}


def plan(analysis: str, dims: ModelDims, token_lengths: list[int], budget: Budget,
         requested: int | None = None) -> Plan:
    """Batch size and tiles for ``analysis`` on prompts of ``token_lengths`` (raises when nothing fits)."""
    if not token_lengths:
        raise HorizonError("no prompts to plan for")
    n_tokens = max(token_lengths)
    batch = choose_batch_size(analysis, dims, n_tokens, budget, len(token_lengths), requested)
    tiling: dict[str, int] = {}
    if analysis == "scan":
        tiling["vocab_tile"] = vocab_tile(dims, batch, n_tokens, budget)
        tiling["rows"] = staircase_rows(analysis, dims, batch, n_tokens, budget, vocab_tile=tiling["vocab_tile"])
    elif analysis == "patch":
        tiling["rows"] = 1
    elif analysis == "truncate":
        tiling["windows"] = truncation_windows(dims, batch, n_tokens, budget)
    return Plan(analysis=analysis, budget=budget, batch_size=batch, n_tokens=n_tokens, tiling=tiling, dims=dims)
