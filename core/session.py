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
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from horizon.core.errors import HorizonError

if TYPE_CHECKING:  # the app imports this module before torch is loaded, so it can paint at once
    from horizon.core.loader import LoadedModel

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
    ablation: str = "zero"
    only_layer: int | None = None  # set: the horizon at this layer only (start_layer is then ignored)


@runtime_checkable
class Source(Protocol):
    """What the app reads its numbers from: a live model (``Session``) or a results directory (``ResultsSession``).

    Reading is separate from computing. ``ready(key)`` and the ``cached_*`` helpers only look a
    result up (None when it is not built yet): the UI thread calls only these. The named
    methods (``norms()``, ``truncation()``, ``attention(prompt)``, ``scan(prompt, ablation)``,
    ``by_layer(prompt, ablation)``, ``patch(settings, prompt)``) compute and cache, and are
    called from worker threads. Keys: ``"norms"``, ``"truncation"``, ``("attention", prompt)``,
    ``("scan", prompt)`` (``("scan", prompt, "mean")`` for mean ablation),
    ``("by_layer", prompt, ablation)``, ``(PatchSettings, prompt)``.
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
    def label(self) -> str: ...
    def tokens(self, prompt: int = 0) -> list[str]: ...
    def ready(self, key: Any) -> Any | None: ...
    def cached_scan(self, prompt: int = 0, ablation: str = "zero") -> Any | None: ...
    def cached_by_layer(self, prompt: int = 0, ablation: str = "zero") -> Any | None: ...
    def cached_patch(self, settings: PatchSettings, prompt: int = 0) -> Any | None: ...
    def norms(self) -> Any: ...
    def truncation(self) -> Any: ...
    def attention(self, prompt: int = 0) -> Any: ...
    def scan(self, prompt: int = 0, ablation: str = "zero") -> Any: ...
    def by_layer(self, prompt: int = 0, ablation: str = "zero") -> Any: ...
    def patch(self, settings: PatchSettings, prompt: int = 0) -> Any: ...


def _scan_key(prompt: int, ablation: str) -> tuple:
    # The zero-ablation scan keeps its original key, which the app's background queue uses.
    return ("scan", prompt) if ablation == "zero" else ("scan", prompt, ablation)


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
    _waiting: int = 0  # patched passes waiting for the lock (the scan yields to them)
    _clean_runs: OrderedDict[int, Any] = field(default_factory=OrderedDict, repr=False)
    clean_cache_size: int = 4  # prompts whose clean runs are kept (each ~100 MB at 64 tokens)
    _counter_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.token_ids or len(self.token_ids) != len(self.prompts):
            raise HorizonError("a session needs one token list per prompt")
        from horizon.core.prompts import decode_tokens

        self._tokens = [decode_tokens(self.model, ids) for ids in self.token_ids]

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
            return self._cache[key]

    def ready(self, key: Any) -> Any | None:
        """A result already computed (or None): never computes, so the UI can draw without waiting."""
        if isinstance(key, tuple) and key and isinstance(key[0], PatchSettings):
            return self._patches.get(key)
        return self._cache.get(key)

    cached = ready  # the name the app used first

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

    def _clean(self, prompt: int) -> Any:
        """The prompt's clean runs (core.horizon.clean_runs), shared by the scan and every patched pass."""
        from horizon.core.horizon import clean_runs

        with self._lock:
            return _lru(self._clean_runs, prompt, self.clean_cache_size,
                        lambda: clean_runs(self.model, [self.token_ids[prompt]], has_bos=self.has_bos))

    def _ablation_means(self, prompt: int, ablation: str) -> Any:
        """Mean ablation's means: the prompt's own clean run (core.horizon.ablation_means), else None."""
        if ablation != "mean":
            return None
        from horizon.core.horizon import ablation_means

        return self._cached(("means", prompt), "means", lambda: ablation_means(self._clean(prompt)))

    def scan(self, prompt: int = 0, chunk: int = 8, ablation: str = "zero") -> Any:
        """ScanResult of one prompt over every k (core.horizon.scan), run ``chunk`` ks at a time.

        Between chunks the lock is handed to any waiting patched pass, so a slider move is not
        stuck behind the whole scan; the rows are the engine's, and so is the effective horizon.
        """
        from horizon.core.horizon import ScanResult, default_ks, effective_horizon, scan

        key = _scan_key(prompt, ablation)
        if key in self._cache:
            return self._cache[key]
        started = time.perf_counter()
        ks = default_ks(self.n_layers, "layer")
        rows: list[dict[str, Any]] = []
        part = None
        for first in range(0, len(ks), chunk):
            while self._waiting:  # let a patched pass in first
                time.sleep(0.005)
            with self._lock:
                part = scan(self.model, [self.token_ids[prompt]], ks=ks[first : first + chunk],
                            cleans=self._clean(prompt), ablation=ablation,
                            means=self._ablation_means(prompt, ablation))
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

    def by_layer(self, prompt: int = 0, ablation: str = "zero", chunk: int = 4) -> Any:
        """ByLayerResult of one prompt (core.horizon.scan_by_layer), run ``chunk`` ks at a time.

        Like ``scan``, it hands the lock to waiting patched passes between chunks; the parts are
        joined by the engine (core.horizon.join_by_layer), which also gives each row's horizon.
        """
        from horizon.core.horizon import default_ks, join_by_layer, scan_by_layer

        key = ("by_layer", prompt, ablation)
        if key in self._cache:
            return self._cache[key]
        started = time.perf_counter()
        ks = default_ks(self.n_layers, "layer")
        parts = []
        for first in range(0, len(ks), chunk):
            while self._waiting:
                time.sleep(0.005)
            with self._lock:
                parts.append(scan_by_layer(self.model, [self.token_ids[prompt]], ks=ks[first : first + chunk],
                                           cleans=self._clean(prompt), ablation=ablation,
                                           means=self._ablation_means(prompt, ablation)))
        result = join_by_layer(parts)
        with self._lock:
            self._cache[key] = result
            self.timings["by_layer"] = time.perf_counter() - started
        return result

    def patch(self, settings: PatchSettings, prompt: int = 0) -> Any:
        """PatchResult of one prompt under ``settings`` (core.horizon.patch), LRU-cached."""
        key = (settings, prompt)
        with self._counter_lock:
            self._waiting += 1
        try:
            return self._patch_locked(settings, prompt, key)
        finally:
            with self._counter_lock:
                self._waiting -= 1

    def _patch_locked(self, settings: PatchSettings, prompt: int, key: Any) -> Any:
        from horizon.core.horizon import HorizonConfig, patch

        config = HorizonConfig.from_layers(
            settings.k, source=settings.source, keep_embed=settings.keep_embed, final=settings.final,
            start_layer=settings.start_layer if settings.only_layer is None else 0,
            ablation=settings.ablation, only_layer=settings.only_layer,
        )
        with self._lock:
            return _lru(self._patches, key, self.patch_cache_size, lambda: self._timed(
                "patch", lambda: patch(self.model, [self.token_ids[prompt]], config, cleans=self._clean(prompt),
                                       means=self._ablation_means(prompt, settings.ablation))
            ))

    def cached_patch(self, settings: PatchSettings, prompt: int = 0) -> Any | None:
        return self.ready((settings, prompt))

    def cached_scan(self, prompt: int = 0, ablation: str = "zero") -> Any | None:
        return self.ready(_scan_key(prompt, ablation))

    def cached_by_layer(self, prompt: int = 0, ablation: str = "zero") -> Any | None:
        return self.ready(("by_layer", prompt, ablation))


