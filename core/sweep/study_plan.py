"""A study's ``--plan``: each model's sweep plan (core/sweep/plan.py), loading the models in turn, and their totals.

Nothing is written: ``plan_study`` projects each model's time, disk and peak memory, or says why it
cannot (``ModelPlan.error``); ``plan_totals`` sums the times and disk (the models run one after
another) and takes the largest peak (one model is loaded at a time). Part of studies across models,
whose public face is core/sweep/study.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError
from horizon.core.sweep.study_models import ModelOutcome, free_memory, load_study_model

if TYPE_CHECKING:
    from horizon.core.model.corpus import Corpus
    from horizon.core.sweep.plan import SweepPlan
    from horizon.core.sweep.sweep_settings import SweepSettings


@dataclass
class ModelPlan:
    """One model's projection (``plan``), or why there is none (``error``)."""

    spec: str
    folder: str
    plan: SweepPlan | None = None
    error: str | None = None
    n_layers: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "folder": self.folder, "n_layers": self.n_layers,
                "plan": None if self.plan is None else self.plan.to_json(), "error": self.error}


def plan_study(outcomes: list[ModelOutcome], corpus: Corpus, settings: SweepSettings, device: str = "auto",
               dtype: str = "float32", load_kwargs: dict[str, Any] | None = None, batch_size: int | None = None,
               max_memory: int | None = None, workers: int = 1,
               model_started: Callable[[int, str], None] | None = None) -> list[ModelPlan]:
    """Each model's sweep plan (core/sweep/plan.py), loading the models in turn; writes nothing."""
    from horizon.core.sweep.plan import plan_sweep

    plans = []
    for index, outcome in enumerate(outcomes):
        if model_started is not None:
            model_started(index, outcome.spec)
        entry = ModelPlan(outcome.spec, outcome.folder)
        model = None
        try:
            model = load_study_model(outcome.spec, device, dtype, load_kwargs or {})
            entry.n_layers = model.n_layers
            settings.validate_for_model(model.n_layers, model.n_ctx)
            entry.plan = plan_sweep(corpus, model, settings, batch_size=batch_size, max_memory=max_memory,
                                    workers=workers)
        except HorizonError as exc:
            entry.error = str(exc)
        finally:
            model = None
            free_memory()
        plans.append(entry)
    return plans


def plan_totals(plans: list[ModelPlan]) -> dict[str, Any]:
    """The study's projection: the models' times and disk summed (they run one after another), the
    largest peak memory (one model is loaded at a time)."""
    planned = [entry.plan for entry in plans if entry.plan is not None]
    return {"seconds": round(sum(plan.total_seconds for plan in planned), 2),
            "disk_bytes": sum(plan.total_disk_bytes for plan in planned),
            "peak_bytes": max((max((part.peak_bytes for part in plan.analyses.values()), default=0)
                               for plan in planned), default=0),
            "models_planned": len(planned), "models_failed": len(plans) - len(planned)}
