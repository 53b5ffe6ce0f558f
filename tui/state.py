"""What the panes draw from, and the messages between workers, panes and the app.

The app owns the user's selections as reactive attributes and the ``Source`` (core/sources/session.py:
a live model or stored results). A pane never reaches into the app: ``refresh_view`` hands it a
``ViewState`` (the source and a frozen copy of the selections), from which it reads only what is
ready (``source.ready`` and the ``cached_*`` helpers). Workers compute and post
``AnalysisReady`` / ``AnalysisFailed``; a pane that wants a selection changed posts
``ChangeSettings`` or ``JumpToToken``. The app routes each message and redraws.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    failed: Mapping[str, str] = field(default_factory=dict)  # analysis name -> error

    @property
    def n_layers(self) -> int:
        return self.source.n_layers

    def not_ready(self, name: str) -> str:
        """What a pane shows while the analysis ``name`` is not ready: its error, or that it runs."""
        error = self.failed.get(name)
        return f"{name} failed: {error}" if error else f"{name}: computing…"


class AnalysisReady(Message):
    """A worker finished ``name`` (its result is now ``ready`` in the source)."""

    def __init__(self, name: str, seconds: float | None = None) -> None:
        super().__init__()
        self.name = name
        self.seconds = seconds  # None: not shown as the status line's last run


class AnalysisFailed(Message):
    """A worker's analysis ``name`` raised; ``error`` is what the user is told."""

    def __init__(self, name: str, error: str) -> None:
        super().__init__()
        self.name = name
        self.error = error


class ChangeSettings(Message):
    """A pane asks for the horizon settings to change: the given fields, the rest kept."""

    def __init__(self, **changes: Any) -> None:
        super().__init__()
        self.changes = changes


class JumpToToken(Message):
    """A pane asks to show a token of a prompt on the Tokens screen."""

    def __init__(self, prompt: int, position: int) -> None:
        super().__init__()
        self.prompt = prompt
        self.position = position
