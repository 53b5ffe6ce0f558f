"""What a run may use: the model's dimensions (``ModelDims``) and the device's memory budget (``Budget``).

A budget bounds the peak memory of the whole run. Its *fixed* part is resident before any analysis
starts (``fixed_bytes``: the weights plus the runtime, or what is resident now if more); the rest is
the *working* part an analysis may use. ``make_budget`` takes ``--max-memory`` in bytes, or (None) a
safe share of the free CUDA memory or of MemAvailable on CPU (``default_budget``). torch is imported
lazily, only on the CUDA paths. Part of the memory budget, whose public face is core/memory/budget.py.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError
from horizon.core.memory.sizes import format_size

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel

# The share of free memory an automatic budget takes (the rest: the allocator's slack, other processes).
CUDA_FRACTION = 0.85
CPU_FRACTION = 0.7
# What torch, transformers and the bridge hold besides the weights once the model has run (CPU RSS,
# measured: ~490 MB). Added to the weights because the resident set before the first forward
# understates both (the weights are mapped and read in lazily).
RUNTIME_BYTES = 480 << 20


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
