"""``ResultsSession``: the app's ``Source`` (core/sources/session.py) over a results directory, no model needed;
``ComparedResults``: several results directories for the app's Compare screen (core/sources/compare.py's table)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from horizon.core.errors import HorizonError
from horizon.core.sources.queries import BY_LAYER, PATCH, SCAN, WEIGHTS, AnalysisQuery, Query, answer

if TYPE_CHECKING:
    from horizon.core.analyses.attention import AttentionReport
    from horizon.core.analyses.norms import NormsReport
    from horizon.core.analyses.scan import ByLayerResult, ScanResult
    from horizon.core.analyses.truncate import TruncationReport
    from horizon.core.model.loader import LoadedModel
    from horizon.core.patching.horizon import PatchResult
    from horizon.core.run.runner import Runner
    from horizon.core.sources.session import PatchSettings, Source

T = TypeVar("T")
R = TypeVar("R")


class ResultsSession:
    """A results directory behind the ``Source`` protocol: stored numbers, no model needed.

    The corpus-wide views are those of ``horizon report`` (core/results/views.py); each is turned into
    the engine's own result type by its analysis (core/analyses): a TruncationReport of every
    stored record, a NormsReport with the per-prompt resid_pre norms, the corpus ScanResult, per
    prompt the layer x k matrix a ``--by-layer`` sweep stored (the ByLayerResult the engine gave
    that prompt) and the AttentionReport of that prompt's stored rows. ``ready`` only looks results up;
    ``get`` and the named methods it calls build them (reading and sorting Parquet: call them from a
    worker thread), once, under a lock. With a ``live`` model (same prompts), patched passes can be rerun;
    otherwise ``can_patch`` is False.
    """

    def __init__(self, path: str, live_model: LoadedModel | None = None, runner: Runner | None = None) -> None:
        from horizon.core.options import DEFAULT_LENGTHS
        from horizon.core.results import store
        from horizon.core.results.views import corpus_views
        from horizon.core.sources.session import Session

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
        self.token_ids = [ids_by_number[n] for n in self.prompt_numbers]  # [] where a prompt has no token rows
        self._tokens = [texts_by_number[n] for n in self.prompt_numbers]
        self.n_layers = int(self.model_info.get("n_layers") or self._infer_layers())
        self.lengths = tuple(manifest.get("analyses", {}).get("truncate", {}).get("lengths", DEFAULT_LENGTHS))
        self._row_of = {number: row for row, number in enumerate(self.prompt_numbers)}
        self._cache: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self.live = (Session(live_model, self.prompts, self.token_ids, self.has_bos, runner=runner) if live_model
                     else None)
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

    def ready(self, query: Query[R]) -> R | None:
        """The result ``query`` names when it is built (never builds: safe on the UI thread)."""
        return cast("R | None", self._ready(query))

    def _ready(self, query: Query[Any]) -> Any:
        if isinstance(query, AnalysisQuery):  # an analysis's own result, by its name whatever that is
            return self._cache.get(query)
        if query.analysis == SCAN:
            return self._cache.get(SCAN)  # one stored scan, whatever the prompt (swept with the manifest's ablation)
        if query.analysis == BY_LAYER:
            stored = self._cache.get(BY_LAYER) or {}
            if query.ablation == self.scan_ablation and query.prompt in stored:
                return stored[query.prompt]
            return None if self.live is None else self.live.ready(query)
        if query.analysis in (PATCH, WEIGHTS):  # a model's: the live session's, if any
            return None if self.live is None else self.live.ready(query)
        return self._cache.get(query)

    # Computing (worker threads) ----------------------------------------------------------

    def get(self, query: Query[R]) -> R | None:
        """``query``'s result, built (once) by its analysis's method below: call from a worker thread."""
        return cast("R | None", answer(self, query))

    def _built(self, key: Any, name: str, build: Callable[[], T]) -> T:
        with self._lock:  # one build per key, even when two workers ask at once
            if key not in self._cache:
                start = time.perf_counter()
                self._cache[key] = build()
                self.timings[name] = time.perf_counter() - start
            return cast(T, self._cache[key])

    def truncate(self) -> TruncationReport | None:
        """TruncationReport of every stored record (prompts numbered as shown), or None when not stored."""
        return self._built(Query.truncate(), "truncate", self._truncation)

    def norms(self) -> NormsReport | None:
        """NormsReport: the corpus statistics of ``report`` and each shown prompt's resid_pre norms."""
        return self._built(Query.norms(), "norms", self._norms)

    def attention(self, prompt: int = 0) -> AttentionReport | None:
        """AttentionReport of one prompt, from that prompt's stored rows (None when not stored)."""
        return self._built(Query.attention(prompt), "attention", lambda: self._attention(prompt))

    def scan(self, prompt: int = 0, ablation: str = "zero") -> ScanResult | None:
        """The stored corpus scan as a ScanResult (swept with the ablation its manifest records).

        The stored layer x k matrices are read with it: the app's background scan job is what
        results mode runs, and the Horizon screen's matrix view then finds them ready."""
        self._built(BY_LAYER, "by_layer", self._by_layer)
        return self._built(SCAN, "scan", self._scan)

    def by_layer(self, prompt: int = 0, ablation: str = "zero") -> ByLayerResult:
        """The layer x k matrix of one prompt: the one a ``--by-layer`` sweep stored (for its ablation),
        else computed by the live session."""
        stored = self._built(BY_LAYER, "by_layer", self._by_layer)
        if ablation == self.scan_ablation and prompt in stored:
            return stored[prompt]
        if self.live is None:
            raise HorizonError("results mode has no model and the sweep stored no layer x k matrix for "
                               f"{ablation} ablation: sweep with --by-layer or pass --model to compute it")
        return self.live.by_layer(prompt, ablation)

    def analysis(self, name: str) -> Any:
        """A registered analysis's result rebuilt from its stored table by its ``stored`` hook
        (core/analyses/base.py) for the prompts shown, in their order; None when it has no such hook."""
        from horizon.core.analyses import REGISTRY

        entry = REGISTRY.get(name)  # unregistered since its query was made: no result
        stored = None if entry is None else entry.stored
        if stored is None:
            return None
        return self._built(Query.of(name), name, lambda: stored(self.results, self.prompt_numbers))

    @property
    def can_weigh(self) -> bool:
        """Whether ``weights()`` has a model to weigh (results mode with --model)."""
        return self.live is not None

    def weights(self) -> dict[str, Any] | None:
        """The weight report of the model given with the directory (its live session's runner), else None:
        a results directory stores no weights."""
        return None if self.live is None else self.live.weights()

    def patch(self, settings: PatchSettings, prompt: int = 0) -> PatchResult:
        if self.live is None:
            raise HorizonError("results mode has no model: pass --model to rerun patched passes")
        return self.live.patch(settings, prompt)

    # Building the stored results -----------------------------------------------------------

    def _truncation(self) -> TruncationReport | None:
        from horizon.core.analyses.truncate import report_from_rows

        table = self.results.table("truncate")
        if table is None or "truncate" not in self.views:
            return None
        return report_from_rows(table, self.token_ids, self.spec, prompt_row=self._row_of)

    def _norms(self) -> NormsReport | None:
        from horizon.core.analyses.norms import report_from_rows

        view = self.views.get("norms")
        table = self.results.table("norms", columns=["prompt", "position", "layer", "site", "norm", "std"])
        if view is None or table is None:
            return None
        return report_from_rows(view, table, self.prompt_numbers, self.has_bos, self.n_layers,
                                int(self.model_info.get("d_model") or 0))

    def _scan(self) -> ScanResult | None:
        from horizon.core.analyses.scan import report_from_view

        view = self.views.get("scan")
        return None if view is None else report_from_view(view)

    @property
    def scan_ablation(self) -> str:
        """The ablation the sweep's scan (and its layer x k matrix) ran with."""
        settings = (self.results.manifest or {}).get("analyses", {}).get("scan", {})
        return str(settings.get("ablation", "zero"))

    def _by_layer(self) -> dict[int, ByLayerResult]:
        """Each shown prompt's stored layer x k matrix, by its row here (empty when none was stored)."""
        from horizon.core.analyses.scan import by_layer_from_rows

        table = self.results.table("scan")
        if table is None or "scan" not in self.views:
            return {}
        tol = float(self.views["scan"].get("tol", 0.1))
        stored = by_layer_from_rows(table, tol, self.scan_ablation)
        return {row: stored[number] for number, row in self._row_of.items() if number in stored}

    def _attention(self, prompt: int) -> AttentionReport | None:
        import pyarrow.compute as pc
        from horizon.core.analyses.attention import report_from_rows

        table = self.results.table("attention")
        if table is None or "attention" not in self.views:
            return None
        rows = table.filter(pc.equal(table.column("prompt"), self.prompt_numbers[prompt]))
        if rows.num_rows == 0:
            return None
        return report_from_rows(rows, self.spec, [self.token_ids[prompt]], self.has_bos)


