"""A UI-free facade over the analysis engines for one model and one set of prompts.

The inspector calls these methods from worker threads. Every result is computed by the engine
modules (norms, horizon, truncation, attention) and cached here; this module adds no science,
only caching, a lock and timings. The lock matters: forward hooks are registered on the shared
model's modules, so two passes must never run at once on one model.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from horizon.core.errors import HorizonError
from horizon.core.loader import LoadedModel
from horizon.core.prompts import decode_tokens

T = TypeVar("T")
DEFAULT_LENGTHS = (1, 5, 10)


@dataclass(frozen=True)
class PatchSettings:
    """The horizon options of one patched pass, hashable so results can be cached by them."""

    k: int
    start_layer: int = 0
    source: str = "recursive"
    keep_embed: bool = False
    final: str = "window"


@dataclass
class Session:
    """One model, its prompts, and every analysis computed on them so far."""

    model: LoadedModel
    prompts: list[str]
    token_ids: list[list[int]]
    has_bos: bool = True
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    patch_cache_size: int = 64
    timings: dict[str, float] = field(default_factory=dict)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    _patches: OrderedDict[Any, Any] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        if not self.token_ids or len(self.token_ids) != len(self.prompts):
            raise HorizonError("a session needs one token list per prompt")
        self._tokens = [decode_tokens(self.model, ids) for ids in self.token_ids]

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    def tokens(self, prompt: int = 0) -> list[str]:
        return self._tokens[prompt]

    def _timed(self, name: str, compute: Callable[[], T]) -> T:
        with self._lock:
            start = time.perf_counter()
            result = compute()
            self.timings[name] = time.perf_counter() - start
            return result

    def _cached(self, key: Any, name: str, compute: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._timed(name, compute)
            return self._cache[key]

    def cached(self, key: Any) -> Any | None:
        """A result already computed (or None): lets the UI draw without waiting."""
        return self._cache.get(key)

    # -------------------------------------------------------------------- analyses

    def norms(self) -> Any:
        """NormsReport over all prompts (core.norms.analyse_norms)."""
        from horizon.core.norms import analyse_norms

        return self._cached("norms", "norms", lambda: analyse_norms(self.model, self.token_ids, self.has_bos))

    def truncation(self) -> Any:
        """TruncationReport over all prompts at the session's lengths (core.truncation)."""
        from horizon.core.truncation import analyse_truncation

        return self._cached(
            "truncation", "truncation",
            lambda: analyse_truncation(self.model, self.token_ids, lengths=self.lengths),
        )

    def attention(self, prompt: int = 0) -> Any:
        """AttentionReport of one prompt (core.attention.attention_distance)."""
        from horizon.core.attention import attention_distance

        return self._cached(
            ("attention", prompt), "attention",
            lambda: attention_distance(self.model, [self.token_ids[prompt]], self.has_bos),
        )

    def scan(self, prompt: int = 0) -> Any:
        """ScanResult of one prompt over every k (core.horizon.scan)."""
        from horizon.core.horizon import scan

        return self._cached(("scan", prompt), "scan", lambda: scan(self.model, [self.token_ids[prompt]]))

    def patch(self, settings: PatchSettings, prompt: int = 0) -> Any:
        """PatchResult of one prompt under ``settings`` (core.horizon.patch), LRU-cached."""
        from horizon.core.horizon import HorizonConfig, patch

        key = (settings, prompt)
        with self._lock:
            if key in self._patches:
                self._patches.move_to_end(key)
                return self._patches[key]
            config = HorizonConfig.from_layers(
                settings.k, source=settings.source, keep_embed=settings.keep_embed,
                final=settings.final, start_layer=settings.start_layer,
            )
            result = self._timed("patch", lambda: patch(self.model, [self.token_ids[prompt]], config))
            self._patches[key] = result
            while len(self._patches) > self.patch_cache_size:
                self._patches.popitem(last=False)
            return result

    def cached_patch(self, settings: PatchSettings, prompt: int = 0) -> Any | None:
        return self._patches.get((settings, prompt))
