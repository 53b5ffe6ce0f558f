"""Studies across models (``horizon study``): one sweep per model, the same corpus and settings.

A study directory holds one results directory per model, ``DIR/<folder>/`` (``folder_names``: a
safe folder name derived from the spec), each written by the sweep driver (core/sweep/sweep.py), and
the comparison of the finished ones (written by the CLI: core/sources/compare.py's table and the
figures). Models run one after the other; each sweep is resumable on its own, so a study is too:

- a model whose directory holds a complete sweep of this corpus and these settings is skipped
  without loading it. "Complete" is read from the store (``store.open_results``: the manifest,
  every recorded file's row count and sha256, the corpus mean), never from a marker of the study's
  own; what the manifest cannot show without the model (its weights' hash) is left to the sweep,
  which checks it whenever it runs;
- any other model is loaded and handed to ``run_sweep``, which resumes a partial directory
  (finished shards kept, the rest redone) or starts a new one;
- a model that fails to load or verify, or whose sweep is refused, is reported and skipped; the
  others go on.

The study file (``read_study_file``) is TOML or JSON: ``models`` (a list of specs) and optional
shared settings under the names of the command's options (``README.md``, "Studies across models").

This module is the studies' public face: callers import from here, and the parts live beside it:
``study_inputs`` (the model specs, their folder names, the study file), ``study_state`` (what a
model's folder already holds), ``study_models`` (each model's outcome, loading and freeing it) and
``study_plan`` (``--plan``'s projection).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError
from horizon.core.sweep.study_inputs import (
    FOLDER_CHARS,
    STUDY_FILE_LIMIT,
    STUDY_KEYS,
    check_specs,
    folder_name,
    folder_names,
    read_study_file,
)
from horizon.core.sweep.study_models import ModelOutcome, free_memory, load_study_model, model_directories
from horizon.core.sweep.study_plan import ModelPlan, plan_study, plan_totals
from horizon.core.sweep.study_state import SweepState, sweep_state

if TYPE_CHECKING:
    from horizon.core.model.corpus import Corpus
    from horizon.core.sweep.sweep import SweepSettings, SweepSummary

__all__ = ["COMPARISON_FILE", "FOLDER_CHARS", "STUDY_FILE_LIMIT", "STUDY_KEYS", "ModelOutcome", "ModelPlan",
           "StudyCallbacks", "SweepState", "check_specs", "folder_name", "folder_names", "model_directories",
           "plan_study", "plan_totals", "read_study_file", "run_study", "sweep_state"]

COMPARISON_FILE = "comparison.json"  # compare --json of the finished models, written into the study directory


@dataclass
class StudyCallbacks:
    """What the display hears: a model starts (index, spec, what happens) and ends; and the sweep's own."""

    model_started: Callable[[int, str, str], None] = lambda index, spec, what: None
    model_finished: Callable[[int, ModelOutcome], None] = lambda index, outcome: None
    on_plan: Callable[[int, int, int], None] | None = None
    progress: Callable[[int, int], None] | None = None
    on_eta: Callable[[float | None], None] | None = None


def run_study(outcomes: list[ModelOutcome], corpus: Corpus, settings: SweepSettings, device: str = "auto",
              dtype: str = "float32", force: bool = False, backend: str = "local", workers: int = 1,
              ray_address: str | None = None, load_kwargs: dict[str, Any] | None = None,
              max_prompts: int | None = None, batch_size: int | None = None, max_memory: int | None = None,
              callbacks: StudyCallbacks | None = None) -> list[ModelOutcome]:
    """Sweep each model in turn into its folder (skipping complete ones); fills in each outcome.

    Only a failure of one model (``HorizonError``: it does not load, does not verify, its
    directory is refused, its settings do not fit it) is caught, reported in its outcome, and
    the next model goes on; Ctrl-C and anything unexpected stop the study (each sweep stays
    resumable).
    """
    from horizon.core.sweep.sweep import run_sweep

    callbacks = callbacks or StudyCallbacks()
    for index, outcome in enumerate(outcomes):
        started = time.perf_counter()
        state = sweep_state(outcome.directory, outcome.spec, corpus, settings, dtype)
        outcome.shards_total, outcome.shards_done = state.shards_total, state.shards_done
        if state.state == "complete" and not force:
            outcome.status = "done before"
            callbacks.model_started(index, outcome.spec, "complete already")
            callbacks.model_finished(index, outcome)
            continue
        if state.state == "conflict" and not force:
            outcome.status, outcome.reason = "failed", (
                f"{outcome.directory} holds a sweep with other settings ({state.reason}); use another --out, or "
                "--force to discard it")
            callbacks.model_started(index, outcome.spec, "refused")
            callbacks.model_finished(index, outcome)
            continue
        callbacks.model_started(index, outcome.spec, "loading")
        model: Any = outcome.spec
        try:
            if backend == "local":  # loaded here, so that a model that cannot load is told apart
                model = load_study_model(outcome.spec, device, dtype, load_kwargs or {})
            summary = run_sweep(corpus, outcome.directory, model, settings, device=device, dtype=dtype,
                                force=force, backend=backend, workers=workers, ray_address=ray_address,
                                load_kwargs=load_kwargs, max_prompts=max_prompts, progress=callbacks.progress,
                                on_plan=callbacks.on_plan, batch_size=batch_size, max_memory=max_memory,
                                on_eta=callbacks.on_eta)
        except HorizonError as exc:
            outcome.status, outcome.reason = "failed", str(exc)
        else:
            _record(outcome, summary)
        finally:
            model = None
            free_memory()
        outcome.seconds = time.perf_counter() - started
        callbacks.model_finished(index, outcome)
    return outcomes


def _record(outcome: ModelOutcome, summary: SweepSummary) -> None:
    outcome.shards_total, outcome.shards_done, outcome.shards_run = (summary.shards_total, summary.shards_done,
                                                                     summary.shards_run)
    outcome.notes, outcome.failed_shards = list(summary.notes), list(summary.failed_shards)
    if summary.complete:
        outcome.status = "swept"
    else:
        outcome.status = "incomplete"
        outcome.reason = (f"{len(summary.failed_shards)} shard(s) not written: {summary.failed_shards[0]['reason']}"
                          if summary.failed_shards else f"{summary.shards_done} of {summary.shards_total} shards done")
