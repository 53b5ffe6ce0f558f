"""Where a sweep's shards run: one in-process worker, or one Ray actor per device.

A pool gives the driver (core/sweep/sweep.py) the model's description, the analyses' corpus-wide arrays
(their registry entries' ``corpus``: truncation's mean residual, mean ablation's means) and, shard by
shard, the tables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.errors import HorizonError
from horizon.core.sweep.worker import SweepWorker, WorkerConfig

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel
    from horizon.core.run.runner import Runner

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


# A shard whose Ray worker dies (its process killed: a preempted node, the OOM killer) goes back to
# the queue and runs again on a live or new worker, up to this many runs in all; a shard lost on
# every run is reported (SweepSummary.failed_shards) and the rest of the sweep goes on.
SHARD_TRIES = 3
# New workers that die before they are ready, one after another, before the pool stops replacing lost ones.
FAILED_STARTS = 3
# How long the pool waits for a new worker when it has no live one left (a model load can take minutes).
START_TIMEOUT_S = 900.0
# How long joining a cluster may wait for its head to answer (a host that drops packets would hang for minutes).
CONNECT_TIMEOUT_S = 5.0
# After this long without every first worker ready, say so (loading, or queued by Ray for busy CPUs/GPUs).
PLACEMENT_NOTE_S = 30.0

# Messages from Ray and about the Ray workers, one line each, for whoever shows them (the CLI, per
# its verbosity); a library caller who configures no logging sees none of them.
log = logging.getLogger("horizon.ray")
log.addHandler(logging.NullHandler())


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
        self._restore_logging = _ray_logging(ray)
        try:
            where = self._connect(address, workers)
            uses_gpu = config.device.startswith("cuda") or (config.device == "auto" and _cluster_has_gpus(ray))
            _check_resources(ray.cluster_resources(), workers, uses_gpu, config.device, where)
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
            with _joining():
                try:
                    ray.init(num_cpus=workers, **options)
                except Exception as exc:
                    raise HorizonError(f"cannot start a local Ray: {_first_line(exc)}") from None
            self.started_ray = True
            return "the local Ray"
        where = f"the Ray cluster at {address}"
        if address != "auto":
            _check_reachable(address)
        failure = None
        with _joining() as core_lines:
            try:
                ray.init(address=address, **options)
            except Exception as exc:  # Ray's ConnectionError, ValueError, RuntimeError (a missing auth token), ...
                failure = exc
        if failure is not None:  # explained once the core's lines are in
            raise HorizonError(f"cannot join {where}: {_join_failure(failure, core_lines)}") from None
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
        descriptions = []
        for call, actor in calls.items():
            try:
                descriptions.append(self._get(call))
            except _Lost as exc:  # killed while it loaded the model: a new one takes its place
                self._lose(actor, exc)
        if not descriptions:
            raise HorizonError(f"every Ray worker was lost while it loaded the model ({self.events[-1]})")
        for other in descriptions[1:]:
            _check_same(descriptions[0], other)
        return descriptions[0]

    # -- the corpus-wide arrays, computed on one worker and given to all
    def describe(self) -> dict[str, Any]:
        return self.description

    def compute_corpus_input(self, analysis: str) -> np.ndarray:
        return self._on_any("compute_corpus_input", analysis)

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
            _check_same(self.description, self._get(call))
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
                raise HorizonError(f"a Ray worker could not start: {_first_line(exc)}") from None
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
             cause.group(1) if cause else _first_line(text)]
    return ", ".join(part for part in parts if part)


def _first_line(exc: BaseException | str) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_same(first: dict[str, Any], other: dict[str, Any]) -> None:
    """Workers on other nodes must load the same model and see the same inputs, or the rows would mix.

    The model is compared by its hash and shape, not by where it was read from (another node's path).
    """

    def described(description: dict[str, Any], key: str) -> Any:
        value = description.get(key)
        if key == "model" and isinstance(value, dict):
            return {name: item for name, item in value.items() if name != "source"}
        return value

    for key in ("model", "dtype", "bos", "n_tokens"):
        if described(first, key) != described(other, key):
            raise HorizonError(f"the Ray workers disagree about the {key} (on {first.get('host')} and "
                               f"{other.get('host')}): every node must have the same model files and packages")


def _check_reachable(address: str) -> None:
    """Refuse, in one line and within CONNECT_TIMEOUT_S, an address that is malformed or does not answer.

    Ray itself retries an unreachable head for minutes (a host that drops packets) or prints a
    traceback for a malformed address; this checks the head's port answers first.
    """
    target = address.removeprefix("ray://")
    host, _, port_text = target.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if "://" in target or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HorizonError(f"--ray-address {address!r} is not a Ray cluster address: use HOST:PORT (the head's "
                           "port, 6379 unless `ray start --head --port` said otherwise), ray://HOST:PORT, or auto")
    try:
        with socket.create_connection((host, int(port_text)), timeout=CONNECT_TIMEOUT_S):
            pass
    except TimeoutError:
        raise HorizonError(f"cannot reach the Ray cluster at {address}: no answer within {CONNECT_TIMEOUT_S:g} s "
                           "(is this the head's address, and does a firewall let it through?)") from None
    except socket.gaierror:
        raise HorizonError(f"cannot reach the Ray cluster at {address}: unknown host {host!r}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise HorizonError(f"cannot reach the Ray cluster at {address}: {reason.lower()} (is `ray start --head` "
                           "running there, and is this the address it printed? `ray status` on the head shows it)"
                           ) from None


def _join_failure(exc: BaseException, core_lines: list[str]) -> str:
    """Why joining failed, in one line: Ray's own exception says only "Failed to connect", its core's log says why."""
    said = " ".join(core_lines)
    if "InvalidAuthToken" in said or "Unauthenticated" in said:
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            return ("the cluster wants its authentication token: set RAY_AUTH_MODE=token (the token is read from "
                    "RAY_AUTH_TOKEN, or ~/.ray/auth_token)")
        return "the cluster refused this authentication token (RAY_AUTH_TOKEN, or ~/.ray/auth_token)"
    if "Failed to get cluster ID" in said:
        return f"something answers there, but not as a Ray head ({_first_line(exc)}: is this the head's GCS port?)"
    return _first_line(exc)


@contextlib.contextmanager
def _joining() -> Iterator[list[str]]:
    """Around ``ray.init``: its C++ core's lines kept off stderr (yielded), its Python ones one line each.

    ``ray.init`` clears the handlers of the "ray" logger and then logs (the token authentication
    warning of a local Ray): meanwhile what no handler takes goes to ``_OneLine``, and afterwards
    the "ray" logger gets it back.
    """
    saved = logging.lastResort
    logging.lastResort = _OneLine(logging.WARNING)
    try:
        with _core_log() as lines:
            yield lines
    finally:
        logging.lastResort = saved
        _own_ray_logger()


@contextlib.contextmanager
def _core_log() -> Iterator[list[str]]:
    """Keep Ray's C++ core off stderr while it connects; yields the lines it wrote (filled in on exit).

    Before its core worker starts, Ray's C++ client logs each retry to file descriptor 2 (twenty
    "Failed to get cluster ID" lines for a wrong port or token), whatever the log level asks.
    Everything else written to stderr meanwhile (Python's own lines) is written back.
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to keep clean
        yield lines
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
                if _CORE_LOG_LINE.match(line):
                    lines.append(line.strip())
                else:
                    with contextlib.suppress(OSError, ValueError):
                        sys.stderr.write(line)
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()


# A line of Ray's C++ log: "[2026-01-02 10:00:00,123 W 4242 4242] gcs_client.cc:210: ...".
_CORE_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\]")


