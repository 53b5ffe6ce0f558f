"""Mean ablation's means (docs/SCIENCE.md section 3): each sublayer output's mean, and its prefix sums.

The horizon engine (core/patching/horizon.py, core/patching/staircase.py) adds them where zero ablation adds nothing;
a sweep computes them once over the corpus (core/patching/horizon.py: ``corpus_ablation_means``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from horizon.core.capture.decomposition import n_readers
from horizon.core.errors import HorizonError
from horizon.core.model.prompts import TokenBatch

if TYPE_CHECKING:
    from horizon.core.patching.horizon import ChunkedClean, CleanRun, HorizonConfig


@dataclass
class AblationMeans:
    """m_0..m_{2L}: the clean run's mean of each sublayer output (docs/SCIENCE.md section 3, ablation).

    With ``ablation="mean"`` reader j reads h_j + m_0 + ... + m_{lo-1} (lo = max(0, j-K)): the
    outputs outside its window are replaced by their means instead of zero. ``mean[i]`` is the mean
    of s_i over the non-BOS positions of the analysed prompts (every position without a BOS); at
    the BOS position 0 the clean run's own s_i at position 0 is used (every prompt's is the same),
    so it is not stored here. A sweep computes these once over the whole corpus.
    """

    mean: torch.Tensor  # [2L+1, d_model] float64
    has_bos: bool = True
    n_positions: int = 0  # how many positions were averaged
    _fills: dict[tuple[int, bool, torch.dtype], torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.mean = self.mean.double()
        # M_i = m_0 + ... + m_{i-1}, i = 0..2L+1 (M_0 = 0).
        self.prefix = torch.cat((self.mean.new_zeros((1, self.mean.shape[-1])), self.mean.cumsum(dim=0)))

    def fill(self, lo: int, keep_embed: bool, dtype: torch.dtype) -> torch.Tensor:
        """What replaces s_0..s_{lo-1} at the non-BOS positions: M_lo, or M_lo - m_0 when s_0 is kept exact."""
        key = (lo, keep_embed, dtype)
        if key not in self._fills:
            value = self.prefix[lo] - (self.prefix[1] if keep_embed else 0)
            self._fills[key] = value.to(dtype)
        return self._fills[key]

    def check(self, n_layers: int, d_model: int) -> None:
        if tuple(self.mean.shape) != (n_readers(n_layers), d_model):
            raise HorizonError(f"the ablation means have shape {tuple(self.mean.shape)}; this model needs "
                               f"({n_readers(n_layers)}, {d_model})")
        if not bool(torch.isfinite(self.mean).all()):  # NaN would turn every ablated row into NaN, silently
            raise HorizonError("the ablation means hold NaN or infinite values; they cannot stand in for any output")


class MeanAccumulator:
    """Sums of each sublayer output over the positions that enter the ablation means."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0
        self.has_bos = True

    def add(self, outputs: torch.Tensor, batch: TokenBatch) -> None:
        """``outputs``: s_0..s_{2L} of one token batch [2L+1, batch, pos, d_model]."""
        mask = batch.stat_mask()  # real tokens, without the BOS position when there is one
        if self.total is None:  # a prompt's later position chunks have no BOS of their own
            self.has_bos = batch.has_bos
        summed = torch.stack([outputs[i][mask].double().sum(dim=0) for i in range(outputs.shape[0])])
        self.total = summed if self.total is None else self.total + summed
        self.count += int(mask.sum())

    def result(self) -> AblationMeans:
        if self.total is None or self.count == 0:
            raise HorizonError("mean ablation needs at least one position after the BOS to average over")
        if not bool(torch.isfinite(self.total).all()):
            raise HorizonError("the model's sublayer outputs overflow to NaN or inf on these prompts, so their means "
                               "(mean ablation) cannot be computed; try --dtype float32")
        return AblationMeans(self.total / self.count, self.has_bos, self.count)


def ablation_means(cleans: Sequence[CleanRun | ChunkedClean]) -> AblationMeans:
    """The means of the analysed prompts' own clean runs (chunk by chunk for a ``ChunkedClean``)."""
    accumulator = MeanAccumulator()
    for clean in cleans:
        for part in clean.parts():
            accumulator.add(part.outputs, part.batch)
    return accumulator.result()


def needs_means(configs: Iterable[HorizonConfig]) -> bool:
    return any(config.ablation == "mean" for config in configs)
