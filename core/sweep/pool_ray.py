"""The Ray pool: one Ray actor per device, each loading the model once and taking shards as they free up.

A worker that dies is replaced and the shard it ran goes back to the queue (``SHARD_TRIES`` runs in
all); a shard lost on every run is reported, and the rest of the sweep goes on. Workers must agree on
the model and its inputs (core/sweep/ray_cluster.py's ``check_same``, beside joining the cluster and
Ray's messages). Part of the sweep's pools, whose public face is core/sweep/pools.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
from horizon.core.errors import HorizonError
from horizon.core.sweep.pool_local import ShardResult
from horizon.core.sweep.ray_cluster import (
    check_reachable,
    check_resources,
    check_same,
    cluster_has_gpus,
    first_line,
    join_failure,
    joining,
    log,
    ray_logging,
)
from horizon.core.sweep.worker import SweepWorker, WorkerConfig

# A shard whose Ray worker dies (its process killed: a preempted node, the OOM killer) goes back to
# the queue and runs again on a live or new worker, up to this many runs in all; a shard lost on
# every run is reported (SweepSummary.failed_shards) and the rest of the sweep goes on.
SHARD_TRIES = 3
# New workers that die before they are ready, one after another, before the pool stops replacing lost ones.
FAILED_STARTS = 3
# How long the pool waits for a new worker when it has no live one left (a model load can take minutes).
START_TIMEOUT_S = 900.0
# After this long without every first worker ready, say so (loading, or queued by Ray for busy CPUs/GPUs).
PLACEMENT_NOTE_S = 30.0


class RayPool:
    """One Ray actor per device; each loads the model once and takes shards as they free up.

    A worker that dies (``kill -9`` of its process, a lost node) is replaced by a new actor, which
    gets the corpus-wide arrays again before any shard; the shard it was running goes back to the
    queue (``SHARD_TRIES`` runs in all). ``notes`` says in one line what was lost and run again,
    ``failed`` which shards were lost on every run, and why.
    """

    def __init__(self, config: WorkerConfig, workers: int, address: str | None) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            raise HorizonError("--backend ray needs Ray: pip install 'horizon-inspector[ray]'") from None
        self.ray = ray
        self.config = config
        self.size = workers
        self.started_ray = False
        self.actors: list[Any] = []  # live and ready
        self.starting: dict[Any, Any] = {}  # describe() call -> a new actor not ready yet
        self.arrays: dict[str, Any] = {}  # analysis -> its corpus-wide array (a Ray reference) every actor gets
        self.events: list[str] = []  # each worker lost, one line each
        self.failed: dict[int, str] = {}
        self.retried: set[int] = set()  # shards run again after their worker died
        self.failed_starts = 0
        self._restore_logging = ray_logging(ray)
        try:
            where = self._connect(address, workers)
            uses_gpu = config.device.startswith("cuda") or (config.device == "auto" and cluster_has_gpus(ray))
            check_resources(ray.cluster_resources(), workers, uses_gpu, config.device, where)
            self.remote_worker: Any = ray.remote(num_cpus=1, num_gpus=1 if uses_gpu else 0, max_restarts=0)(SweepWorker)
            self.actors = [self.remote_worker.remote(config) for _ in range(workers)]
            self.description = self._describe_all()
        except BaseException:
            self.close()
            raise

    # -- joining the cluster
    def _connect(self, address: str | None, workers: int) -> str:
        """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray; returns where, for messages."""
        ray = self.ray
        if ray.is_initialized():
            return "the Ray cluster this process is connected to"
        address = address or os.environ.get("RAY_ADDRESS")
        options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if not address or address == "local":
            # A local cluster: one CPU per worker is enough, and the dashboard is not needed.
            with joining():
                try:
                    ray.init(num_cpus=workers, **options)
                except Exception as exc:
                    raise HorizonError(f"cannot start a local Ray: {first_line(exc)}") from None
            self.started_ray = True
            return "the local Ray"
        where = f"the Ray cluster at {address}"
        if address != "auto":
            check_reachable(address)
        failure = None
        with joining() as core_lines:
            try:
                ray.init(address=address, **options)
            except Exception as exc:  # Ray's ConnectionError, ValueError, RuntimeError (a missing auth token), ...
                failure = exc
        if failure is not None:  # explained once the core's lines are in
            raise HorizonError(f"cannot join {where}: {join_failure(failure, core_lines)}") from None
        self.started_ray = True
        return where

    def _describe_all(self) -> dict[str, Any]:
        """Every first worker's description, checked to agree (same model, inputs); the first is the run's."""
        ray = self.ray
        calls = {actor.describe.remote(): actor for actor in self.actors}
        _, waiting = ray.wait(list(calls), num_returns=len(calls), timeout=PLACEMENT_NOTE_S)
        if waiting:
            log.warning(f"{len(waiting)} of {len(calls)} Ray workers not started after {PLACEMENT_NOTE_S:.0f} s: still "
                        "loading the model, or waiting for CPUs or GPUs that other work holds (Ray queues them)")
        descriptions: list[dict[str, Any]] = []
        for call, actor in calls.items():
            try:
                descriptions.append(self._get(call))
            except _Lost as exc:  # killed while it loaded the model: a new one takes its place
                self._lose(actor, exc)
        if not descriptions:
            raise HorizonError(f"every Ray worker was lost while it loaded the model ({self.events[-1]})")
        for other in descriptions[1:]:
            check_same(descriptions[0], other)
        return descriptions[0]

    # -- the corpus-wide arrays, computed on one worker and given to all
    def describe(self) -> dict[str, Any]:
        return self.description

    def compute_corpus_input(self, analysis: str) -> np.ndarray:
        return cast(np.ndarray, self._on_any("compute_corpus_input", analysis))

    def set_corpus_input(self, analysis: str, array: np.ndarray) -> None:
        self._broadcast(analysis, array)

    def _on_any(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on one live worker; a worker lost meanwhile is replaced and the next one asked."""
        for _ in range(SHARD_TRIES):
            actor = self._any_ready_actor()
            try:
                return self._get(getattr(actor, method).remote(*args))
            except _Lost as exc:
                self._lose(actor, exc)
        raise HorizonError(f"{method}: its Ray worker died on each of {SHARD_TRIES} runs ({self.events[-1]})")

    def _broadcast(self, analysis: str, array: np.ndarray) -> None:
        """Give every worker ``analysis``'s ``array``; a new worker gets every array given so far before its
        first shard."""
        self.arrays[analysis] = self.ray.put(array)
        calls = {actor.set_corpus_input.remote(analysis, self.arrays[analysis]): actor for actor in self.actors}
        for call, actor in calls.items():
            try:
                self._get(call)
            except _Lost as exc:
                self._lose(actor, exc)

    # -- the shards
    def run(self, todo: list[tuple[int, list[str]]], plans: list[list[int]]) -> Iterator[ShardResult]:
        ray = self.ray
        pending = deque(todo)
        tries: dict[int, int] = {}
        running: dict[Any, tuple[int, list[str], Any, float]] = {}
        idle = list(self.actors)
        while pending or running:
            while idle and pending:
                actor = idle.pop()
                shard_id, analyses = pending.popleft()
                tries[shard_id] = tries.get(shard_id, 0) + 1
                running[actor.run_shard.remote(plans[shard_id], analyses)] = (shard_id, analyses, actor,
                                                                               time.perf_counter())
            if not running and not self.starting:
                self._give_up(pending, tries, "no Ray worker is left")
                break
            ready, _ = ray.wait([*running, *self.starting], num_returns=1,
                                timeout=None if running else START_TIMEOUT_S)
            if not ready:
                self._give_up(pending, tries, f"no new Ray worker was ready within {START_TIMEOUT_S:.0f} s")
                break
            if ready[0] in self.starting:
                actor = self._finish_start(ready[0])
                if actor is not None:
                    idle.append(actor)
                continue
            shard_id, analyses, actor, started = running.pop(ready[0])
            try:
                tables = self._get(ready[0])
            except _Lost as exc:
                self._lose(actor, exc, shard_id)
                if tries[shard_id] < SHARD_TRIES:
                    self.retried.add(shard_id)
                    pending.appendleft((shard_id, analyses))  # first in line: a live worker takes it next
                    log.warning(f"shard {shard_id} goes back to the queue (run {tries[shard_id] + 1} of at most "
                                f"{SHARD_TRIES})")
                else:
                    self.failed[shard_id] = f"its Ray worker died on each of {SHARD_TRIES} runs ({_why(exc)})"
                    log.warning(f"shard {shard_id} failed: {self.failed[shard_id]}")
                if not pending:
                    self._stop_starting()  # the live workers finish what is running; a new one would idle
                continue
            idle.append(actor)
            yield shard_id, tables, time.perf_counter() - started

    @property
    def notes(self) -> list[str]:
        """One line for the run's summary: how many workers were lost, and which shards ran again."""
        if not self.events:
            return []
        more = f"; and {len(self.events) - 1} more" if len(self.events) > 1 else ""
        again = sorted(self.retried - set(self.failed))
        ran = f"shard(s) {', '.join(map(str, again))} ran again" if again else "no shard ran again"
        return [f"{self.events[0]}{more}; {ran}"]

    def _give_up(self, pending: deque[tuple[int, list[str]]], tries: dict[int, int], why: str) -> None:
        for shard_id, _ in pending:
            self.failed[shard_id] = f"{why} ({tries.get(shard_id, 0)} run(s) lost)"
        if pending:
            log.warning(f"{len(pending)} shard(s) not run: {why}")
        pending.clear()

    # -- lost workers and their replacements
    def _lose(self, actor: Any, exc: BaseException, shard_id: int | None = None) -> None:
        """Drop a dead worker, and start a new one in its place (unless new ones keep dying)."""
        running = "" if shard_id is None else f" while it ran shard {shard_id}"
        note = f"a Ray worker died{running} ({_why(exc)})"
        self.events.append(note)
        log.warning(note)
        if actor in self.actors:
            self.actors.remove(actor)
        self._kill(actor)
        self._start()

    def _start(self) -> None:
        if self.failed_starts >= FAILED_STARTS:
            return
        actor = self.remote_worker.remote(self.config)
        self.starting[actor.describe.remote()] = actor

    def _finish_start(self, call: Any) -> Any | None:
        """A new worker's model is loaded: check it is the same model, give it the arrays; None if it died."""
        actor = self.starting.pop(call)
        try:
            check_same(self.description, self._get(call))
            for analysis, array in self.arrays.items():
                self._get(actor.set_corpus_input.remote(analysis, array))
        except _Lost as exc:
            self.failed_starts += 1
            self.events.append(f"a new Ray worker died before its first shard ({_why(exc)})")
            log.warning(self.events[-1])
            self._kill(actor)
            self._start()
            return None
        except HorizonError as exc:
            self.failed_starts = FAILED_STARTS  # a worker that loads another model will not get better
            self.events.append(f"a new Ray worker was not used: {exc}")
            log.warning(self.events[-1])
            self._kill(actor)
            return None
        self.failed_starts = 0
        self.actors.append(actor)
        return actor

    def _any_ready_actor(self) -> Any:
        """A live worker, waiting for a new one when none is left."""
        while not self.actors:
            if not self.starting:
                raise HorizonError(f"every Ray worker was lost ({self.events[-1] if self.notes else 'no worker'})")
            ready, _ = self.ray.wait(list(self.starting), num_returns=1, timeout=START_TIMEOUT_S)
            if not ready:
                raise HorizonError(f"every Ray worker was lost and no new one was ready within {START_TIMEOUT_S:.0f} s")
            self._finish_start(ready[0])
        return self.actors[0]

    def _stop_starting(self) -> None:
        for actor in self.starting.values():
            self._kill(actor)
        self.starting.clear()

    def _kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # already dead, or its node is gone
            self.ray.kill(actor)

    def _get(self, reference: Any) -> Any:
        """``ray.get``; a worker's own HorizonError (bad input) is re-raised as one; a lost worker raises _Lost."""
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
            if exc.actor_init_failed:
                raise HorizonError(f"a Ray worker could not start: {first_line(exc)}") from None
            raise _Lost(exc) from exc
        except (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.NodeDiedError,
                self.ray.exceptions.LocalRayletDiedError, self.ray.exceptions.ObjectLostError,
                self.ray.exceptions.OutOfMemoryError) as exc:
            raise _Lost(exc) from exc

    def close(self) -> None:
        for actor in [*self.actors, *self.starting.values()]:
            self._kill(actor)
        self.actors, self.starting = [], {}
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False
        self._restore_logging()


class _Lost(Exception):
    """A Ray worker died (its process or node is gone) before it answered."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _why(exc: BaseException) -> str:
    """What Ray says about a lost worker, in a few words: its pid, its node, and the cause's first sentence."""
    text = str(exc.cause if isinstance(exc, _Lost) else exc)
    pid = re.search(r"^\s*pid: (\d+)", text, re.MULTILINE)
    ip = re.search(r"^\s*ip: (\S+)", text, re.MULTILINE)
    cause = re.search(r"The actor is dead because ([^.]*)", text)
    parts = [f"pid {pid.group(1)}" if pid else "", f"on {ip.group(1)}" if ip else "",
             cause.group(1) if cause else first_line(text)]
    return ", ".join(part for part in parts if part)
