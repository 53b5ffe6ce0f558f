"""Typed queries (core/sources/queries.py) against both sources: ``get(query)`` is the result the
analysis's own method gives (the very object), ``ready(query)`` finds it once built, and a query of
one analysis never finds another's result, in a live ``Session`` and in a ``ResultsSession``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from horizon.core.analyses.attention import AttentionReport
from horizon.core.analyses.attention.engine import attention_distance
from horizon.core.analyses.norms import NormsReport
from horizon.core.analyses.scan import ByLayerResult, ScanResult
from horizon.core.analyses.truncate import TruncationReport
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import tokenize
from horizon.core.patching.horizon import PatchResult
from horizon.core.sources.queries import PatchSettings, Query, ScanSettings
from horizon.core.sources.results_session import ResultsSession
from horizon.core.sources.session import Session, Source

TEXTS = ["The capital of France is Paris. It is known for the Eiffel Tower.",
         "Rome is the capital of Italy, and Milan is in the north."]
PATCHED = PatchSettings(k=2)

# Each analysis's result type (weights: weight_report's dict).
RESULT_TYPES: dict[str, type] = {
    "norms": NormsReport, "truncate": TruncationReport, "attention": AttentionReport, "scan": ScanResult,
    "by_layer": ByLayerResult, "patch": PatchResult, "weights": dict,
}


def by_method(source: Any, query: Query[Any]) -> Any:
    """The result through the per-analysis method the app called before queries (written out here, not
    ``queries.answer``: the oracle the dispatch is checked against)."""
    prompt = query.prompt
    methods = {
        "norms": lambda: source.norms(),
        "truncate": lambda: source.truncate(),
        "weights": lambda: source.weights(),
        "attention": lambda: source.attention(prompt),
        "scan": lambda: source.scan(prompt, query.ablation),
        "by_layer": lambda: source.by_layer(prompt, query.ablation),
        "patch": lambda: source.patch(query.settings, prompt),
    }
    return methods[query.analysis]()


LIVE_QUERIES: list[Query[Any]] = [
    Query.norms(), Query.truncate(), Query.weights(), Query.attention(0), Query.attention(1), Query.scan(0),
    Query.scan(1), Query.scan(0, "mean"), Query.by_layer(0), Query.by_layer(1, "mean"), Query.patch(PATCHED, 0),
    Query.patch(PATCHED, 1), Query.patch(PatchSettings(k=2, ablation="mean"), 0),
]


def live_session(model: LoadedModel) -> Session:
    return Session(model, TEXTS, tokenize(model, TEXTS))


# ----------------------------------------------------------------------------- the queries themselves


def test_queries_compare_by_analysis_prompt_and_settings() -> None:
    assert Query.scan(0) == Query.scan(0, "zero") == Query("scan", 0, ScanSettings("zero"))
    assert hash(Query.scan(0)) == hash(Query.scan(0, "zero"))
    assert Query.scan(0) != Query.by_layer(0)  # the same prompt and settings, another analysis
    assert Query.scan(0) != Query.scan(1) and Query.scan(0) != Query.scan(0, "mean")
    assert Query.patch(PATCHED, 0) != Query.patch(PatchSettings(k=3), 0)
    assert len(set(LIVE_QUERIES)) == len(LIVE_QUERIES)
    assert Query.norms().prompt is None and Query.attention(1).prompt == 1
    assert Query.patch(PatchSettings(k=2, ablation="mean"), 0).ablation == "mean" and Query.norms().ablation == "zero"
    with pytest.raises(ValueError, match="no analysis 'scans'"):
        Query("scans", 0)


def test_both_sessions_are_sources(tiny_llama: LoadedModel, results_dir: Path) -> None:
    assert isinstance(live_session(tiny_llama), Source)
    assert isinstance(ResultsSession(str(results_dir)), Source)


# ----------------------------------------------------------------------------- a live session


def assert_get_is_the_method(session: Any, query: Query[Any], first: str) -> None:
    """Whichever asks first (``first``: "method" or "query"), ``get(query)`` and the analysis's method give one
    object, ``ready`` finds it, and it is the query's result type."""
    if first == "method":
        result = by_method(session, query)
        assert session.get(query) is result
    else:
        result = session.get(query)
        assert by_method(session, query) is result
    assert session.ready(query) is result
    assert isinstance(result, RESULT_TYPES[query.analysis]), query


