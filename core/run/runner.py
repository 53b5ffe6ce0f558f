"""The one way to run a model's analyses: a ``Runner`` holds a loaded model, its memory budget and its lock.

Every forward pass of every analysis (the CLI's commands, the app's live ``Session``, the Python
API's ``Model``) goes through a Runner method, which

1. plans its memory (core/memory/budget.py: ``--max-memory`` and ``--batch-size``, the batch size and
   tiles that fit; a run that cannot fit is refused with a HorizonError before any forward pass);
2. calls the engine under the runner's lock: forward hooks are registered on the shared model's
   modules, so two passes must never run at once on one model.

Each method takes an optional ``plan`` (already made, e.g. by a command that checks its options in
a fixed order) and an optional ``progress(n)`` callback, and returns a ``Run``: the engine's
result with the plan it ran under. No UI here: callers draw progress and results.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from horizon.core.analyses.attention import AttentionReport
    from horizon.core.analyses.norms import NormsReport
    from horizon.core.analyses.scan import ByLayerResult, ScanResult
    from horizon.core.analyses.truncate import TruncationReport
    from horizon.core.memory.budget import Plan
    from horizon.core.model.loader import LoadedModel
    from horizon.core.patching.ablation import AblationMeans
    from horizon.core.patching.horizon import HorizonConfig, PatchResult

T = TypeVar("T")
Progress = Callable[[float], None] | None


@dataclass(frozen=True)
class Run(Generic[T]):
    """An engine's result and the memory plan it ran under (``plan.to_json()`` is the JSON's ``memory``)."""

    result: T
    plan: Plan


def plan_memory(model: LoadedModel, analysis: str, token_ids: Sequence[Sequence[int]], max_memory: int | None = None,
                batch_size: int | None = None) -> Plan:
    """The core/memory/budget.py Plan of ``analysis`` on these prompts: ``max_memory`` bytes (None: a safe share of
    the device's free memory), ``batch_size`` prompts per pass (None: the largest that fits). Raises
    HorizonError, with the numbers, when even one prompt cannot fit."""
    from horizon.core.memory.budget import ModelDims, make_budget, plan

    dims = ModelDims.of(model)
    budget = make_budget(max_memory, dims, model.device)
    return plan(analysis, dims, [len(ids) for ids in token_ids], budget, requested=batch_size)


class Runner:
    """A loaded model, the memory budget of its runs (``max_memory`` bytes, ``batch_size``: None for auto)
    and the lock every forward pass on it holds."""

    def __init__(self, model: LoadedModel, max_memory: int | None = None, batch_size: int | None = None) -> None:
        self.model = model
        self.max_memory = max_memory
        self.batch_size = batch_size
        self.lock = threading.RLock()
        self._processed: dict[str, LoadedModel] = {}  # the tl copy, made once (a deep copy of the model)

    def plan(self, analysis: str, token_ids: Sequence[Sequence[int]]) -> Plan:
        """This runner's plan of ``analysis`` on ``token_ids`` (``plan_memory`` with its budget). Under the lock:
        a plan that would chunk positions runs the model's chunk self-check once (core/checks/chunking.py)."""
        with self.lock:
            return plan_memory(self.model, analysis, token_ids, self.max_memory, self.batch_size)

    def _planned(self, plan: Plan | None, analysis: str, token_ids: Sequence[Sequence[int]]) -> Plan:
        return plan if plan is not None else self.plan(analysis, token_ids)

    # ------------------------------------------------------------------------- norms and weights

    def norms(self, token_ids: list[list[int]], has_bos: bool, include_bos: bool = False,
              fit: tuple[int, int] | None = None, processing: str = "raw", plan: Plan | None = None,
              progress: Progress = None) -> Run[NormsReport]:
        """core/analyses/norms/engine.py's NormsReport (``processing`` tl: on the TransformerLens-processed copy)."""
        from horizon.core.analyses.norms.engine import analyse_norms

        plan = self._planned(plan, "norms", token_ids)
        with self.lock:
            subject = self.subject(processing)
            report = analyse_norms(subject, token_ids, has_bos, include_bos=include_bos, fit=fit,
                                   batch_size=plan.batch_size, progress=progress, position_chunk=plan.position_chunk)
        return Run(report, plan)

    def weights(self, token_ids: list[list[int]] | None, has_bos: bool = True, processing: str = "raw",
                plan: Plan | None = None) -> Run[dict[str, Any]]:
        """core/analyses/norms/weights.py's weight report (hooked forwards on the prompts: the neuron activation rates),
        in the batches of the norms plan."""
        from horizon.core.analyses.norms.weights import weight_report

        plan = self._planned(plan, "norms", token_ids or [[0]])
        with self.lock:
            section = weight_report(self.subject(processing), processing, token_ids, has_bos=has_bos,
                                    batch_size=plan.batch_size)
        return Run(section, plan)

    def subject(self, processing: str) -> LoadedModel:
        """The model itself (raw) or its TransformerLens-processed copy (tl), as the seeds' norms use."""
        from horizon.core.analyses.norms.weights import with_processing

        with self.lock:
            if processing not in self._processed:
                self._processed[processing] = with_processing(self.model, processing)
            return self._processed[processing]

    # ------------------------------------------------------------------------- the horizon

    def clean_runs(self, token_ids: list[list[int]], has_bos: bool = True, plan: Plan | None = None) -> Any:
        """The prompts' clean runs (core/patching/horizon.py), kept when the plan has room for them."""
        from horizon.core.patching.horizon import clean_runs

        plan = self._planned(plan, "scan", token_ids)
        with self.lock:
            return clean_runs(self.model, token_ids, plan.batch_size, has_bos=has_bos,
                              keep_bytes=plan.keep_clean_bytes, position_chunk=plan.position_chunk)

    def ablation_means(self, cleans: Any) -> AblationMeans:
        """Mean ablation's means: the prompts' own clean runs (core/patching/ablation.py)."""
        from horizon.core.patching.horizon import ablation_means

        with self.lock:
            return ablation_means(cleans)

    def patch(self, token_ids: list[list[int]], config: HorizonConfig, has_bos: bool = True, cleans: Any = None,
              means: AblationMeans | None = None, plan: Plan | None = None) -> Run[PatchResult]:
        """core/patching/horizon.py's PatchResult: one forward pass with an enforced horizon."""
        from horizon.core.patching.horizon import patch

        plan = self._planned(plan, "patch", token_ids)
        with self.lock:
            if cleans is None:
                cleans = self.clean_runs(token_ids, has_bos, plan)
            result = patch(self.model, token_ids, config, batch_size=plan.batch_size, cleans=cleans, means=means,
                           has_bos=has_bos)
        return Run(result, plan)

    def scan(self, token_ids: list[list[int]], start_layers: Sequence[int] = (0,), plan: Plan | None = None,
             cleans: Any = None, progress: Progress = None, **settings: Any) -> Run[ScanResult]:
        """core/analyses/scan/engine.py's ScanResult; ``settings``: ks, tol, source, keep_embed, final, unit,
        ablation, means, has_bos (the engine's keywords)."""
        from horizon.core.analyses.scan.engine import scan

        plan = self._planned(plan, "scan", token_ids)
        with self.lock:
            cleans = cleans if cleans is not None else self.clean_runs(token_ids, settings.get("has_bos", True), plan)
            result = scan(self.model, token_ids, start_layers=start_layers, progress=progress,
                          batch_size=plan.batch_size, max_pass_bytes=plan.pass_bytes, cleans=cleans, **settings)
        return Run(result, plan)

    def by_layer(self, token_ids: list[list[int]], plan: Plan | None = None, cleans: Any = None,
                 progress: Progress = None, **settings: Any) -> Run[ByLayerResult]:
        """core/analyses/scan/engine.py's ByLayerResult (the layer x k matrix); ``settings`` as for ``scan``."""
        from horizon.core.analyses.scan.engine import scan_by_layer

        plan = self._planned(plan, "scan", token_ids)
        with self.lock:
            cleans = cleans if cleans is not None else self.clean_runs(token_ids, settings.get("has_bos", True), plan)
            result = scan_by_layer(self.model, token_ids, progress=progress, batch_size=plan.batch_size,
                                   max_pass_bytes=plan.pass_bytes, cleans=cleans, **settings)
        return Run(result, plan)

    # ------------------------------------------------------------------------- verification

    def verify(self, reference: str = "fresh") -> Any:
        """core/checks/verify.py's checks on the model (``reference``: fresh, a second HF model; loaded: the bridge's
        own HF modules), the verdict stored as ``horizon verify`` stores it."""
        from horizon.core.checks.verify import store_verdict, verify

        with self.lock:
            result = verify(self.model, reference=self.model.hf_model if reference == "loaded" else None)
        store_verdict(self.model, result)
        return result

    # ------------------------------------------------------------------------- local processing

    def truncate(self, token_ids: list[list[int]], lengths: Sequence[int], n_outliers: int = 20,
                 outlier_layer: int | None = None, plan: Plan | None = None,
                 progress: Progress = None) -> Run[TruncationReport]:
        """core/analyses/truncate/engine.py's TruncationReport (``batch_size``: truncated prompts per pass)."""
        from horizon.core.analyses.truncate.engine import analyse_truncation

        plan = self._planned(plan, "truncate", token_ids)
        with self.lock:
            report = analyse_truncation(self.model, token_ids, lengths, batch_size=plan.tiling["windows"],
                                        n_outliers=n_outliers, progress=progress, outlier_layer=outlier_layer,
                                        full_batch_size=plan.batch_size)
        return Run(report, plan)

    def attention(self, token_ids: list[list[int]], has_bos: bool, plan: Plan | None = None,
                  progress: Progress = None) -> Run[AttentionReport]:
        """core/analyses/attention/engine.py's AttentionReport."""
        from horizon.core.analyses.attention.engine import attention_distance

        plan = self._planned(plan, "attention", token_ids)
        with self.lock:
            report = attention_distance(self.model, token_ids, has_bos, batch_size=plan.batch_size, progress=progress)
        return Run(report, plan)