if TYPE_CHECKING:  # make test's type check sees here that results mode matches the protocol
    _RESULTS_ARE_A_SOURCE: type[Source] = ResultsSession


# ----------------------------------------------------------------------------- several directories


@dataclass(frozen=True)
class Comparison:
    """What the app's Compare screen draws: ``horizon compare``'s table and one figure input per directory.

    ``table`` is ``core.compare.compare``'s JSON (``models``: one row per directory, ``warnings``);
    ``inputs`` the directories' ``FigureInput`` in the same order; ``labels`` each directory's
    path -> its unique label (the screen names directories by label: paths are long)."""

    table: dict[str, Any]
    inputs: list[Any]
    labels: dict[str, str]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.table["models"])

    def warnings(self) -> list[str]:
        """The table's warnings with each directory's path replaced by its label (raw text: escape to show)."""
        lines = []
        for line in self.table["warnings"]:
            for path in sorted(self.labels, key=len, reverse=True):  # longest first: no path inside another
                line = line.replace(path, self.labels[path])
            lines.append(line)
        return lines


class ComparedResults:
    """Several results directories for the Compare screen; ``load`` reads them (a worker thread), once.

    Every number comes from ``core/sources/compare.py`` (the corpus views and the stored norms, no torch)."""

    def __init__(self, paths: list[str]) -> None:
        if len(paths) < 2:
            raise HorizonError("comparing needs two or more results directories")
        self.paths = [str(path) for path in paths]
        self._comparison: Comparison | None = None
        self._lock = threading.Lock()

    def ready(self) -> Comparison | None:
        """The comparison once loaded (never loads: safe on the UI thread)."""
        return self._comparison

    def load(self, progress: Callable[[int, int], None] | None = None) -> Comparison:
        """Read every directory and build the table and figure inputs; ``progress(done, total)`` per step.

        Steps: one per directory read, one per directory's figure input (its stored norms)."""
        from horizon.core.sources import compare

        with self._lock:
            if self._comparison is not None:
                return self._comparison
            total = 2 * len(self.paths)

            def read(done: int, _: int) -> None:
                if progress is not None:
                    progress(done, total)

            loaded = compare.load_all(self.paths, progress=read)
            inputs = []
            for item in loaded:
                inputs.append(compare.figure_input(item))
                read(len(loaded) + len(inputs), total)
            self._comparison = Comparison(table=compare.compare(loaded), inputs=inputs,
                                          labels={str(item.path): item.label for item in loaded})
            return self._comparison
