"""A sweep's settings: which analyses with which options, how the corpus is split into shards.

The work unit is a *shard*: ``shard_size`` consecutive prompts. ``--shard I/N`` gives worker I
the shards whose id is I modulo N, so N workers (processes, machines, Ray actors) split a corpus
deterministically and write into one directory.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass, field
from typing import Any

from horizon.core import analyses as registry
from horizon.core import options
from horizon.core.errors import HorizonError
from horizon.core.model.corpus import check_max_tokens
from horizon.core.options import DEFAULT_LENGTHS

DEFAULT_SHARD_SIZE = 8
PACKAGES = ("horizon-inspector", "torch", "transformer-lens", "transformers", "pyarrow", "numpy", "ray")


@dataclass(frozen=True)
class ShardSpec:
    """``--shard I/N``: this worker takes the shards whose id is ``index`` modulo ``count``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> ShardSpec:
        if text is None:
            return cls()
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise HorizonError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise HorizonError(f"--shard {text}: I must be in 0..N-1 and N at least 1")
        return cls(index, count)

    def owns(self, shard_id: int) -> bool:
        return shard_id % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class SweepSettings:
    """Everything that changes the numbers of a sweep (recorded in the manifest, checked on resume)."""

    analyses: list[str] = field(default_factory=lambda: list(registry.names()))
    max_tokens: int | None = None
    bos: bool = True
    bos_token: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    ks: list[int] | None = None  # None: every k from 1 to L+1 (the scan default)
    start_layers: list[int] = field(default_factory=lambda: [0])
    tol: float = 0.1
    source: str = "recursive"
    keep_embed: bool = False
    final: str = "window"
    ablation: str = "zero"  # scan: "mean" replaces outputs outside the window by their corpus-wide means
    by_layer: bool = False  # scan: also the layer x k matrix (the horizon enforced at one layer N only)

    def validate(self) -> None:
        if not self.analyses:
            raise HorizonError("--analyses is empty")
        known = registry.names()
        unknown = [name for name in self.analyses if name not in known]
        if unknown:
            raise HorizonError(f"unknown analysis {unknown[0]!r}: choose from {', '.join(known)}")
        self.analyses = [name for name in known if name in self.analyses]  # canonical order, no repeats
        check_max_tokens(self.max_tokens)
        options.check_at_least(self.shard_size, "--shard-size", 1)
        needs_bos = [name for name in self.analyses if registry.REGISTRY[name].needs_bos]
        if needs_bos and not self.bos:
            raise HorizonError(f"the {needs_bos[0]} analysis needs BOS (truncated prompts keep it): drop --no-bos "
                               f"or leave {needs_bos[0]} out of --analyses")
        self.tol = options.check_tol(self.tol)
        options.check_ablation(self.ablation)
        options.check_lengths(self.lengths)
        options.check_ks(self.ks)
        options.check_start_layers(self.start_layers)

    def validate_for_model(self, n_layers: int, n_ctx: int) -> None:
        """The checks that need the model (layer indices, lengths against its size): each analysis's own."""
        for name in self.analyses:
            check = registry.REGISTRY[name].check_settings
            if check is not None:
                check(self, n_layers, n_ctx)

    def analysis_settings(self, n_layers: int) -> dict[str, dict[str, Any]]:
        """Per analysis, the settings that define its numbers (each analysis says which: core/analyses)."""
        return {name: registry.REGISTRY[name].settings(self, n_layers) for name in self.analyses}


def plan_shards(n_prompts: int, shard_size: int) -> list[list[int]]:
    """Consecutive groups of prompt indices: shard i holds prompts i*size .. (i+1)*size - 1."""
    return [list(range(start, min(start + shard_size, n_prompts))) for start in range(0, n_prompts, shard_size)]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