@pytest.mark.parametrize("first", ["method", "query"])
def test_live_get_is_the_analysis_method_result(tiny_llama: LoadedModel, first: str) -> None:
    """Whichever asks first, ``get(query)`` and the analysis's method give the one cached object."""
    session = live_session(tiny_llama)
    for query in LIVE_QUERIES:
        assert session.ready(query) is None  # the queries before it made none of it
        assert_get_is_the_method(session, query, first)
    # One number checked against the engine itself: prompt 1's attention is that prompt's own.
    expected = attention_distance(tiny_llama, [session.token_ids[1]], True)
    np.testing.assert_allclose(session.get(Query.attention(1)).mean_distance, expected.mean_distance, rtol=1e-6)
    # Every query found its own result: no two queries share one.
    results = [session.ready(query) for query in LIVE_QUERIES]
    assert len({id(result) for result in results}) == len(LIVE_QUERIES)


@pytest.mark.parametrize("query", LIVE_QUERIES[:9], ids=str)
def test_live_query_builds_only_its_own_result(tiny_llama: LoadedModel, query: Query[Any]) -> None:
    """Computing one query makes no other query ready (a key of one analysis never finds another's)."""
    session = live_session(tiny_llama)
    result = session.get(query)
    assert isinstance(result, RESULT_TYPES[query.analysis])
    others = [other for other in LIVE_QUERIES if other != query]
    assert [session.ready(other) for other in others] == [None] * len(others)
    assert session.ready(query) is result


# ----------------------------------------------------------------------------- a results directory


@pytest.fixture(scope="module")
def results_dir(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from horizon.core.model.corpus import Corpus
    from horizon.core.sweep.sweep import SweepSettings, run_sweep

    out = tmp_path_factory.mktemp("queries") / "results"
    settings = SweepSettings(analyses=["norms", "truncate", "scan", "attention"], by_layer=True, shard_size=1)
    run_sweep(Corpus(name="t", texts=TEXTS, kinds=[""] * len(TEXTS)), out, tiny_llama, settings, device="cpu")
    return out


STORED_QUERIES: list[Query[Any]] = [
    Query.norms(), Query.truncate(), Query.attention(0), Query.attention(1), Query.scan(0), Query.by_layer(0),
    Query.by_layer(1),
]
MODEL_QUERIES: list[Query[Any]] = [Query.patch(PATCHED, 0), Query.patch(PATCHED, 1), Query.by_layer(0, "mean"),
                                   Query.weights()]


@pytest.mark.parametrize("first", ["method", "query"])
def test_stored_get_is_the_analysis_method_result(tiny_llama: LoadedModel, results_dir: Path, first: str) -> None:
    """The same in results mode, with a model given for what a directory does not store (patched passes,
    the weights, a matrix of another ablation)."""
    session = ResultsSession(str(results_dir), live_model=tiny_llama)
    queries = STORED_QUERIES + MODEL_QUERIES
    for query in queries:
        assert_get_is_the_method(session, query, first)
    # The stored prompt rows are each prompt's: prompt 1's attention covers prompt 1's tokens.
    assert session.get(Query.attention(1)).token_ids == [session.token_ids[1]] != [session.token_ids[0]]
    # One stored scan serves every prompt (the corpus's); apart from that, no two queries share a result.
    assert session.ready(Query.scan(1)) is session.ready(Query.scan(0))
    results = [session.ready(query) for query in queries]
    assert len({id(result) for result in results}) == len(queries)


def test_stored_queries_never_find_another_analysis(results_dir: Path) -> None:
    """Without a model: what a query finds is its own analysis's result or None; a model's queries find
    nothing, and asking for a patched pass is refused as the method refuses it."""
    session = ResultsSession(str(results_dir))
    for query in STORED_QUERIES:
        assert isinstance(session.get(query), RESULT_TYPES[query.analysis]), query
    for query in STORED_QUERIES:
        assert isinstance(session.ready(query), RESULT_TYPES[query.analysis]), query
    assert session.ready(Query.by_layer(0, "mean")) is None and session.ready(Query.patch(PATCHED, 0)) is None
    assert session.get(Query.weights()) is None and session.ready(Query.weights()) is None
    with pytest.raises(HorizonError, match="--model"):
        session.get(Query.patch(PATCHED, 0))
    with pytest.raises(HorizonError, match="--by-layer"):
        session.get(Query.by_layer(0, "mean"))


def test_stored_results_are_not_ready_before_a_worker_builds_them(results_dir: Path) -> None:
    session = ResultsSession(str(results_dir))
    assert [session.ready(query) for query in STORED_QUERIES] == [None] * len(STORED_QUERIES)
    session.get(Query.norms())
    assert session.ready(Query.truncate()) is None and session.ready(Query.attention(0)) is None
    assert isinstance(session.ready(Query.norms()), NormsReport)
