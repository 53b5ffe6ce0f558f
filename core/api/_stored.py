"""``horizon.open_results``, ``horizon.sweep`` and ``horizon.compare``: results directories from Python.

A results directory is read as ``horizon report`` reads it (core/results/store.py, the corpus views of
core/results/views.py; no model, no torch); each analysis is a ``Stored`` result: its view as JSON, its
Parquet table, its figures, and its engine result type rebuilt by the registry (as the app's
results mode does: core/sources/results_session.py).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError

from ._results import Result

if TYPE_CHECKING:
    import pyarrow as pa
    from horizon.core.sources.compare import FigureInput, Loaded

    from ._model import Model

STORED_FIGURES = {
    "norms": ("fig01-norm-growth", "fig02-norm-distribution", "fig03-position-norms", "fig04-sublayer-norms"),
    "scan": ("fig07-loss-vs-k", "fig08-layer-k-matrix"),
    "truncate": ("fig09-cosine", "fig10-categories"),
    "attention": ("fig11-attention-distance",),
}


class Stored(Result):
    """One analysis of a results directory: ``to_json()`` is its corpus view (``horizon report --json``'s entry),
    ``to_pandas()`` its table, ``report`` its engine result type rebuilt from the rows."""

    def __init__(self, name: str, results: Results) -> None:
        self.name, self._results, self.label = name, results, results.label
        self._payload = results.views.get(name) or {}
        self.figures = STORED_FIGURES.get(name, ())  # type: ignore[misc]
        self._report: Any = None

    @property
    def analysis(self) -> str:  # type: ignore[override]
        return self.name

    @property
    def report(self) -> Any:
        """The engine's result type (NormsReport, TruncationReport, ScanResult, AttentionReport over the corpus)."""
        if self._report is None:
            self._report = self._results._build(self.name)
        return self._report

    def to_arrow(self) -> pa.Table:
        from horizon.core.analyses import REGISTRY

        table = self._results.store.table(REGISTRY[self.name].table)
        if table is None:
            raise HorizonError(f"{self._results.path} holds no intact {self.name} shard")
        return table

    def figure_input(self) -> FigureInput:
        from horizon.core.sources.compare import figure_input

        return figure_input(self._results.loaded)

    def _title(self) -> str:
        return f"stored {self.name} of {self.label} ({self._results.path.name})"

    def summary(self) -> list[str]:
        return [f"corpus view with {', '.join(sorted(self._payload)) or 'nothing'}"]


class Results:
    """A results directory written by ``horizon sweep``: ``results["scan"]`` (or ``results.scan``) is its scan."""

    def __init__(self, path: str | Path) -> None:
        from horizon.core.sources import compare

        self.loaded: Loaded = compare.load(path)
        if self.loaded.results is None or self.loaded.results.manifest is None:
            raise HorizonError(f"{path} is not a results directory written by horizon sweep")
        self.store = self.loaded.results
        self.path = self.store.path
        self.label = self.loaded.label
        self.views = self.loaded.views
        self.sweep: dict[str, Any] | None = None  # set by horizon.sweep: the CLI's sweep --json payload
        self._session: Any = None

    @property
    def manifest(self) -> dict[str, Any]:
        return self.store.manifest or {}

    @property
    def problems(self) -> list[str]:
        return list(self.store.problems)

    @property
    def analyses(self) -> list[str]:
        """The analyses with at least one intact shard, in the registry's order."""
        return [name for name in self.store.analyses if name in self.views]

    def __getitem__(self, name: str) -> Stored:
        from horizon.core.analyses import REGISTRY

        if name not in REGISTRY:
            raise HorizonError(f"unknown analysis {name!r}: choose from {', '.join(REGISTRY)}")
        if name not in self.views:
            raise HorizonError(f"{self.path} has no {name} results")
        return Stored(name, self)

    def __getattr__(self, name: str) -> Stored:
        from horizon.core.analyses import REGISTRY

        if name in REGISTRY:
            return self[name]
        raise AttributeError(name)

    def to_json(self) -> dict[str, Any]:
        """``horizon report DIR --json``."""
        from horizon.core.run.payloads import json_payload, results_payload

        return json_payload(results_payload(self.store, self.views, self.manifest))

    def _build(self, name: str) -> Any:
        from horizon.core.sources.results_session import ResultsSession

        if self._session is None:
            self._session = ResultsSession(str(self.path))
        session = self._session
        build = {"norms": session.norms, "truncate": session.truncate, "scan": session.scan,
                 "attention": lambda: self._attention(session)}
        return build[name]()

    def _attention(self, session: Any) -> Any:
        from horizon.core.analyses.attention import report_from_rows

        return report_from_rows(self.store.table("attention"), session.spec, [ids for ids in session.token_ids if ids],
                                session.has_bos)

    def __repr__(self) -> str:
        return f"<horizon.Results {self.label} at {self.path}: {', '.join(self.analyses) or 'no analyses'}>"

    def _repr_html_(self) -> str:
        import html

        return f"<div><strong>{html.escape(repr(self))}</strong></div>"


def open_results(path: str | Path) -> Results:
    """A results directory written by ``horizon sweep`` (no model needed)."""
    return Results(path)


def sweep(corpus: str | Path | Sequence[str] | None, out: str | Path, model: str | Model = "smollm2-135m", *,
          analyses: Sequence[str] | None = None, device: str = "auto", dtype: str = "float32",
          max_prompts: int | None = None, resume: bool = False, force: bool = False,
          progress: Callable[[int, int], None] | None = None, **settings: Any) -> Results:
    """`horizon sweep`: run the analyses over a corpus (a corpus path, None for the bundled one, or a list of
    prompts) into the results directory ``out``, and open it. ``model``: a spec or a loaded ``Model`` (its
    runner's budget); ``settings``: the sweep's settings (lengths, ks, start_layers, tol, ablation, by_layer,
    max_tokens, bos, bos_token, shard_size); ``progress(prompts, tokens)`` after each shard."""
    from horizon.core.analyses import names
    from horizon.core.model.corpus import Corpus, load_corpus
    from horizon.core.run.payloads import sweep_payload
    from horizon.core.sweep.sweep import SweepSettings, run_sweep

    known = {"lengths", "ks", "start_layers", "tol", "ablation", "by_layer", "max_tokens", "bos", "bos_token",
             "shard_size", "source", "keep_embed", "final"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise HorizonError(f"unknown sweep setting {unknown[0]!r}: use {', '.join(sorted(known))}")
    given: dict[str, Any] = {name: list(value) if isinstance(value, tuple) else value
                             for name, value in settings.items()}
    chosen = SweepSettings(analyses=list(analyses) if analyses is not None else list(names()), **given)
    chosen.validate()
    if corpus is None or isinstance(corpus, str | Path):
        texts = load_corpus(None if corpus is None else str(corpus), max_prompts=max_prompts)
    elif all(isinstance(text, str) for text in corpus) and corpus:
        chosen_texts = list(corpus)[:max_prompts]
        texts = Corpus(name="prompts", texts=chosen_texts, kinds=[""] * len(chosen_texts))
    else:
        raise HorizonError("the corpus must be a path, None (the bundled corpus) or a non-empty list of strings")
    budget: dict[str, Any] = {}
    subject: Any = model
    if not isinstance(model, str):
        subject = model.runner  # the worker's passes share the model's lock
        budget = {"max_memory": model.runner.max_memory, "batch_size": model.runner.batch_size}
    summary = run_sweep(texts, out, subject, chosen, device=device, dtype=dtype, resume=resume, force=force,
                        max_prompts=max_prompts, progress=progress, **budget)
    results = Results(summary.out)
    results.sweep = sweep_payload(summary)
    return results


class Comparison:
    """``horizon compare``: one row per results directory, the warnings, the numbers over models."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        from horizon.core.sources import compare

        self.loaded = compare.load_all(list(paths))
        self._table = compare.compare(self.loaded)

    def to_json(self) -> dict[str, Any]:
        """``horizon compare DIRS --json``."""
        from horizon.core.run.payloads import json_payload

        return json_payload(copy.deepcopy(self._table))

    def to_pandas(self) -> Any:
        """One row per directory (the table's columns)."""
        import pandas

        return pandas.DataFrame(self._table["models"])

    def figure(self, name: str = "fig01-norm-growth", x: str = "layer") -> Any:
        """An overlaid figure over the directories (tui/figures/plots.py's COMPARE_FIGURES)."""
        import warnings

        from horizon.core.sources.compare import figure_input

        try:
            plots = importlib.import_module("horizon.tui.figures.plots")  # matplotlib: the figures extra
        except ImportError:
            raise HorizonError("figures need matplotlib: pip install 'horizon-inspector[figures]'") from None
        if name not in plots.COMPARE_FIGURES:
            raise HorizonError(f"figure {name!r}: compare draws {', '.join(plots.COMPARE_FIGURES)}")
        with warnings.catch_warnings():
            plots.quiet_warnings()
            return plots.PLOTS[name][0]([figure_input(item) for item in self.loaded], x=x)

    def __repr__(self) -> str:
        return f"<horizon.Comparison of {', '.join(item.label for item in self.loaded)}>"


def compare(paths: Sequence[str | Path]) -> Comparison:
    """Several results directories side by side (``horizon compare``)."""
    return Comparison(paths)
