"""A sweep's cost before it runs (``horizon sweep --plan``) and its ETA while it runs.

The cost model: an analysis on a padded batch of n prompts whose longest has T tokens does work
proportional to n * (T + T^2 / crossover). The linear part is the per-token matmuls (projections,
MLP, readout); the quadratic part is attention (scores and weighted sums, 2 * d_model per token and
key, and for the attention analysis its per-pattern reducers); ``crossover`` is the length at
which the two are equal, from the model's dimensions (about 3,000 tokens on the bundled model, so
T^2 matters only for long prompts). A shard's prompts are sorted by length and batched as the
worker does (core/sweep/worker.py), so padding is counted too.

``--plan`` fits one number per analysis, seconds per unit of work, by running the analysis on a
small sample of the corpus on the actual device, and applies it to every shard; the corpus-wide
arrays (truncation's mean residual, mean ablation's means) are estimated from the sample and
their full pass projected the same way. Disk comes from the sample's Parquet bytes per row times
the rows each shard will hold (the registry's ``expected_rows``). Peak memory and batch sizes come
from core/memory/budget.py. Nothing is written: the plan's tables are serialised in memory.

The running sweep's ETA (``Eta``) uses the same units: before a shard finishes it has no scale;
after, it scales the predicted work left by the measured seconds over the predicted work of the
shards done, so it corrects itself shard by shard.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.memory.budget import cost_of

if TYPE_CHECKING:
    from horizon.core.model.corpus import Corpus
    from horizon.core.model.loader import LoadedModel
    from horizon.core.sweep.sweep_settings import ShardSpec, SweepSettings
    from horizon.core.sweep.worker import SweepWorker

# The corpus-wide passes run with the engines' default batch (truncate's engine, the patched pass).
CORPUS_PASS_BATCH = 8


# ----------------------------------------------------------------------------- the cost model


def crossover(analysis: str | None, d_model: int, d_mlp: int, n_heads: int) -> float:
    """The prompt length at which an analysis's quadratic (attention) work equals its linear work.

    Besides attention's 2 * d_model per token and key, an analysis may add work per key and head
    (its ``Cost.pattern_work_per_head``); ``None``: a plain forward pass.
    """
    cost = None if analysis is None else cost_of(analysis)
    linear = 4 * d_model * d_model + 3 * d_model * d_mlp
    quadratic = 2 * d_model + (cost.pattern_work_per_head if cost is not None else 0) * n_heads
    return linear / quadratic


def batch_units(n_prompts: int, longest: int, cross: float) -> float:
    """The work of one padded batch: n * (T + T^2 / crossover)."""
    return n_prompts * (longest + longest * longest / cross)


def shard_units(lengths: Sequence[int], batch_size: int, cross: float) -> float:
    """The work of one shard's prompts, sorted by length and batched as the worker does."""
    ordered = sorted(lengths)
    return sum(batch_units(len(ordered[start : start + batch_size]), ordered[min(start + batch_size, len(ordered)) - 1],
                           cross)
               for start in range(0, len(ordered), max(1, batch_size)))


def relative_weights(settings: SweepSettings, n_layers: int) -> dict[str, float]:
    """Rough seconds per unit of each analysis relative to norms (one forward), for the ETA's mix.

    Only the mix between analyses depends on these: every shard's ETA is rescaled by the measured
    time of the shards done, so on a sweep where every shard runs the same analyses they cancel.
    Each analysis's own is its ``Cost.relative_work`` (one without a cost model: 1).
    """
    weights = {}
    for name, entry in registry.REGISTRY.items():
        if entry.cost is not None:
            weights[name] = entry.cost.relative_work(settings, n_layers)
    return weights


