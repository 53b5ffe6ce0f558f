"""The sweep's worker: one loaded model that turns a shard of prompts into Arrow tables.

Used in-process (the local pool) or as a Ray actor (core/sweep/pools.py); the driver (core/sweep/sweep.py)
owns the directory. Each analysis's rows come from its registry entry (core/analyses).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
from horizon.core import analyses as registry
from horizon.core.memory.budget import MAX_BATCH, cost_of
from horizon.core.sweep.sweep_settings import SweepSettings

if TYPE_CHECKING:
    from horizon.core.memory.budget import Budget, ModelDims, Plan
    from horizon.core.model.loader import LoadedModel
    from horizon.core.run.runner import Runner

Result = TypeVar("Result")

# How auto batches are cut on CPU (an explicit --batch-size N, and other devices, keep the budget's
# choice: batching is where a GPU pays). A CPU pass costs about its padded tokens either way, and a
# big batch's clean run and float64 prefix sums leave the caches: rows of 8 bundled-corpus prompts
# (108-121 tokens, smollm2-135m, 2-core EPYC, best of 2-3, vs batch 1) took, for scan (k up to 31),
# 0.89 at batch 2, 1.00 at 4 and 1.19-1.23 at 8 (the budget's choice); norms 0.77 / 0.72 / 0.71 and
# attention 0.69 / 0.66 / 0.58 at 2 / 4 / 8. Hence a cap of padded tokens (prompts x longest) per
# batch and analysis (its ``Cost.cpu_batch_tokens``, core/analyses/; None: no cap), and a batch is split
# where it would be more than CPU_MAX_PADDING padding (padded positions are work thrown away on CPU).
CPU_MAX_PADDING = 0.25


@dataclass
class WorkerConfig:
    """What a worker needs to rebuild the same model and inputs anywhere (it must pickle for Ray)."""

    model: str
    device: str
    dtype: str
    texts: list[str]
    settings: SweepSettings
    load_kwargs: dict[str, Any] = field(default_factory=dict)  # placement: device_map, n_devices
    # How the work is batched, not what it computes (so not in the settings): --batch-size N
    # (None: auto, the largest that fits the budget) and --max-memory in bytes (None: auto).
    batch_size: int | None = None
    max_memory: int | None = None


class SweepWorker:
    """One loaded model that turns shards into tables. Used in-process, or as a Ray actor."""

    def __init__(self, config: WorkerConfig, loaded: LoadedModel | Runner | None = None) -> None:
        from horizon.core.model.corpus import Corpus, tokenize_corpus
        from horizon.core.model.loader import load_model
        from horizon.core.run.runner import Runner

        self.config = config
        self.settings = config.settings
        given = loaded.model if isinstance(loaded, Runner) else loaded
        self.model = given if given is not None else load_model(
            config.model, device=config.device, dtype=config.dtype, **config.load_kwargs
        )
        # Every forward pass of the worker holds its runner's lock: a runner given with the model (the
        # Python API's) is shared with that model's other callers. The worker plans its own batches
        # (``plan``: the runner's budget plus the CPU caps below).
        self.runner = loaded if isinstance(loaded, Runner) else Runner(self.model, config.max_memory,
                                                                       config.batch_size)
        corpus = Corpus(name="", texts=config.texts, kinds=[""] * len(config.texts))
        self.token_ids = tokenize_corpus(self.model, corpus, self.settings.max_tokens, self.settings.bos,
                                         self.settings.bos_token)
        # analysis -> its corpus-wide input as its shards read it (``set_corpus_input``)
        self.corpus_inputs: dict[str, Any] = {}
        self._budget: tuple[ModelDims, Budget] | None = None

    # -- how a shard's prompts are batched
    def plan(self, analysis: str, token_ids: Sequence[Sequence[int]]) -> Plan:
        """The batch size and tiles of ``analysis`` on these prompts under the run's memory budget
        (core/memory/budget.py); raises HorizonError, with the numbers, when even one prompt cannot fit."""
        import dataclasses

        from horizon.core.memory.budget import costs, plan
        from horizon.core.patching.horizon import DEFAULT_PASS_BYTES

        dims, budget = self._dims_and_budget()
        lengths = [len(ids) for ids in token_ids]
        chosen = plan(analysis, dims, lengths, budget, requested=self.config.batch_size)
        most = self.most_prompts(analysis, max(lengths))
        if most is not None and chosen.batch_size > most:
            # The device's cap, as an explicit batch: the tiles are planned for the batch that runs.
            chosen = plan(analysis, dims, lengths, budget, requested=most)
        if "rows" in chosen.tiling:  # the scan's passes stay within the engine's default however large the budget
            row = costs(analysis, dims, chosen.batch_size, chosen.n_tokens, rows=1)["staircase rows"]
            most = max(1, DEFAULT_PASS_BYTES // max(1, row))
            chosen = dataclasses.replace(chosen, tiling={**chosen.tiling, "rows": min(chosen.tiling["rows"], most)})
        return chosen

    def _dims_and_budget(self) -> tuple[ModelDims, Budget]:
        from horizon.core.memory.budget import ModelDims, make_budget

        if self._budget is None:
            dims = ModelDims.of(self.model)
            self._budget = dims, make_budget(self.config.max_memory, dims, self.model.device)
        return self._budget

    def memory_budget(self) -> Budget:
        """The run's memory budget (--max-memory, or a safe share of the device's free memory): every
        analysis's plan is made under it."""
        return self._dims_and_budget()[1]

    def pass_bytes(self, chosen: Plan) -> int:
        """The memory one staircase pass of a scan may take: its planned rows, within the engine's default."""
        from horizon.core.patching.horizon import DEFAULT_PASS_BYTES

        return min(chosen.pass_bytes, DEFAULT_PASS_BYTES)

    @property
    def auto_on_cpu(self) -> bool:
        """Whether the budget picks the batch (no --batch-size N) of a model on CPU: the case the caps are for."""
        return self.config.batch_size is None and str(self.model.device) == "cpu"

    def batch_tokens(self, analysis: str) -> int | None:
        """Padded tokens (prompts x longest) one auto batch of ``analysis`` may hold on this device (None: no cap)."""
        cost = cost_of(analysis)
        return cost.cpu_batch_tokens if self.auto_on_cpu and cost is not None else None

    def most_prompts(self, analysis: str, longest: int) -> int | None:
        """The most prompts of ``longest`` tokens one auto batch may hold on this device (None: no cap)."""
        tokens = self.batch_tokens(analysis)
        return None if tokens is None else max(1, tokens // max(1, longest))

    def per_prompt(self, analysis: str, token_ids: Sequence[list[int]],
                   compute: Callable[[list[list[int]], Plan], Sequence[Result]]) -> list[Result]:
        """``compute``'s per-prompt results, in the shard's order, from prompts batched by length.

        The prompts are sorted by length (so a padded batch wastes little) and split into groups
        (``batch_groups``: on CPU, by padded tokens and padding waste); ``compute(ids, plan)`` gets
        each group in turn, with the plan of that group, and returns one result per prompt in order.
        """
        order = length_order(token_ids)
        ordered = [list(token_ids[index]) for index in order]
        groups = batch_groups([len(ids) for ids in ordered], most_prompts=self.config.batch_size or MAX_BATCH,
                              most_tokens=self.batch_tokens(analysis),
                              max_padding=CPU_MAX_PADDING if self.auto_on_cpu else None)
        results: list[Result] = []
        for group in groups:
            members = ordered[group.start : group.stop]
            results.extend(compute(members, self.plan(analysis, members)))
        if len(results) != len(order):
            raise RuntimeError(f"{analysis}: {len(results)} results for {len(order)} prompts")
        placed: list[Any] = [None] * len(order)
        for position, index in enumerate(order):
            placed[index] = results[position]
        return placed

    # -- what the driver records about the model
    def describe(self) -> dict[str, Any]:
        model = self.model
        bos_id = self.token_ids[0][0] if self.settings.bos else None
        return {
            "model": {
                "spec": model.spec, "hash": model.model_hash, "source": model.source,
                "architecture": model.architecture, "n_layers": model.n_layers, "d_model": model.d_model,
                "n_heads": model.n_heads, "n_kv_heads": model.n_kv_heads, "n_ctx": model.n_ctx,
                "parallel_attn_mlp": model.parallel_attn_mlp,  # no resid_mid rows (core/analyses/norms/__init__.py)
            },
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "bos": {"enabled": self.settings.bos, "token": self.settings.bos_token or model.default_bos
                    if self.settings.bos else None, "token_id": bos_id},
            "n_tokens": [len(ids) for ids in self.token_ids],
            "host": socket.gethostname(),
            # What the cost model of core/sweep/plan.py needs (not recorded in the manifest).
            "dims": {"n_layers": model.n_layers, "d_model": model.d_model, "n_heads": model.n_heads,
                     "d_mlp": int(getattr(model.bridge.cfg, "d_mlp", None) or 4 * model.d_model)},
        }

    def compute_corpus_input(self, analysis: str) -> np.ndarray:
        """``analysis``'s corpus-wide array (its registry entry's ``corpus``) over every prompt of the corpus."""
        corpus = registry.REGISTRY[analysis].corpus
        if corpus is None:
            raise ValueError(f"the {analysis} analysis takes no corpus-wide input")
        with self.runner.lock:
            return corpus.compute(self.model, self.token_ids, self.settings.bos)

    def set_corpus_input(self, analysis: str, array: np.ndarray) -> None:
        """Give this worker's shards ``analysis``'s corpus-wide array (as its engine takes it)."""
        corpus = registry.REGISTRY[analysis].corpus
        if corpus is None:
            raise ValueError(f"the {analysis} analysis takes no corpus-wide input")
        self.corpus_inputs[analysis] = corpus.receive(array, self.model, self.settings)

    def run_shard(self, prompt_indices: Sequence[int], analyses: Sequence[str]) -> dict[str, pa.Table]:
        """All tables of one shard: the base tables plus one per analysis asked for."""
        import torch
        from horizon.core.model.prompts import decode_tokens

        indices = list(prompt_indices)
        token_ids = [self.token_ids[index] for index in indices]
        tokens = [decode_tokens(self.model, ids) for ids in token_ids]
        tables = {
            "prompts": prompts_table(indices, [self.config.texts[index] for index in indices], token_ids),
            "tokens": tokens_table(indices, token_ids, tokens),
        }
        with self.runner.lock, torch.inference_mode():
            for name in analyses:
                analysis = registry.REGISTRY[name]
                tables[analysis.table] = analysis.rows(self, indices, token_ids, tokens)
        return tables


def batch_groups(lengths: Sequence[int], most_prompts: int, most_tokens: int | None = None,
                 max_padding: float | None = None) -> list[range]:
    """Consecutive groups of length-sorted prompts (shortest first), each at most one batch.

    A group holds at most ``most_prompts`` prompts and, with ``most_tokens``, at most that many
    padded tokens (prompts x its longest length); with ``max_padding``, at most that share of its
    padded positions is padding. A prompt longer than ``most_tokens`` is a group of its own. The
    groups cover every prompt once, in order.
    """
    if most_prompts < 1:
        raise ValueError(f"most_prompts must be at least 1, got {most_prompts}")
    groups: list[range] = []
    start, real = 0, 0
    for index, length in enumerate(lengths):
        count = index - start + 1  # the group with this prompt in it; it is the longest so far (sorted)
        padded = count * length
        if count > 1 and (count > most_prompts or (most_tokens is not None and padded > most_tokens)
                          or (max_padding is not None and padded - real - length > max_padding * padded)):
            groups.append(range(start, index))
            start, real = index, 0
        real += length
    if lengths:
        groups.append(range(start, len(lengths)))
    return groups


def length_order(token_ids: Sequence[Sequence[int]]) -> list[int]:
    """Prompt indices by length, shortest first (ties in prompt order)."""
    return sorted(range(len(token_ids)), key=lambda index: (len(token_ids[index]), index))


def chunks(items: Sequence[Result], size: int) -> list[Sequence[Result]]:
    """Consecutive slices of at most ``size`` items."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def prompts_table(indices: list[int], texts: list[str], token_ids: list[list[int]]) -> pa.Table:
    return pa.table({
        "prompt": pa.array(indices, pa.int32()),
        "n_tokens": pa.array([len(ids) for ids in token_ids], pa.int32()),
        "text": pa.array(texts, pa.string()),
    })


def tokens_table(indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    return pa.table({
        "prompt": pa.array(np.repeat(indices, [len(ids) for ids in token_ids]), pa.int32()),
        "position": pa.array(np.concatenate([np.arange(len(ids)) for ids in token_ids]), pa.int32()),
        "token_id": pa.array(np.concatenate([np.asarray(ids) for ids in token_ids]), pa.int32()),
        "token": pa.array([text for row in tokens for text in row], pa.string()),
    })
