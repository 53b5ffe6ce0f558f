"""The typed keys a ``Source`` (core/sources/session.py) is asked for results by: ``Query[R]``.

A query names one analysis, the prompt it is about (None for the corpus-wide ones) and that
analysis's settings as a frozen dataclass (``ScanSettings``, ``PatchSettings``; None where the
analysis has none). ``R`` is the result type the query stands for, so ``source.get(query)`` and
``source.ready(query)`` are ``R | None`` to the type checker. Build queries with the constructors
below (``Query.scan(prompt, "mean")``), never by hand: each pins ``R`` to its analysis's result
type. ``Query.of(name)`` is any registered analysis's own result (core/analyses/base.py's ``live``
and ``stored`` hooks), ``Query[Any]``: its type is whatever the hooks return. Queries are hashable
and compare by value (the class included), so a query of one analysis is never equal to another's,
and the sessions cache results under them.

No engine is imported here (only under TYPE_CHECKING): the app builds queries before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from horizon.core.analyses.attention import AttentionReport
    from horizon.core.analyses.norms import NormsReport
    from horizon.core.analyses.scan import ByLayerResult, ScanResult
    from horizon.core.analyses.truncate import TruncationReport
    from horizon.core.patching.horizon import PatchResult

R = TypeVar("R")

# The analyses a source serves, by the name a query carries.
NORMS, TRUNCATE, ATTENTION, SCAN, BY_LAYER, PATCH, WEIGHTS = (
    "norms", "truncate", "attention", "scan", "by_layer", "patch", "weights")
ANALYSES = (NORMS, TRUNCATE, ATTENTION, SCAN, BY_LAYER, PATCH, WEIGHTS)


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


@dataclass(frozen=True)
class ScanSettings:
    """The settings of a loss-vs-k scan and of a layer x k matrix: the ablation of the patched windows."""

    ablation: str = "zero"


@dataclass(frozen=True)
class Query(Generic[R]):
    """One result of a source: ``analysis`` on ``prompt`` (None: every prompt) under ``settings``."""

    analysis: str
    prompt: int | None = None
    settings: ScanSettings | PatchSettings | None = None

    def __post_init__(self) -> None:
        if self.analysis not in ANALYSES:
            raise ValueError(f"no analysis {self.analysis!r}: one of {', '.join(ANALYSES)}")

    @property
    def ablation(self) -> str:
        """The ablation of a scan, matrix or patched pass ("zero" for the analyses that patch nothing)."""
        return self.settings.ablation if self.settings is not None else "zero"

    @staticmethod
    def norms() -> Query[NormsReport]:
        return Query(NORMS)

    @staticmethod
    def truncate() -> Query[TruncationReport]:
        return Query(TRUNCATE)

    @staticmethod
    def weights() -> Query[dict[str, Any]]:
        return Query(WEIGHTS)

    @staticmethod
    def attention(prompt: int) -> Query[AttentionReport]:
        return Query(ATTENTION, prompt)

    @staticmethod
    def scan(prompt: int, ablation: str = "zero") -> Query[ScanResult]:
        return Query(SCAN, prompt, ScanSettings(ablation))

    @staticmethod
    def by_layer(prompt: int, ablation: str = "zero") -> Query[ByLayerResult]:
        return Query(BY_LAYER, prompt, ScanSettings(ablation))

    @staticmethod
    def patch(settings: PatchSettings, prompt: int) -> Query[PatchResult]:
        return Query(PATCH, prompt, settings)

    @staticmethod
    def of(analysis: str) -> Query[Any]:
        """The corpus-wide result of a registered analysis through its own hooks (core/analyses/base.py:
        ``live`` in a live session, ``stored`` in a results session; None from a source without its hook)."""
        return AnalysisQuery(analysis)


@dataclass(frozen=True)
class AnalysisQuery(Query[Any]):
    """``Query.of(name)``: a registered analysis's result by its registry entry's hooks. Its own class, so it is
    never equal to a built-in query of the same name (``Query.of("norms") != Query.norms()``)."""

    def __post_init__(self) -> None:
        from horizon.core.analyses import REGISTRY

        if self.analysis not in REGISTRY:
            raise ValueError(f"no analysis {self.analysis!r}: one of {', '.join(REGISTRY)}")


def answer(source: Any, query: Query[Any]) -> Any:
    """``query``'s result from the per-analysis method of ``source`` (a session) that computes it; ``Query.of``'s from
    its ``analysis(name)``, which runs the registry entry's hook."""
    if isinstance(query, AnalysisQuery):
        return source.analysis(query.analysis)
    prompt = 0 if query.prompt is None else query.prompt
    settings = query.settings
    if query.analysis == PATCH:
        assert isinstance(settings, PatchSettings)  # Query.patch's
        return source.patch(settings, prompt)
    if query.analysis == SCAN:
        return source.scan(prompt, query.ablation)
    if query.analysis == BY_LAYER:
        return source.by_layer(prompt, query.ablation)
    if query.analysis == ATTENTION:
        return source.attention(prompt)
    if query.analysis == NORMS:
        return source.norms()
    if query.analysis == TRUNCATE:
        return source.truncate()
    assert query.analysis == WEIGHTS  # Query checks its analysis is one of these
    return source.weights()
