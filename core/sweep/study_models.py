"""A study's models: each one's folder and outcome (``ModelOutcome``), loaded one at a time.

``model_directories`` gives each model spec its folder in the study directory; ``load_study_model``
loads one (a model the libraries fail on is one line, and the study goes on) and ``free_memory``
lets it go before the next one loads. Part of studies across models, whose public face is
core/sweep/study.py.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from horizon.core.errors import HorizonError
from horizon.core.sweep.study_inputs import folder_names


@dataclass
class ModelOutcome:
    """One model of a study: where its sweep is, and what this run did with it.

    ``status``: ``done before`` (complete already: not loaded), ``swept`` (complete now),
    ``incomplete`` (shards lost on every run: Ray), ``failed`` (not loaded, not verified, or its
    sweep refused: skipped; ``reason`` says why)."""

    spec: str
    folder: str
    directory: Path
    status: str = "pending"
    reason: str | None = None
    shards_total: int = 0
    shards_done: int = 0
    shards_run: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    failed_shards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in ("done before", "swept")

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "folder": self.folder, "dir": str(self.directory), "status": self.status,
                "reason": self.reason, "shards_total": self.shards_total, "shards_done": self.shards_done,
                "shards_run": self.shards_run, "seconds": round(self.seconds, 3), "notes": self.notes,
                "failed_shards": self.failed_shards}


def model_directories(specs: list[str], out: str | Path, reserved: set[str]) -> list[ModelOutcome]:
    """Each model's folder in the study directory ``out`` (nothing is created)."""
    root = Path(out).expanduser()
    return [ModelOutcome(spec=spec, folder=folder, directory=root / folder)
            for spec, folder in zip(specs, folder_names(specs, reserved), strict=True)]


def load_study_model(spec: str, device: str, dtype: str, load_kwargs: dict[str, Any]) -> Any:
    from horizon.core.model.loader import load_model

    try:
        return load_model(spec, device=device, dtype=dtype, **load_kwargs)
    except HorizonError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, ImportError) as exc:
        # A model the libraries fail on in their own way: one line for this model, the study goes on.
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise HorizonError(f"{spec}: cannot be loaded ({type(exc).__name__}: {first[:160]})") from None


def free_memory() -> None:
    """Let the model just swept go before the next one loads (its weights, the device's cache)."""
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