def _lru(cache: OrderedDict[Any, T], key: Any, size: int, compute: Callable[[], T]) -> T:
    """``cache[key]``, computed on a miss; the least recently used entries beyond ``size`` go."""
    if key not in cache:
        cache[key] = compute()
        while len(cache) > size:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


# ----------------------------------------------------------------------------- results mode


class ResultsSession:
    """A results directory behind the ``Source`` protocol: stored numbers, no model needed.

    The corpus-wide views are those of ``horizon report`` (core/views.py); each is turned into
    the engine's own result type by its analysis (core/analyses): a TruncationReport of every
    stored record, a NormsReport with the per-prompt resid_pre norms, the corpus ScanResult, and
    per prompt the AttentionReport of that prompt's stored rows. ``ready`` only looks results up;
    the named methods build them (reading and sorting Parquet: call them from a worker thread),
    once, under a lock. With a ``live`` model (same prompts), patched passes can be rerun;
    otherwise ``can_patch`` is False.
    """

    def __init__(self, path: str, live_model: LoadedModel | None = None) -> None:
        from horizon.core import store
        from horizon.core.views import corpus_views

        self.results = store.open_results(path)
        if self.results.manifest is None:
            raise HorizonError(f"{path} is not a results directory written by horizon sweep")
        manifest = self.results.manifest
        self.views = corpus_views(self.results)
        self.timings: dict[str, float] = {}
        self.has_bos = bool(manifest.get("bos", {}).get("enabled", True))
        self.model_info = manifest.get("model") or {}
        self.spec = str(self.model_info.get("spec", "?"))
        prompts_table = self.results.table("prompts")
        if prompts_table is None or self.results.table("tokens") is None:
            raise HorizonError(f"{path} holds no intact shard yet")
        # Prompts are numbered by their corpus index; only those of intact shards are shown.
        numbers = [int(n) for n in prompts_table.column("prompt").to_pylist()]
        texts = prompts_table.column("text").to_pylist()
        order = sorted(range(len(numbers)), key=lambda i: numbers[i])
        self.prompt_numbers = [numbers[i] for i in order]
        self.prompts = [texts[i] for i in order]
        ids_by_number, texts_by_number = self.results.prompt_tokens()
        self.token_ids = [ids_by_number[n] if n < len(ids_by_number) else [] for n in self.prompt_numbers]
        self._tokens = [texts_by_number[n] if n < len(texts_by_number) else [] for n in self.prompt_numbers]
        self.n_layers = int(self.model_info.get("n_layers") or self._infer_layers())
        self.lengths = tuple(manifest.get("analyses", {}).get("truncate", {}).get("lengths", DEFAULT_LENGTHS))
        self._row_of = {number: row for row, number in enumerate(self.prompt_numbers)}
        self._cache: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self.live = Session(live_model, self.prompts, self.token_ids, self.has_bos) if live_model else None
        self.model = live_model

    def _infer_layers(self) -> int:
        attention = self.views.get("attention")
        if attention:
            return int(attention["n_layers"])
        raise HorizonError("the results directory does not record the model's number of layers")

    @property
    def can_patch(self) -> bool:
        return self.live is not None

    @property
    def label(self) -> str:
        return f"{self.spec} results {self.results.path.name}"

    def tokens(self, prompt: int = 0) -> list[str]:
        return self._tokens[prompt]

    # Reading what is ready ---------------------------------------------------------------

    def ready(self, key: Any) -> Any | None:
        """The result under ``key`` when it is built (never builds: safe on the UI thread)."""
        if isinstance(key, tuple) and key and key[0] == "scan":
            key = "scan"  # one stored scan (swept with the ablation its manifest records)
        if isinstance(key, tuple) and key and key[0] == "by_layer":
            return None if self.live is None else self.live.ready(key)
        if isinstance(key, tuple) and key and isinstance(key[0], PatchSettings):
            return None if self.live is None else self.live.ready(key)
        return self._cache.get(key)

    cached = ready  # the name the app used first

    def cached_scan(self, prompt: int = 0, ablation: str = "zero") -> Any | None:
        return self.ready("scan")

    def cached_by_layer(self, prompt: int = 0, ablation: str = "zero") -> Any | None:
        return self.ready(("by_layer", prompt, ablation))

    def cached_patch(self, settings: PatchSettings, prompt: int = 0) -> Any | None:
        return self.ready((settings, prompt))

    # Computing (worker threads) ----------------------------------------------------------

    def _built(self, key: Any, name: str, build: Callable[[], T]) -> T:
        with self._lock:  # one build per key, even when two workers ask at once
            if key not in self._cache:
                start = time.perf_counter()
                self._cache[key] = build()
                self.timings[name] = time.perf_counter() - start
            return self._cache[key]

    def truncation(self) -> Any:
        """TruncationReport of every stored record (prompts numbered as shown), or None when not stored."""
        return self._built("truncation", "truncation", self._truncation)

    def norms(self) -> Any:
        """NormsReport: the corpus statistics of ``report`` and each shown prompt's resid_pre norms."""
        return self._built("norms", "norms", self._norms)

    def attention(self, prompt: int = 0) -> Any:
        """AttentionReport of one prompt, from that prompt's stored rows (None when not stored)."""
        return self._built(("attention", prompt), "attention", lambda: self._attention(prompt))

    def scan(self, prompt: int = 0, ablation: str = "zero") -> Any:
        """The stored corpus scan as a ScanResult (swept with the ablation its manifest records)."""
        return self._built("scan", "scan", self._scan)

    def by_layer(self, prompt: int = 0, ablation: str = "zero") -> Any:
        """The layer x k matrix of one prompt: computed by the live session (a results directory holds none)."""
        if self.live is None:
            raise HorizonError("results mode has no model: pass --model to compute the layer x k matrix")
        return self.live.by_layer(prompt, ablation)

    def patch(self, settings: PatchSettings, prompt: int = 0) -> Any:
        if self.live is None:
            raise HorizonError("results mode has no model: pass --model to rerun patched passes")
        return self.live.patch(settings, prompt)

    # Building the stored results -----------------------------------------------------------

    def _truncation(self) -> Any:
        from horizon.core.analyses.truncate import report_from_rows

        table = self.results.table("truncation")
        if table is None or "truncate" not in self.views:
            return None
        return report_from_rows(table, self.token_ids, self.spec, prompt_row=self._row_of)

    def _norms(self) -> Any:
        from horizon.core.analyses.norms import report_from_rows

        view = self.views.get("norms")
        table = self.results.table("norms", columns=["prompt", "position", "layer", "site", "norm", "std"])
        if view is None or table is None:
            return None
        return report_from_rows(view, table, self.prompt_numbers, self.has_bos, self.n_layers,
                                int(self.model_info.get("d_model") or 0))

    def _scan(self) -> Any:
        from horizon.core.horizon import ScanResult

        view = self.views.get("scan")
        if view is None:
            return None
        horizons = {int(layer): k for layer, k in view["effective_horizon"].items()}
        return ScanResult(rows=view["rows"], effective_horizon=horizons, loss_clean=view["loss_clean"],
                          tol=view["tol"], n_tokens=view["n_tokens"], unit=view.get("unit", "layer"))

    def _attention(self, prompt: int) -> Any:
        import numpy as np
        import pyarrow.compute as pc
        from horizon.core.analyses import attention
        from horizon.core.attention import AttentionReport

        table = self.results.table("attention")
        if table is None or "attention" not in self.views:
            return None
        rows = table.filter(pc.equal(table.column("prompt"), self.prompt_numbers[prompt]))
        if rows.num_rows == 0:
            return None
        view = attention.view(None, rows, {}, self.has_bos)

        def array(matrix: list[list[float | None]]) -> Any:
            return np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=np.float64)

        return AttentionReport(
            model=self.spec, token_ids=[self.token_ids[prompt]], n_layers=view["n_layers"], n_heads=view["n_heads"],
            has_bos=self.has_bos, n_queries=view["n_queries"],
            mean_distance=array(view["mean_distance"]), mean_distance_no_bos=array(view["mean_distance_no_bos"]),
            mass={k: array(v) for k, v in view["mass"].items()},
            mass_no_bos={k: array(v) for k, v in view["mass_no_bos"].items()},
        )
