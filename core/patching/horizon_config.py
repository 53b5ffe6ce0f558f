"""The effective layer horizon's configuration (docs/SCIENCE.md section 3): ``HorizonConfig`` (K, the
source of the window, the final readout, the start or only layer, the ablation) and which reader it
patches; the model check every horizon run makes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from horizon.core.capture.decomposition import n_readers, output_hook, reader_hook, reader_layer
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.options import ABLATIONS, FINALS, SOURCES, UNITS

DEFAULT_TOL = 0.1

@dataclass(frozen=True)
class HorizonConfig:
    """One enforced horizon: K in sublayers plus the docs/SCIENCE.md section 3 options."""

    horizon_sublayers: int
    source: str = "recursive"
    keep_embed: bool = False
    final: str = "window"
    start_layer: int = 0
    # zero: outputs outside the window count as zero; mean: as their clean means (AblationMeans).
    ablation: str = "zero"
    # Enforce the horizon at this layer's readers only (L: the final readout); None: every layer >= start_layer.
    only_layer: int | None = None

    def __post_init__(self) -> None:
        if self.horizon_sublayers < 1:
            raise HorizonError(f"the horizon must be at least 1 sublayer, got {self.horizon_sublayers}")
        if self.source not in SOURCES:
            raise HorizonError(f"unknown source {self.source!r}: use recursive or clean")
        if self.final not in FINALS:
            raise HorizonError(f"unknown final readout {self.final!r}: use window or full")
        if self.start_layer < 0:
            raise HorizonError(f"the start layer must be >= 0, got {self.start_layer}")
        if self.ablation not in ABLATIONS:
            raise HorizonError(f"unknown ablation {self.ablation!r}: use zero or mean")
        if self.only_layer is not None:
            if self.only_layer < 0:
                raise HorizonError(f"the only layer must be >= 0, got {self.only_layer}")
            if self.start_layer:
                raise HorizonError("--only-layer and --start-layer are exclusive: give one of them")

    def check_layers(self, n_layers: int) -> None:
        """Refuse an only layer beyond the final readout (layer L)."""
        if self.only_layer is not None and self.only_layer > n_layers:
            raise HorizonError(f"--only-layer {self.only_layer} is out of range: use 0..{n_layers} "
                               f"(or final; {n_layers} is the final readout)")

    @classmethod
    def from_layers(cls, k: int, **options: Any) -> HorizonConfig:
        """Horizon of k layers = K = 2k sublayers (the CLI's --k)."""
        if k < 1:
            raise HorizonError(f"--k must be at least 1, got {k}")
        return cls(horizon_sublayers=2 * k, **options)

    @classmethod
    def from_unit(cls, k: int, unit: str = "layer", **options: Any) -> HorizonConfig:
        """--k in layers (K = 2k) or, with unit="sublayer", in sublayers (K = k)."""
        check_unit(unit)
        if k < 1:
            raise HorizonError(f"--k must be at least 1, got {k}")
        return cls(horizon_sublayers=2 * k if unit == "layer" else k, **options)

    def patches(self, j: int, n_layers: int) -> bool:
        """Whether reader j reads the window instead of the residual stream."""
        if j == n_readers(n_layers) and self.final == "full":
            return False
        if j <= self.horizon_sublayers:  # the window still reaches s_0: it is the whole stream
            return False
        if self.only_layer is not None:
            return reader_layer(j) == self.only_layer
        return reader_layer(j) >= self.start_layer

    def last_patched_reader(self, n_layers: int) -> int:
        """The last reader that may read a window (with only_layer N < L: mlp_N = reader 2N+2)."""
        final = n_readers(n_layers)
        return final if self.only_layer is None else min(final, 2 * self.only_layer + 2)

    def first_patched_reader(self, n_layers: int) -> int | None:
        """The first reader the window bites (every later one is patched too); None: a clean run."""
        for j in range(1, n_readers(n_layers) + 1):
            if self.patches(j, n_layers):
                return j
        return None


def check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise HorizonError(f"unknown unit {unit!r}: use layer or sublayer")


def horizon_sublayers(k: int, unit: str) -> int:
    check_unit(unit)
    return 2 * k if unit == "layer" else k


def check_model(model: LoadedModel) -> None:
    """Refuse architectures whose hooks do not match the sublayer decomposition."""
    if model.parallel_attn_mlp:
        raise HorizonError(
            f"{model.spec} runs attention and MLP in parallel (both read resid_pre), so the "
            "sequential sublayer horizon is not defined for it"
        )
    names = model.bridge.hook_dict
    wanted = [reader_hook(j, model.n_layers) for j in range(1, n_readers(model.n_layers) + 1)]
    wanted += [output_hook(j) for j in range(1, 2 * model.n_layers + 1)]
    missing = [name for name in wanted if name not in names]
    blocks = getattr(model.bridge, "blocks", None)
    if missing or blocks is None or len(blocks) != model.n_layers:
        first = missing[0] if missing else "blocks"
        raise HorizonError(
            f"{model.spec} ({model.architecture}) is not hooked like a pre-norm sequential transformer "
            f"(no {first}); the horizon patch cannot run on it"
        )
