"""Joining a Ray cluster, and Ray's messages: one line each, on the ``horizon.ray`` logger.

Before ``ray.init`` joins a cluster, ``check_reachable`` refuses in one line an address that is
malformed or does not answer within ``CONNECT_TIMEOUT_S`` (Ray itself would retry for minutes);
``joining`` keeps Ray's C++ core lines off stderr while it connects and ``join_failure`` says from
them why joining failed; ``check_resources`` refuses a sweep the cluster cannot hold at all.
``ray_logging`` turns Ray's own loggers and its error listener into one-line warnings, and
``check_same`` refuses workers on other nodes that load another model or see other inputs. Part of the
sweep's pools, whose public face is core/sweep/pools.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from horizon.core.errors import HorizonError

# How long joining a cluster may wait for its head to answer (a host that drops packets would hang for minutes).
CONNECT_TIMEOUT_S = 5.0

# Messages from Ray and about the Ray workers, one line each, for whoever shows them (the CLI, per
# its verbosity); a library caller who configures no logging sees none of them.
log = logging.getLogger("horizon.ray")
log.addHandler(logging.NullHandler())


def first_line(exc: BaseException | str) -> str:
    """The first non-blank line of a message (Ray's often run on with a traceback), else the exception's type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def check_same(first: dict[str, Any], other: dict[str, Any]) -> None:
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


def check_reachable(address: str) -> None:
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


def join_failure(exc: BaseException, core_lines: list[str]) -> str:
    """Why joining failed, in one line: Ray's own exception says only "Failed to connect", its core's log says why."""
    said = " ".join(core_lines)
    if "InvalidAuthToken" in said or "Unauthenticated" in said:
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            return ("the cluster wants its authentication token: set RAY_AUTH_MODE=token (the token is read from "
                    "RAY_AUTH_TOKEN, or ~/.ray/auth_token)")
        return "the cluster refused this authentication token (RAY_AUTH_TOKEN, or ~/.ray/auth_token)"
    if "Failed to get cluster ID" in said:
        return f"something answers there, but not as a Ray head ({first_line(exc)}: is this the head's GCS port?)"
    return first_line(exc)


@contextlib.contextmanager
def joining() -> Iterator[list[str]]:
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


def check_resources(resources: dict[str, float], workers: int, uses_gpu: bool, device: str, where: str) -> None:
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


def ray_logging(ray: Any) -> Callable[[], None]:
    """Ray's messages as one line each on the ``horizon.ray`` logger; returns what puts Ray's own back.

    Ray's Python loggers print INFO lines (connecting, token authentication) with timestamps, and
    its error listener prints the raylet's report of a dead worker to stdout (which would break
    --json). Here: warnings and errors only, each as its first line; the dead worker is reported by
    the pool itself. (While it connects: joining.)
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
            log.log(record.levelno, first_line(record.getMessage()))


def _raylet_message(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    """Ray's error listener (a dead worker, an infeasible request): the first line, as a warning."""
    for line in data.get("lines", []):
        if "worker died or was killed" in line:  # the pool reports the lost worker and its shard itself
            continue
        log.warning(first_line(line)[:300])


def cluster_has_gpus(ray: Any) -> bool:
    return bool(ray.cluster_resources().get("GPU", 0) > 0)