def predicted_shard_work(lengths: Sequence[int], analyses: Sequence[str], settings: SweepSettings,
                         dims: Mapping[str, int], batch_size: int | None) -> float:
    """A shard's work in ETA units: each analysis's units weighted by ``relative_weights``.

    ``dims``: n_layers, d_model, d_mlp, n_heads. ``batch_size`` None (auto) counts the shard as
    one batch (what an ample budget chooses).
    """
    weights = relative_weights(settings, dims["n_layers"])
    batch = batch_size or len(lengths)
    return sum(weights.get(name, 1.0) * shard_units(lengths, batch, crossover(name, dims["d_model"], dims["d_mlp"],
                                                                      dims["n_heads"]))
               for name in analyses)


@dataclass
class Eta:
    """Seconds left in a running sweep from the predicted work of each shard, rescaled as shards finish.

    ``predicted`` maps shard id -> work (any unit); ``finish(shard, seconds)`` records a shard; the
    estimate is (work left) * (seconds so far / work done so far). Pure: the caller owns the clock.
    """

    predicted: dict[int, float]
    done_work: float = 0.0
    done_seconds: float = 0.0
    left: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.left = set(self.predicted)

    def finish(self, shard_id: int, seconds: float) -> None:
        if shard_id in self.left:
            self.left.discard(shard_id)
            self.done_work += self.predicted[shard_id]
            self.done_seconds += seconds

    def seconds_left(self) -> float | None:
        """The estimate, or None before the first shard finished (no measured scale yet)."""
        if not self.left:
            return 0.0
        if self.done_work <= 0:
            return None
        return sum(self.predicted[shard] for shard in self.left) * self.done_seconds / self.done_work


# ----------------------------------------------------------------------------- --plan


@dataclass
class AnalysisPlan:
    """One analysis's projection over the sweep."""

    seconds: float
    peak_bytes: int
    batch_size: int
    disk_bytes: int
    rows: int
    batch_sizes: list[int]
    sample_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 2), "peak_bytes": self.peak_bytes, "batch_size": self.batch_size,
                "disk_bytes": self.disk_bytes, "rows": self.rows, "batch_sizes": self.batch_sizes,
                "sample_seconds": round(self.sample_seconds, 3)}


@dataclass
class SweepPlan:
    """What ``horizon sweep --plan`` prints: per analysis and in total."""

    analyses: dict[str, AnalysisPlan]
    overhead_seconds: float  # tokenising the corpus, the base tables and their writes
    base_disk_bytes: int  # the prompts and tokens tables
    n_prompts: int
    n_tokens: int
    n_shards: int
    device: str
    model: str
    sample: dict[str, Any]
    budget: dict[str, Any]

    @property
    def total_seconds(self) -> float:
        return self.overhead_seconds + sum(plan.seconds for plan in self.analyses.values())

    @property
    def total_disk_bytes(self) -> int:
        return self.base_disk_bytes + sum(plan.disk_bytes for plan in self.analyses.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "analyses": {name: plan.to_json() for name, plan in self.analyses.items()},
            "total": {"seconds": round(self.total_seconds, 2), "disk_bytes": self.total_disk_bytes,
                      "peak_bytes": max((plan.peak_bytes for plan in self.analyses.values()), default=0),
                      "overhead_seconds": round(self.overhead_seconds, 2)},
            "n_prompts": self.n_prompts, "n_tokens": self.n_tokens, "n_shards": self.n_shards,
            "device": self.device, "model": self.model, "sample": self.sample, "budget": self.budget,
        }


def sample_indices(lengths: Sequence[int], size: int) -> list[int]:
    """``size`` prompts of typical length: those at evenly spaced quantiles of the lengths (in prompt order)."""
    order = sorted(range(len(lengths)), key=lambda index: (lengths[index], index))
    size = max(1, min(size, len(order)))
    picked = {order[int((i + 0.5) * len(order) / size)] for i in range(size)}
    return sorted(picked)


