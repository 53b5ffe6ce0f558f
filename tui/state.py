"""What the panes draw from, and the messages between workers, panes and the app.

The app owns the user's selections as reactive attributes and the ``Source`` (core/sources/session.py:
a live model or stored results). A pane never reaches into the app: ``refresh_view`` hands it a
``ViewState`` (the source and a frozen copy of the selections), from which it reads only what is
ready (``source.ready(query)``, a typed ``Query``: core/sources/queries.py). Workers compute a
query's result (``source.get``) and post ``AnalysisReady`` / ``AnalysisFailed`` with the query
they ran; a pane that wants a selection changed posts ``ChangeSettings`` (a ``SettingsChange``)
or ``JumpToToken``. The app routes each message by its job and redraws.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any

from horizon.core.sources.queries import BY_LAYER, SCAN, Query
from horizon.core.sources.session import PatchSettings, Source
from textual.message import Message


@dataclass(frozen=True)
class ViewState:
    """The source and the user's selections, as one pane draws them."""

    source: Source
    metric: str
    layer: int
    length: int
    settings: PatchSettings
    prompt: int
    selected: int | None
    no_bos: bool
    failed: Mapping[str, str] = field(default_factory=dict)  # job_name -> error

    @property
    def n_layers(self) -> int:
        return self.source.n_layers

    def failure(self, job: Job) -> str | None:
        """The error of the last failed run of ``job``'s analysis (None: not failed since it last ended)."""
        return self.failed.get(job_name(job))

    def not_ready(self, job: Job) -> str:
        """What a pane shows while ``job``'s result is not ready: its error, or that it runs."""
        name, error = job_name(job), self.failure(job)
        return f"{name} failed: {error}" if error else f"{name}: computing…"


@dataclass(frozen=True)
class ReadComparison:
    """The Compare screen's job: reading the compared results directories (no source's query)."""


Job = Query[Any] | ReadComparison  # what a worker ran: a source's query, or the app's own job


def job_name(job: Job) -> str:
    """The name the app reports a job under (``pending``, ``failed``, the status line, a pane's note).

    Named by analysis, not by prompt: a scan failing on one prompt is "scan" failed until a scan ends."""
    if isinstance(job, ReadComparison):
        return "compare"
    name = "layer × k" if job.analysis == BY_LAYER else job.analysis
    if job.analysis in (SCAN, BY_LAYER) and job.ablation != "zero":
        return f"{name} {job.ablation}"
    return name


class Keep(Enum):
    """A field a ``SettingsChange`` leaves as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True)
class SettingsChange:
    """Some fields of the horizon settings (``PatchSettings``) changed, the rest (``KEEP``) kept."""

    k: int | Keep = KEEP
    start_layer: int | Keep = KEEP
    source: str | Keep = KEEP
    keep_embed: bool | Keep = KEEP
    final: str | Keep = KEEP
    ablation: str | Keep = KEEP
    only_layer: int | Keep | None = KEEP

    def applied_to(self, settings: PatchSettings) -> PatchSettings:
        changes = {item.name: getattr(self, item.name) for item in fields(self)}
        return replace(settings, **{name: value for name, value in changes.items() if value is not KEEP})


# Messages: dataclasses (Textual's Message initialises itself in __post_init__), compared by identity.


@dataclass(eq=False)
class AnalysisReady(Message):
    """A worker finished ``job`` (a query's result is now ``ready`` in the source)."""

    job: Job
    seconds: float | None = None  # None: not shown as the status line's last run

    @property
    def name(self) -> str:
        return job_name(self.job)


@dataclass(eq=False)
class AnalysisFailed(Message):
    """A worker's ``job`` raised; ``error`` is what the user is told."""

    job: Job
    error: str

    @property
    def name(self) -> str:
        return job_name(self.job)


@dataclass(eq=False)
class ChangeSettings(Message):
    """A pane asks for the horizon settings to change: ``change``'s fields, the rest kept."""

    change: SettingsChange


@dataclass(eq=False)
class JumpToToken(Message):
    """A pane asks to show a token of a prompt on the Tokens screen."""

    prompt: int
    position: int
