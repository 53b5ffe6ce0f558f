"""The local pool: one in-process worker that runs a sweep's shards one after another.

A pool gives the driver (core/sweep/sweep.py) the model's description, the analyses' corpus-wide arrays
(their registry entries' ``corpus``: truncation's mean residual, mean ablation's means) and, shard by
shard, the tables (``ShardResult``); the Ray pool (core/sweep/pool_ray.py) does the same on one actor
per device. Part of the sweep's pools, whose public face is core/sweep/pools.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.sweep.worker import SweepWorker, WorkerConfig

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel
    from horizon.core.run.runner import Runner

# (shard id, its tables by name, seconds it took), as every pool's ``run`` yields them.
ShardResult = tuple[int, dict[str, pa.Table], float]


class LocalPool:
    """One in-process worker: shards run one after another."""

    size = 1

    def __init__(self, config: WorkerConfig, loaded: LoadedModel | Runner | None = None) -> None:
        self.worker = SweepWorker(config, loaded)
        # Nothing is lost in-process: a dead process ends the run (and --resume finishes it).
        self.notes: list[str] = []
        self.failed: dict[int, str] = {}

    def describe(self) -> dict[str, Any]:
        return self.worker.describe()

    def compute_corpus_input(self, analysis: str) -> np.ndarray:
        return self.worker.compute_corpus_input(analysis)

    def set_corpus_input(self, analysis: str, array: np.ndarray) -> None:
        self.worker.set_corpus_input(analysis, array)

    def run(self, todo: list[tuple[int, list[str]]], plans: list[list[int]]) -> Iterator[ShardResult]:
        for shard_id, analyses in todo:
            started = time.perf_counter()
            tables = self.worker.run_shard(plans[shard_id], analyses)
            yield shard_id, tables, time.perf_counter() - started

    def close(self) -> None:
        pass