def parquet_bytes(table: Any) -> int:
    """The bytes of ``table`` written as the store writes it (zstd Parquet), in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return int(sink.getvalue().size)


def plan_sweep(
    corpus: Corpus,
    model: LoadedModel,
    settings: SweepSettings,
    shard: ShardSpec | None = None,
    batch_size: int | None = None,
    max_memory: int | None = None,
    sample_size: int | None = None,
    workers: int = 1,
) -> SweepPlan:
    """Project a sweep of ``corpus`` without running it: each analysis on a sample, on ``model``'s device.

    The sample is one shard's worth of prompts of typical length (``sample_size``, default the
    shard size), so it is batched as a shard will be: a smaller batch runs slower per prompt and
    would be fitted as a higher cost. Writes nothing. ``shard`` limits the projection to this
    worker's shards; with ``workers`` (Ray actors) the shards are shared, so the wall time is
    divided among them.
    """
    import torch
    from horizon.core.sweep.sweep_settings import ShardSpec, plan_shards
    from horizon.core.sweep.worker import SweepWorker, WorkerConfig

    settings.validate()
    shard = shard or ShardSpec()
    started = time.perf_counter()
    config = WorkerConfig(model=model.spec, device=str(model.device), dtype=str(model.dtype).removeprefix("torch."),
                          texts=corpus.texts, settings=settings, batch_size=batch_size, max_memory=max_memory)
    worker = SweepWorker(config, loaded=model)  # tokenises the whole corpus, as the sweep does
    tokenise_seconds = time.perf_counter() - started
    described = worker.describe()
    settings.validate_for_model(model.n_layers, model.n_ctx)
    lengths = described["n_tokens"]
    shards = [(shard_id, members) for shard_id, members in enumerate(plan_shards(len(lengths), settings.shard_size))
              if shard.owns(shard_id)]
    sample = sample_indices(lengths, sample_size or settings.shard_size)
    sample_ids = [worker.token_ids[index] for index in sample]
    with torch.inference_mode():
        measured = _measure(worker, sample, settings)
    dims = described["dims"]
    analysis_settings = settings.analysis_settings(model.n_layers)
    plans: dict[str, AnalysisPlan] = {}
    for name in settings.analyses:
        cross = crossover(name, dims["d_model"], dims["d_mlp"], dims["n_heads"])
        sample_batch, _ = _batching(worker, name, sample_ids)
        rate = measured[name]["seconds"] / shard_units([len(ids) for ids in sample_ids], sample_batch, cross)
        seconds = 0.0
        peak, batch_sizes, rows, disk = 0, [], 0, 0
        for _, members in shards:
            shard_lengths = [lengths[index] for index in members]
            shard_batch, shard_peak = _batching(worker, name, [worker.token_ids[index] for index in members])
            seconds += rate * shard_units(shard_lengths, shard_batch, cross)
            peak = max(peak, shard_peak)
            batch_sizes.append(shard_batch)
            expected_rows = registry.REGISTRY[name].expected_rows
            if expected_rows is None:
                raise HorizonError(f"the {name} analysis cannot project its rows (no expected_rows in its entry)")
            shard_rows = expected_rows(shard_lengths, analysis_settings[name], described["model"])
            rows += shard_rows
            disk += measured[name]["file_bytes"] + round(measured[name]["row_bytes"] * shard_rows)
        if name in measured["corpus"]:  # the corpus-wide pass over every prompt, at the engines' batch
            forward = crossover(None, dims["d_model"], dims["d_mlp"], dims["n_heads"])  # plain forward passes
            corpus_units = shard_units(lengths, CORPUS_PASS_BATCH, forward)
            sample_units = shard_units([len(ids) for ids in sample_ids], CORPUS_PASS_BATCH, forward)
            seconds += measured["corpus"][name] * corpus_units / sample_units
        plans[name] = AnalysisPlan(seconds=seconds / max(1, workers), peak_bytes=peak, batch_size=min(batch_sizes),
                                   disk_bytes=disk, rows=rows, batch_sizes=sorted(set(batch_sizes)),
                                   sample_seconds=measured[name]["seconds"])
    n_tokens = sum(lengths[index] for _, members in shards for index in members)
    sample_tokens = sum(len(ids) for ids in sample_ids)
    base = measured["base"]
    return SweepPlan(
        analyses=plans,
        overhead_seconds=tokenise_seconds + base["seconds"] * n_tokens / sample_tokens,
        base_disk_bytes=round(len(shards) * base["file_bytes"] + base["token_bytes"] * n_tokens),
        n_prompts=sum(len(members) for _, members in shards), n_tokens=n_tokens, n_shards=len(shards),
        device=described["device"], model=model.spec,
        sample={"prompts": sample, "n_tokens": [len(ids) for ids in sample_ids],
                "seconds": {name: round(measured[name]["seconds"], 3) for name in settings.analyses},
                "corpus_pass_seconds": {name: round(value, 3) for name, value in measured["corpus"].items()},
                "plan_seconds": round(time.perf_counter() - started, 2)},
        budget=worker.memory_budget().to_json(),
    )


def _batching(worker: SweepWorker, analysis: str, token_ids: list[list[int]]) -> tuple[int, int]:
    """(batch size, predicted peak bytes) of an analysis on these prompts; an analysis the cost
    model does not know (one registered from outside) runs them as one batch, peak unknown (0)."""
    if cost_of(analysis) is None:
        return len(token_ids), 0
    chosen = worker.plan(analysis, token_ids)
    return chosen.batch_size, chosen.peak_bytes


def _measure(worker: SweepWorker, sample: list[int], settings: SweepSettings) -> dict[str, Any]:
    """Run each analysis (and the corpus-wide passes it needs) on the sample, timed; Parquet sizes in memory.

    The corpus-wide arrays are taken over the sample (an estimate: their values do not change the
    time an analysis takes). One short warm-up pass first, so one-off start-up costs (thread
    pools, allocator growth) are not fitted as per-token cost.
    """
    from horizon.core.model.prompts import decode_tokens
    from horizon.core.sweep.worker import prompts_table, tokens_table

    model = worker.model
    token_ids = [worker.token_ids[index] for index in sample]
    started = time.perf_counter()
    tokens = [decode_tokens(model, ids) for ids in token_ids]
    decode_seconds = time.perf_counter() - started
    shortest = min(token_ids, key=len)
    warm_up = next((entry for entry in registry.REGISTRY.values() if entry.warm_up), None)
    if warm_up is not None:
        warm_up.rows(worker, [0], [shortest], [decode_tokens(model, shortest)])
    measured: dict[str, Any] = {"corpus": {}}
    for name in settings.analyses:  # each analysis's corpus-wide array (core/analyses CorpusInput)
        corpus = registry.REGISTRY[name].corpus
        if corpus is not None and corpus.needed(settings):
            started = time.perf_counter()
            worker.set_corpus_input(name, corpus.compute(model, token_ids, settings.bos))
            measured["corpus"][name] = time.perf_counter() - started
    for name in settings.analyses:
        started = time.perf_counter()
        table = registry.REGISTRY[name].rows(worker, sample, token_ids, tokens)
        size = parquet_bytes(table)  # the write is part of a shard's time
        seconds = time.perf_counter() - started
        empty = parquet_bytes(table.slice(0, 0))
        measured[name] = {"seconds": seconds, "file_bytes": empty,
                          "row_bytes": (size - empty) / max(1, table.num_rows)}
    started = time.perf_counter()
    texts = [worker.config.texts[index] for index in sample]
    base_tables = (prompts_table(sample, texts, token_ids), tokens_table(sample, token_ids, tokens))
    sizes = [parquet_bytes(table) for table in base_tables]
    empties = [parquet_bytes(table.slice(0, 0)) for table in base_tables]
    measured["base"] = {"seconds": decode_seconds + time.perf_counter() - started, "file_bytes": sum(empties),
                        "token_bytes": (sum(sizes) - sum(empties)) / sum(len(ids) for ids in token_ids)}
    return measured
