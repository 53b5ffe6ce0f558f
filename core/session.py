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
from typing import TYPE_CHECKING, Any, TypeVar

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
        return self._patches.get((settings, prompt))

    def cached_scan(self, prompt: int = 0, ablation: str = "zero") -> Any | None:
        return self._cache.get(_scan_key(prompt, ablation))

    def cached_by_layer(self, prompt: int = 0, ablation: str = "zero") -> Any | None:
        return self._cache.get(("by_layer", prompt, ablation))


def _lru(cache: OrderedDict[Any, T], key: Any, size: int, compute: Callable[[], T]) -> T:
    """``cache[key]``, computed on a miss; the least recently used entries beyond ``size`` go."""
    if key not in cache:
        cache[key] = compute()
        while len(cache) > size:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


# ----------------------------------------------------------------------------- results mode


@dataclass
class StoredTruncation:
    """The truncation records of a results directory, shaped like TruncationReport's arrays."""

    n_layers: int
    record_prompt: Any
    record_pos: Any
    record_length: Any
    record_token: list[str]
    record_category: list[str]
    cos: Any  # [N, L+1]


@dataclass
class StoredNorms:
    """Per-prompt resid_pre norms from the store plus the corpus aggregates of `horizon report`."""

    n_layers: int
    has_bos: bool
    norms: dict[str, list[Any]]  # "resid_pre" -> per prompt [L+1, T] (None where not stored)
    stats: dict[str, Any]
    growth: Any
    bos_mean_norm: Any


@dataclass
class StoredScan:
    """The corpus scan of `horizon report` (rows, effective horizon per start layer, clean loss, tol)."""

    rows: list[dict[str, Any]]
    effective_horizon: dict[int, int | None]
    loss_clean: float
    tol: float
    ablation: str = "zero"


