"""Where a sweep's shards run: one in-process worker, or one Ray actor per device.

A pool gives the driver (core/sweep.py) the model's description, the corpus-wide arrays
(truncation's mean residual, mean ablation's means) and, shard by shard, the tables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.errors import HorizonError
from horizon.core.worker import SweepWorker, WorkerConfig

if TYPE_CHECKING:
    from horizon.core.loader import LoadedModel

ShardResult = tuple[int, dict[str, pa.Table], float]


class LocalPool:
    """One in-process worker: shards run one after another."""

    size = 1

    def __init__(self, config: WorkerConfig, loaded: LoadedModel | None = None) -> None:
        self.worker = SweepWorker(config, loaded)

    def describe(self) -> dict[str, Any]:
        return self.worker.describe()

    def compute_mu(self) -> np.ndarray:
        return self.worker.compute_mu()

    def set_mu(self, mu: np.ndarray) -> None:
        self.worker.set_mu(mu)

    def compute_ablation_means(self) -> np.ndarray:
        return self.worker.compute_ablation_means()

    def set_ablation_means(self, means: np.ndarray) -> None:
        self.worker.set_ablation_means(means)

    def run(self, todo: list[tuple[int, list[str]]], plans: list[list[int]]) -> Iterator[ShardResult]:
        for shard_id, analyses in todo:
            started = time.perf_counter()
            tables = self.worker.run_shard(plans[shard_id], analyses)
            yield shard_id, tables, time.perf_counter() - started

    def close(self) -> None:
        pass


class RayPool:
    """One Ray actor per device; each loads the model once and takes shards as they free up."""

    def __init__(self, config: WorkerConfig, workers: int, address: str | None) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            raise HorizonError("--backend ray needs Ray: pip install 'horizon-inspector[ray]'") from None
        self.ray = ray
        self.started_ray = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                # A local cluster: one CPU per worker is enough, and the dashboard is not needed.
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            self.started_ray = True
        uses_gpu = config.device.startswith("cuda") or (config.device == "auto" and _cluster_has_gpus(ray))
        remote_worker = ray.remote(num_cpus=1, num_gpus=1 if uses_gpu else 0)(SweepWorker)
        self.actors = [remote_worker.remote(config) for _ in range(workers)]
        self.size = workers

    def describe(self) -> dict[str, Any]:
        descriptions = self._get([actor.describe.remote() for actor in self.actors])
        return descriptions[0]

    def compute_mu(self) -> np.ndarray:
        return self._get(self.actors[0].compute_mu.remote())

    def set_mu(self, mu: np.ndarray) -> None:
        reference = self.ray.put(mu)
        self._get([actor.set_mu.remote(reference) for actor in self.actors])

    def compute_ablation_means(self) -> np.ndarray:
        return self._get(self.actors[0].compute_ablation_means.remote())

    def set_ablation_means(self, means: np.ndarray) -> None:
        reference = self.ray.put(means)
        self._get([actor.set_ablation_means.remote(reference) for actor in self.actors])

    def run(self, todo: list[tuple[int, list[str]]], plans: list[list[int]]) -> Iterator[ShardResult]:
        pending = list(todo)
        running: dict[Any, tuple[int, Any, float]] = {}
        idle = list(self.actors)
        while pending or running:
            while idle and pending:
                actor = idle.pop()
                shard_id, analyses = pending.pop(0)
                running[actor.run_shard.remote(plans[shard_id], analyses)] = (shard_id, actor, time.perf_counter())
            ready, _ = self.ray.wait(list(running), num_returns=1)
            shard_id, actor, started = running.pop(ready[0])
            idle.append(actor)
            yield shard_id, self._get(ready[0]), time.perf_counter() - started

    def _get(self, reference: Any) -> Any:
        try:
            return self.ray.get(reference)
        except self.ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, HorizonError):
                raise HorizonError(str(cause).splitlines()[-1]) from None
            raise
        except self.ray.exceptions.RayActorError as exc:
            # An actor that failed in its constructor (bad model spec, ...) reports here.
            lines = [line for line in str(exc).splitlines() if "HorizonError:" in line]
            if lines:
                raise HorizonError(lines[-1].split("HorizonError:", 1)[1].strip()) from None
            raise

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        if self.started_ray:
            self.ray.shutdown()


def _cluster_has_gpus(ray: Any) -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