def _check_resources(resources: dict[str, float], workers: int, uses_gpu: bool, device: str, where: str) -> None:
    """Refuse a sweep the cluster cannot hold at all (Ray would queue its workers for ever); a busy one waits."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    if uses_gpu and gpus < 1:
        raise HorizonError(f"--device {device} asks for a GPU per Ray worker, but {where} has no GPUs "
                           f"({cpus:g} CPUs): use --device cpu, or a cluster with GPUs")
    if uses_gpu and workers > gpus:
        raise HorizonError(f"--workers {workers} asks for {workers} GPUs (one per worker), but {where} has "
                           f"{gpus:g}: use --workers {int(gpus)} or fewer")
    if workers > cpus:
        raise HorizonError(f"--workers {workers} asks for {workers} CPUs (one per worker), but {where} has "
                           f"{cpus:g}: use --workers {max(1, int(cpus))} or fewer")


def _ray_logging(ray: Any) -> Callable[[], None]:
    """Ray's messages as one line each on the ``horizon.ray`` logger; returns what puts Ray's own back.

    Ray's Python loggers print INFO lines (connecting, token authentication) with timestamps, and
    its error listener prints the raylet's report of a dead worker to stdout (which would break
    --json). Here: warnings and errors only, each as its first line; the dead worker is reported by
    the pool itself. (While it connects: _joining.)
    """
    ray_logger = logging.getLogger("ray")
    saved = (ray_logger.level, list(ray_logger.handlers), ray_logger.propagate)
    _own_ray_logger()
    worker_module: Any = getattr(getattr(ray, "_private", None), "worker", None)
    printer = getattr(worker_module, "print_to_stdstream", None)
    if printer is not None:
        worker_module.print_to_stdstream = _raylet_message

    def restore() -> None:
        ray_logger.setLevel(saved[0])
        ray_logger.handlers = saved[1]
        ray_logger.propagate = saved[2]
        if printer is not None:
            worker_module.print_to_stdstream = printer

    return restore


def _own_ray_logger() -> None:
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers = [_OneLine()]
    ray_logger.setLevel(logging.WARNING)
    ray_logger.propagate = False


class _OneLine(logging.Handler):
    """Passes a Ray log record on to ``horizon.ray`` as its first line."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            log.log(record.levelno, _first_line(record.getMessage()))


def _raylet_message(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    """Ray's error listener (a dead worker, an infeasible request): the first line, as a warning."""
    for line in data.get("lines", []):
        if "worker died or was killed" in line:  # the pool reports the lost worker and its shard itself
            continue
        log.warning(_first_line(line)[:300])


def _cluster_has_gpus(ray: Any) -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
