"""A UI-free facade over the analysis engines for one model and one set of prompts.

The inspector asks for results by typed query (``get(query)``, core/sources/queries.py), from
worker threads; ``get`` calls the analysis's method below. Every result is computed through the
session's ``Runner`` (core/run/runner.py: the memory budget of every pass, and the lock every forward
holds) and cached here; this module adds no science, only caching and timings. The lock matters:
forward hooks are registered on the shared model's modules, so two passes must never run at once
on one model. The same runner plans every pass's batch and tiles, as the CLI's do.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, runtime_checkable

from horizon.core.errors import HorizonError
from horizon.core.options import DEFAULT_LENGTHS
from horizon.core.sources.queries import PATCH, AnalysisQuery, Query, answer
from horizon.core.sources.queries import PatchSettings as PatchSettings  # the app reads it from here

if TYPE_CHECKING:  # the app imports this module before torch is loaded, so it can paint at once
    from horizon.core.analyses.attention import AttentionReport
    from horizon.core.analyses.norms import NormsReport
    from horizon.core.analyses.scan import ByLayerResult, ScanResult
    from horizon.core.analyses.truncate import TruncationReport
    from horizon.core.model.loader import LoadedModel
    from horizon.core.patching.horizon import PatchResult
    from horizon.core.run.runner import Runner

T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class Source(Protocol):
    """What the app reads its numbers from: a live model (``Session``) or a results directory (``ResultsSession``).

    Results are asked for by typed key, a ``Query[R]`` (core/sources/queries.py: the analysis, the
    prompt, the analysis's settings). Reading is separate from computing: ``ready(query)`` only
    looks a result up (None when it is not built yet), and the UI thread calls only it;
    ``get(query)`` computes the result once, caches it and returns it, and is called from worker
    threads. Both are ``R | None``: a results directory may not hold an analysis (then ``get`` is
    None), where a live ``Session`` always computes one. ``Query.weights()`` is the weight report
    of a model behind the source (figures 5 and 6; None where there is none: ``can_weigh``).
    ``Query.of(name)`` is a registered analysis's own result, by its registry entry's hooks (``live`` in a
    ``Session``, ``stored`` in a ``ResultsSession``; None where the entry has no such hook).

    The sessions also keep one method per analysis (``norms()``, ``scan(prompt, ablation)``, ...,
    which ``get`` calls): conveniences for the Python API and tests, not part of this protocol.
    """

    prompts: list[str]
    token_ids: list[list[int]]
    has_bos: bool
    lengths: tuple[int, ...]
    timings: dict[str, float]

    @property
    def n_layers(self) -> int: ...
    @property
    def can_patch(self) -> bool: ...
    @property
    def can_weigh(self) -> bool: ...
    @property
    def label(self) -> str: ...
    def tokens(self, prompt: int = 0) -> list[str]: ...
    def ready(self, query: Query[R]) -> R | None: ...
    def get(self, query: Query[R]) -> R | None: ...


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
    runner: Runner | None = field(default=None, repr=False)  # default: the model under the automatic budget
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    _patches: OrderedDict[Any, PatchResult] = field(default_factory=OrderedDict, repr=False)
    _waiting: int = 0  # patched passes waiting for the lock (the scan yields to them)
    _clean_runs: OrderedDict[int, Any] = field(default_factory=OrderedDict, repr=False)
    clean_cache_size: int = 4  # prompts whose clean runs are kept (each ~100 MB at 64 tokens)
    _counter_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.token_ids or len(self.token_ids) != len(self.prompts):
            raise HorizonError("a session needs one token list per prompt")
        from horizon.core.model.prompts import decode_tokens
        from horizon.core.run.runner import Runner

        if self.runner is None:
            self.runner = Runner(self.model)
        elif self.runner.model is not self.model:
            raise HorizonError("a session's runner must hold the session's model")
        self._tokens = [decode_tokens(self.model, ids) for ids in self.token_ids]

    @property
    def _runner(self) -> Runner:
        assert self.runner is not None  # set in __post_init__
        return self.runner

    @property
    def _lock(self) -> threading.RLock:
        """The runner's lock: every forward pass on the model, the app's and any other caller's, holds it."""
        return self._runner.lock

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    @property
    def can_patch(self) -> bool:
        return True

    @property
    def label(self) -> str:
        return f"{self.model.spec} {self.model.device.type}"

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
            return cast(T, self._cache[key])

    def ready(self, query: Query[R]) -> R | None:
        """A result already computed (or None): never computes, so the UI can draw without waiting."""
        patched = query.analysis == PATCH and not isinstance(query, AnalysisQuery)
        found = self._patches.get(query) if patched else self._cache.get(query)
        return cast("R | None", found)

    def get(self, query: Query[R]) -> R | None:
        """``query``'s result, computed (once) by its analysis's method below: call from a worker thread."""
        return cast("R | None", answer(self, query))

    # -------------------------------------------------------------------- analyses

    def norms(self) -> NormsReport:
        """NormsReport over all prompts (core.norms.analyse_norms, through the runner)."""
        return self._cached(Query.norms(), "norms", lambda: self._runner.norms(self.token_ids, self.has_bos).result)

    def truncate(self) -> TruncationReport:
        """TruncationReport over all prompts at the session's lengths (core.truncation, through the runner)."""
        return self._cached(Query.truncate(), "truncate",
                            lambda: self._runner.truncate(self.token_ids, self.lengths).result)

    def attention(self, prompt: int = 0) -> AttentionReport:
        """AttentionReport of one prompt (core.attention.attention_distance, through the runner)."""
        return self._cached(Query.attention(prompt), "attention",
                            lambda: self._runner.attention([self.token_ids[prompt]], self.has_bos).result)

    @property
    def can_weigh(self) -> bool:
        return True

    def weights(self) -> dict[str, Any]:
        """The raw weights' report on the session's prompts (core.weights.weight_report, through the runner)."""
        return self._cached(Query.weights(), "weights",
                            lambda: self._runner.weights(self.token_ids, self.has_bos).result)

    def analysis(self, name: str) -> Any:
        """A registered analysis's result over all prompts by its ``live`` hook (core/analyses/base.py), run
        under the session's runner and its lock; None when it has no such hook."""
        from horizon.core.analyses import REGISTRY

        entry = REGISTRY.get(name)  # unregistered since its query was made: no result
        live = None if entry is None else entry.live
        if live is None:
            return None
        return self._cached(Query.of(name), name, lambda: live(self._runner, self.token_ids, self.has_bos))

    def _clean(self, prompt: int) -> Any:
        """The prompt's clean runs (core.horizon.clean_runs), shared by the scan and every patched pass:
        planned as a patched pass's (whole prompts, kept when the budget has room)."""
        ids = [self.token_ids[prompt]]
        with self._lock:
            return _lru(self._clean_runs, prompt, self.clean_cache_size,
                        lambda: self._runner.clean_runs(ids, self.has_bos, self._runner.plan("patch", ids)))

    def _ablation_means(self, prompt: int, ablation: str) -> Any:
        """Mean ablation's means: the prompt's own clean run (core.horizon.ablation_means), else None."""
        if ablation != "mean":
            return None
        return self._cached(("means", prompt), "means", lambda: self._runner.ablation_means(self._clean(prompt)))

    def scan(self, prompt: int = 0, ablation: str = "zero", *, chunk: int = 8) -> ScanResult:
        """ScanResult of one prompt over every k (core.horizon.scan), run ``chunk`` ks at a time.

        Between chunks the lock is handed to any waiting patched pass, so a slider move is not
        stuck behind the whole scan; the rows are the engine's, and so is the effective horizon.
        """
        from horizon.core.analyses.scan.engine import ScanResult, default_ks, effective_horizon

        key = Query.scan(prompt, ablation)
        if key in self._cache:
            return cast("ScanResult", self._cache[key])
        started = time.perf_counter()
        ids = [self.token_ids[prompt]]
        plan = self._runner.plan("scan", ids)
        ks = default_ks(self.n_layers, "layer")
        rows: list[dict[str, Any]] = []
        part = None
        for first in range(0, len(ks), chunk):
            while self._waiting:  # let a patched pass in first
                time.sleep(0.005)
            with self._lock:
                part = self._runner.scan(ids, ks=ks[first : first + chunk], plan=plan, cleans=self._clean(prompt),
                                         ablation=ablation, means=self._ablation_means(prompt, ablation)).result
            rows.extend(part.rows)
        assert part is not None
        result = ScanResult(
            rows=rows, effective_horizon={0: effective_horizon(rows, 0, part.tol)}, loss_clean=part.loss_clean,
            tol=part.tol, n_tokens=part.n_tokens, unit=part.unit,
        )
        with self._lock:
            self._cache[key] = result
            self.timings["scan"] = time.perf_counter() - started
        return result

    def by_layer(self, prompt: int = 0, ablation: str = "zero", *, chunk: int = 4) -> ByLayerResult:
        """ByLayerResult of one prompt (core.horizon.scan_by_layer), run ``chunk`` ks at a time.

        Like ``scan``, it hands the lock to waiting patched passes between chunks; the parts are
        joined by the engine (core.horizon.join_by_layer), which also gives each row's horizon.
        """
        from horizon.core.analyses.scan.engine import default_ks, join_by_layer

        key = Query.by_layer(prompt, ablation)
        if key in self._cache:
            return cast("ByLayerResult", self._cache[key])
        started = time.perf_counter()
        ids = [self.token_ids[prompt]]
        plan = self._runner.plan("scan", ids)
        ks = default_ks(self.n_layers, "layer")
        parts: list[ByLayerResult] = []
        for first in range(0, len(ks), chunk):
            while self._waiting:
                time.sleep(0.005)
            with self._lock:
                parts.append(self._runner.by_layer(ids, ks=ks[first : first + chunk], plan=plan,
                                                   cleans=self._clean(prompt), ablation=ablation,
                                                   means=self._ablation_means(prompt, ablation)).result)
        result = join_by_layer(parts)
        with self._lock:
            self._cache[key] = result
            self.timings["by_layer"] = time.perf_counter() - started
        return result

    def patch(self, settings: PatchSettings, prompt: int = 0) -> PatchResult:
        """PatchResult of one prompt under ``settings`` (core.horizon.patch), LRU-cached."""
        key = Query.patch(settings, prompt)
        with self._counter_lock:
            self._waiting += 1
        try:
            return self._patch_locked(settings, prompt, key)
        finally:
            with self._counter_lock:
                self._waiting -= 1

    def _patch_locked(self, settings: PatchSettings, prompt: int, key: Query[PatchResult]) -> PatchResult:
        from horizon.core.patching.horizon import HorizonConfig

        config = HorizonConfig.from_layers(
            settings.k, source=settings.source, keep_embed=settings.keep_embed, final=settings.final,
            start_layer=settings.start_layer if settings.only_layer is None else 0,
            ablation=settings.ablation, only_layer=settings.only_layer,
        )
        ids = [self.token_ids[prompt]]
        with self._lock:
            return _lru(self._patches, key, self.patch_cache_size, lambda: self._timed(
                "patch", lambda: self._runner.patch(ids, config, has_bos=self.has_bos, cleans=self._clean(prompt),
                                                    means=self._ablation_means(prompt, settings.ablation)).result
            ))


def _lru(cache: OrderedDict[Any, T], key: Any, size: int, compute: Callable[[], T]) -> T:
    """``cache[key]``, computed on a miss; the least recently used entries beyond ``size`` go."""
    if key not in cache:
        cache[key] = compute()
        while len(cache) > size:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


if TYPE_CHECKING:  # make test's type check sees here that the live session matches the protocol
    _SESSION_IS_A_SOURCE: type[Source] = Session