class ResultsSession:
    """A results directory behind the Session interface: stored numbers, no model needed.

    The corpus-wide views (norm aggregates, growth, scan, attention) are those of
    ``horizon report`` (core.sweep.corpus_views); per-token values (cosines, norms) come from the
    stored tables of the prompt shown. With a ``live`` Session (same prompts, a loaded model),
    patched passes can be rerun; otherwise ``can_patch`` is False.
    """

    def __init__(self, path: str, live_model: LoadedModel | None = None) -> None:
        import numpy as np
        from horizon.core import store
        from horizon.core.sweep import corpus_views

        self.results = store.open_results(path)
        if self.results.manifest is None:
            raise HorizonError(f"{path} is not a results directory written by horizon sweep")
        manifest = self.results.manifest
        self.views = corpus_views(self.results)
        self.timings: dict[str, float] = {}
        self.has_bos = bool(manifest.get("bos", {}).get("enabled", True))
        model_info = manifest.get("model") or {}
        self.spec = str(model_info.get("spec", "?"))
        prompts_table = self.results.table("prompts")
        tokens_table = self.results.table("tokens")
        if prompts_table is None or tokens_table is None:
            raise HorizonError(f"{path} holds no intact shard yet")
        # Prompts are numbered by their corpus index; only those of intact shards are shown.
        numbers = [int(n) for n in prompts_table.column("prompt").to_pylist()]
        texts = prompts_table.column("text").to_pylist()
        order = sorted(range(len(numbers)), key=lambda i: numbers[i])
        self.prompt_numbers = [numbers[i] for i in order]
        self.prompts = [texts[i] for i in order]
        row_of = {number: row for row, number in enumerate(self.prompt_numbers)}
        self.token_ids: list[list[int]] = [[] for _ in self.prompts]
        self._tokens: list[list[str]] = [[] for _ in self.prompts]
        t_prompt = tokens_table.column("prompt").to_numpy()
        t_pos = tokens_table.column("position").to_numpy()
        t_ids = tokens_table.column("token_id").to_pylist()
        t_text = tokens_table.column("token").to_pylist()
        for index in np.lexsort((t_pos, t_prompt)):
            row = row_of.get(int(t_prompt[index]))
            if row is not None:
                self.token_ids[row].append(int(t_ids[index]))
                self._tokens[row].append(str(t_text[index]))
        self.n_layers = int(model_info.get("n_layers") or self._infer_layers())
        self.lengths = tuple(manifest.get("analyses", {}).get("truncate", {}).get("lengths", DEFAULT_LENGTHS))
        self._row_of = row_of
        self._cache: dict[Any, Any] = {}
        self.live = Session(live_model, self.prompts, self.token_ids, self.has_bos) if live_model else None
        self.model = live_model

    def _infer_layers(self) -> int:
        attention = self.views.get("attention")
        if attention:
            return int(attention["n_layers"])
        raise HorizonError("the results directory does not record the model's number of layers")

    # The Session interface the app uses ------------------------------------------------

    @property
    def can_patch(self) -> bool:
        return self.live is not None

    @property
    def label(self) -> str:
        return f"{self.spec} results {self.results.path.name}"

    def tokens(self, prompt: int = 0) -> list[str]:
        return self._tokens[prompt]

    def cached(self, key: Any) -> Any | None:
        name = key[0] if isinstance(key, tuple) else key
        if name not in self._cache:
            self._cache[name] = self._build(name)
        return self._cache[name]

    def truncation(self) -> Any:
        return self.cached("truncation")

    def norms(self) -> Any:
        return self.cached("norms")

    def attention(self, prompt: int = 0) -> Any:
        return self.cached("attention")

    def scan(self, prompt: int = 0, ablation: str | None = None) -> Any:
        """The stored corpus scan (swept with the ablation its manifest records)."""
        return self.cached("scan")

    def by_layer(self, prompt: int = 0, ablation: str = "zero") -> Any:
        """The layer x k matrix of one prompt: computed by the live session (a results directory holds none)."""
        if self.live is None:
            raise HorizonError("results mode has no model: pass --model to compute the layer x k matrix")
        return self.live.by_layer(prompt, ablation)

    def cached_by_layer(self, prompt: int = 0, ablation: str = "zero") -> Any | None:
        return None if self.live is None else self.live.cached_by_layer(prompt, ablation)

    def cached_scan(self, prompt: int = 0, ablation: str = "zero") -> Any | None:
        return self.cached("scan")

    def patch(self, settings: PatchSettings, prompt: int = 0) -> Any:
        if self.live is None:
            raise HorizonError("results mode has no model: pass --model to rerun patched passes")
        return self.live.patch(settings, prompt)

    def cached_patch(self, settings: PatchSettings, prompt: int = 0) -> Any | None:
        return None if self.live is None else self.live.cached_patch(settings, prompt)

    # Building the stored views -----------------------------------------------------------

    def _build(self, name: str) -> Any:
        builders = {
            "truncation": self._stored_truncation, "norms": self._stored_norms,
            "scan": self._stored_scan, "attention": self._stored_attention,
        }
        return builders[name]() if name in builders else None

    def _stored_truncation(self) -> StoredTruncation | None:
        import numpy as np

        table = self.results.table("truncation")
        if table is None or "truncate" not in self.views:
            return None
        layer = table.column("layer").to_numpy()
        n_rows = int(layer.max()) + 1
        prompt = table.column("prompt").to_numpy()
        position = table.column("position").to_numpy()
        length = table.column("length").to_numpy()
        order = np.lexsort((layer, position, length, prompt))
        first = order[layer[order] == 0]  # one record per (prompt, position, length)
        rows = np.array([self._row_of.get(int(p), -1) for p in prompt[first]])
        return StoredTruncation(
            n_layers=n_rows - 1,
            record_prompt=rows,
            record_pos=position[first],
            record_length=length[first],
            record_token=[str(t) for t in np.asarray(table.column("token").to_pylist(), dtype=object)[first]],
            record_category=[str(c) for c in np.asarray(table.column("category").to_pylist(), dtype=object)[first]],
            cos=table.column("cos").to_numpy()[order].reshape(-1, n_rows).astype(np.float64),
        )

    def _stored_norms(self) -> StoredNorms | None:
        import numpy as np
        from horizon.core.norms import Growth

        view = self.views.get("norms")
        table = self.results.table("norms")
        if view is None or table is None:
            return None
        site = table.column("site")
        if hasattr(site.type, "value_type"):  # dictionary-encoded
            site = site.cast(site.type.value_type)
        keep = np.asarray(site.to_numpy(zero_copy_only=False) == "resid_pre")
        per_prompt = _PerPromptMatrix(
            self.prompt_numbers,
            table.column("prompt").to_numpy()[keep], table.column("layer").to_numpy()[keep],
            table.column("position").to_numpy()[keep], table.column("norm").to_numpy()[keep].astype(np.float64),
        )
        n_rows = per_prompt.n_rows
        growth = dict(view["growth"])
        growth["fit_layers"] = tuple(growth["fit_layers"])
        stats = {name: _Namespace(mean_norm=np.asarray(entry["mean_norm"], dtype=np.float64))
                 for name, entry in view["sites"].items()}
        bos = view.get("bos", {}).get("mean_norm")
        return StoredNorms(
            n_layers=n_rows - 1, has_bos=self.has_bos, norms={"resid_pre": per_prompt}, stats=stats,
            growth=Growth(**growth), bos_mean_norm=None if bos is None else np.asarray(bos, dtype=np.float64),
        )

    def _stored_scan(self) -> StoredScan | None:
        view = self.views.get("scan")
        if view is None:
            return None
        horizons = {int(layer): k for layer, k in view["effective_horizon"].items()}
        return StoredScan(rows=view["rows"], effective_horizon=horizons, loss_clean=view["loss_clean"], tol=view["tol"],
                          ablation=view.get("ablation", "zero"))

    def _stored_attention(self) -> Any:
        import numpy as np
        from horizon.core.attention import AttentionReport

        view = self.views.get("attention")
        if view is None:
            return None

        def array(matrix: list[list[float | None]]) -> Any:
            return np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=np.float64)

        return AttentionReport(
            model=self.spec, token_ids=self.token_ids, n_layers=view["n_layers"], n_heads=view["n_heads"],
            has_bos=self.has_bos, n_queries=view["n_queries"],
            mean_distance=array(view["mean_distance"]), mean_distance_no_bos=array(view["mean_distance_no_bos"]),
            mass={k: array(v) for k, v in view["mass"].items()},
            mass_no_bos={k: array(v) for k, v in view["mass_no_bos"].items()},
        )


class _PerPromptMatrix:
    """prompt row -> its [layers, positions] matrix, assembled from long-format rows on first use.

    Rows are sorted by prompt once, so a sweep of many prompts costs one sort, not one scan each.
    """

    def __init__(self, numbers: list[int], prompt: Any, layer: Any, position: Any, value: Any) -> None:
        import numpy as np

        order = np.argsort(prompt, kind="stable")
        self.numbers = numbers
        self.prompt, self.layer, self.position, self.value = prompt[order], layer[order], position[order], value[order]
        self.n_rows = int(layer.max()) + 1 if len(layer) else 0
        self._built: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, row: int) -> Any:
        import numpy as np

        if row not in self._built:
            number = self.numbers[row]
            start, stop = np.searchsorted(self.prompt, [number, number + 1])
            if stop == start:
                self._built[row] = None
            else:
                positions = self.position[start:stop]
                matrix = np.full((self.n_rows, int(positions.max()) + 1), np.nan)
                matrix[self.layer[start:stop], positions] = self.value[start:stop]
                self._built[row] = matrix
        return self._built[row]


class _Namespace:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)
