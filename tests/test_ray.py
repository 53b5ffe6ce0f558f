"""Sweeps on Ray: a worker killed mid-run, shards lost on every run, bad addresses, missing resources, Ray's lines.

The cluster tests start a real local Ray head as a subprocess (``ray start --head`` with its own
temp dir, ports and auth token, as a user would) and join it through ``--ray-address``; the
teardown ends exactly the processes of that cluster (``ray stop`` would end every Ray of this
user on the machine, other sessions' included).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from horizon.core.results import store

KEYS = {
    "prompts": ["prompt"],
    "tokens": ["prompt", "position"],
    "norms": ["prompt", "site", "layer", "position"],
    "truncate": ["prompt", "length", "position", "layer"],
    "scan": ["prompt", "start_layer", "k"],
}
# The sweep of these tests: six prompts of the bundled corpus, one per shard, with analyses that
# take about a second a shard on tiny-llama (the window in which a worker is killed).
ANALYSES = ["norms", "truncate", "scan"]
SWEEP = ["--model", "tiny-llama", "--device", "cpu", "--max-prompts", "6", "--shard-size", "1",
         "--analyses", ",".join(ANALYSES)]


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The undisturbed run: the same sweep in-process, on the local backend."""
    from horizon.core.model.corpus import load_corpus
    from horizon.core.sweep.sweep import SweepSettings, run_sweep

    out = tmp_path_factory.mktemp("reference") / "local"
    summary = run_sweep(load_corpus(None, max_prompts=6), out, tiny_llama,
                        SweepSettings(analyses=list(ANALYSES), shard_size=1), device="cpu", max_prompts=6)
    assert summary.complete and summary.shards_total == 6
    return out


# ----------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    address: str
    env: dict[str, str]  # what a driver needs to join it (its auth token)
    pgid: int  # the process group of the head's processes (the workers are the raylet's children)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of every process on the machine."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), cmdline)
    return table


def _cluster_processes(pgid: int) -> dict[int, str]:
    """The head's processes (its process group) and their descendants (the workers): pid -> command line."""
    table = _processes()
    ours = {pid for pid, (_, group, _) in table.items() if group == pgid}
    grown = True
    while grown:
        children = {pid for pid, (parent, _, _) in table.items() if parent in ours} - ours
        grown = bool(children)
        ours |= children
    return {pid: table[pid][2] for pid in ours}


def _stop_cluster(pgid: int) -> None:
    pids = list(_cluster_processes(pgid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for _ in range(20):  # Ray's processes exit within a second of SIGTERM; SIGKILL the rest
            if not any(Path(f"/proc/{pid}").exists() for pid in pids):
                return
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    ray_cli = Path(sys.executable).with_name("ray")
    # A short temp dir: Ray's socket paths under it must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="hzray-", dir="/tmp"))
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    ports = _free_ports(8)
    command = [str(ray_cli), "start", "--head", f"--port={ports[0]}", "--node-ip-address=127.0.0.1",
               "--num-cpus=2", "--num-gpus=0", "--object-store-memory=100000000", f"--temp-dir={temp}",
               "--include-dashboard=false", "--disable-usage-stats", f"--dashboard-port={ports[1]}",
               f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
               f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}",
               f"--node-manager-port={ports[6]}", f"--object-manager-port={ports[7]}"]
    head = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = head.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        head.kill()
        output = "ray start took over 120 s"
    if head.returncode != 0:
        _stop_cluster(head.pid)
        shutil.rmtree(temp, ignore_errors=True)
        lines = [line for line in (output or "").splitlines() if line.strip()]
        pytest.skip(f"a local Ray cluster cannot start here: {lines[-1] if lines else head.returncode}")
    try:
        yield Cluster(address=f"127.0.0.1:{ports[0]}", env=env, pgid=head.pid)
    finally:
        _stop_cluster(head.pid)
        shutil.rmtree(temp, ignore_errors=True)


def _shard_running(cluster: Cluster, besides: set[int]) -> int | None:
    """The pid of one of this cluster's SweepWorker actors while it runs a shard (Ray titles the process so)."""
    for pid, cmdline in _cluster_processes(cluster.pgid).items():
        if cmdline.startswith("ray::SweepWorker.run_shard") and pid not in besides:
            return pid
    return None


# ----------------------------------------------------------------------------- comparing results


def _sorted(results: store.Results, name: str) -> pa.Table:
    return results.table(name).sort_by([(key, "ascending") for key in KEYS[name]])


def assert_same_rows(left: Path, right: Path, tables: tuple[str, ...] = tuple(KEYS)) -> None:
    """The same rows, once each: keys equal, numbers equal up to float noise (other threads, other batching)."""
    a, b = store.open_results(left), store.open_results(right)
    assert a.problems == [] and b.problems == []
    for name in tables:
        x, y = _sorted(a, name), _sorted(b, name)
        assert x.num_rows == y.num_rows > 0, name
        keys = list(zip(*(x.column(key).to_pylist() for key in KEYS[name]), strict=True))
        assert len(set(keys)) == len(keys), f"{name}: a row written twice"
        for column in x.column_names:
            xs, ys = x.column(column).to_pylist(), y.column(column).to_pylist()
            if isinstance(xs[0], float):
                np.testing.assert_allclose(xs, ys, rtol=1e-4, atol=1e-5, err_msg=f"{name}.{column}")
            else:
                assert xs == ys, f"{name}.{column}"


def _shard_files(root: Path, table: str) -> list[str]:
    return sorted(path.name for path in (root / table).iterdir())


# ----------------------------------------------------------------------------- a worker killed mid-run


@pytest.mark.ray_cluster
def test_a_worker_killed_mid_shard_is_replaced_and_the_rows_are_exact(cluster: Cluster, reference: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "ray"
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    horizon = Path(sys.executable).with_name("horizon")
    with stdout.open("w") as out_file, stderr.open("w") as err_file:
        sweep = subprocess.Popen([str(horizon), "sweep", *SWEEP, "--out", str(out), "--backend", "ray", "--workers",
                                  "2", "--ray-address", cluster.address, "--json", "--quiet"],
                                 env=cluster.env, stdout=out_file, stderr=err_file)
        killed = None
        try:
            while sweep.poll() is None and killed is None:
                killed = _shard_running(cluster, set())
                if killed is not None:
                    os.kill(killed, signal.SIGKILL)  # what a preempted node or the OOM killer does
                time.sleep(0.02)
            sweep.wait(timeout=300)
        finally:
            if sweep.poll() is None:
                sweep.kill()
    err = stderr.read_text()
    assert killed is not None, f"no shard was seen running: {err}"
    assert sweep.returncode == 0, err

    payload = json.loads(stdout.read_text())  # stdout is the JSON alone: no line of Ray's in it
    assert payload["complete"] and payload["shards_done"] == 6 and payload["failed_shards"] == []
    lost = [note for note in payload["notes"] if f"pid {killed}" in note]
    assert len(lost) == 1 and "died while it ran shard" in lost[0] and "ran again" in lost[0], payload["notes"]
    # --quiet: nothing from Ray on stderr, only the run's end-of-run note of the lost worker.
    assert err.splitlines() == [f"horizon: note: {lost[0]}"], err

    assert_same_rows(reference, out)
    manifest = store.read_manifest(out)
    assert all(shard["status"] == "done" for shard in manifest["shards"])
    assert manifest["runs"][-1]["backend"] == "ray" and "failed_shards" not in manifest["runs"][-1]
    for table in KEYS:  # one file per shard, no temp file left by the killed run
        assert _shard_files(out, table) == [f"shard-{index:05d}.parquet" for index in range(6)], table


# ----------------------------------------------------------------------------- the pool's retries


# A driver in its own process (Ray's auth mode and token are read once per process): a RayPool on
# workers without a model (they start in a second), whose shard is one row saying which arrays the
# worker was given, and which kill their own process on prompt 1, as the OOM killer would, every time.
FAKE_POOL_DRIVER = """
import json, os, signal, socket, sys
import numpy as np, pyarrow as pa
from horizon.core.sweep import pool_ray
from horizon.core.sweep.sweep_settings import SweepSettings
from horizon.core.sweep.worker import WorkerConfig


RECORDS = sys.argv[2]  # the folder where each worker that runs shard 1 writes what it held


def fake_worker():
    class FakeWorker:  # defined in a function, so Ray ships it by value
        def __init__(self, config):
            self.mu = self.means = None

        def describe(self):
            return {"model": {"spec": "fake"}, "dtype": "float32", "bos": None, "n_tokens": [1] * 4,
                    "host": socket.gethostname()}

        def compute_corpus_input(self, analysis):
            return np.arange(3.0)

        def set_corpus_input(self, analysis, array):
            setattr(self, {"truncate": "mu", "scan": "means"}[analysis], np.asarray(array))

        def run_shard(self, prompts, analyses):
            if 1 in prompts:  # what this worker held when it ran shard 1, then its death
                held = {"mu": float(self.mu.sum()), "means": float(self.means.sum())}
                with open(os.path.join(RECORDS, f"{os.getpid()}.json"), "w") as record:
                    json.dump(held, record)
                os.kill(os.getpid(), signal.SIGKILL)
            return {"shard": pa.table({"mu": [float(self.mu.sum())], "means": [float(self.means.sum())],
                                       "pid": [os.getpid()]})}

    return FakeWorker


pool_ray.SweepWorker = fake_worker()
config = WorkerConfig(model="fake", device="cpu", dtype="float32", texts=["a"] * 4, settings=SweepSettings())
pool = pool_ray.RayPool(config, workers=2, address=sys.argv[1])
try:
    pool.set_corpus_input("truncate", pool.compute_corpus_input("truncate"))
    pool.set_corpus_input("scan", np.full(5, 2.0))
    done = [(shard_id, tables["shard"].to_pylist()[0]) for shard_id, tables, _ in
            pool.run([(i, []) for i in range(4)], [[0], [1], [2], [3]])]
finally:
    pool.close()
print(json.dumps({"done": done, "failed": pool.failed, "events": pool.events, "tries": pool_ray.SHARD_TRIES}))
"""


@pytest.mark.ray_cluster
def test_a_shard_lost_on_every_run_fails_alone_and_new_workers_get_the_arrays(cluster: Cluster,
                                                                              tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(FAKE_POOL_DRIVER, encoding="utf-8")
    records = tmp_path / "records"
    records.mkdir()
    run = subprocess.run([sys.executable, str(script), cluster.address, str(records)], env=cluster.env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # stdout is the JSON alone: Ray's report of each dead worker is not there
    done = dict(result["done"])
    assert sorted(int(shard_id) for shard_id in done) == [0, 2, 3], "every other shard, once"
    assert list(result["failed"]) == ["1"] and f"on each of {result['tries']} runs" in result["failed"]["1"]
    assert sum("while it ran shard 1 " in event for event in result["events"]) == result["tries"] == 3
    # Every worker had both corpus-wide arrays before its first shard, the ones that replaced the dead
    # included: shard 1 ran on three workers (a dead worker runs nothing again) and the pool started two,
    # so at least one of them was a replacement. Which worker runs which other shard is Ray's choice.
    assert all(row["mu"] == 3.0 and row["means"] == 10.0 for row in done.values()), done
    held = [json.loads(record.read_text()) for record in sorted(records.iterdir())]
    assert len(held) == result["tries"] == 3
    assert all(row == {"mu": 3.0, "means": 10.0} for row in held), held
    assert "Traceback" not in run.stderr


# ----------------------------------------------------------------------------- exit code 3, and resume


def test_failed_shards_exit_3_in_one_line_and_resume_finishes_them(run_cli, reference: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """The driver's side: a pool that reports shard 1 lost on every run (as RayPool does, tested above)."""
    from horizon.core.sweep import sweep as driver
    from horizon.core.sweep.pools import LocalPool

    LOST = "its Ray worker died on each of 3 runs (pid 4242, its worker process has died)"

    class LosingPool(LocalPool):
        def __init__(self, config, workers, address) -> None:
            super().__init__(config)

        def run(self, todo, plans):
            yield from super().run([item for item in todo if item[0] != 1], plans)
            self.failed = {1: LOST}

    lighter = [*SWEEP, "--analyses", "norms,truncate"]
    monkeypatch.setattr(driver, "RayPool", LosingPool)
    out = tmp_path / "ray"
    code, stdout, err = run_cli("sweep", *lighter, "--out", str(out), "--backend", "ray", "--json", "--quiet")
    assert code == 3, err
    assert err.splitlines() == [f"horizon: error: 1 shard(s) not written: 1 (prompts 1-1): {LOST}; the rest is "
                                "written, run the same command with --resume to run them again"], err
    payload = json.loads(stdout)
    assert not payload["complete"] and payload["shards_done"] == 5
    assert payload["failed_shards"] == [{"id": 1, "prompts": [1, 1], "reason": LOST}]
    manifest = store.read_manifest(out)
    assert [shard["status"] for shard in manifest["shards"]] == ["done", "pending", "done", "done", "done", "done"]
    assert manifest["runs"][-1]["failed_shards"] == [1] and manifest["finished"] is None
    assert not (out / "norms" / "shard-00001.parquet").exists()

    monkeypatch.undo()
    code, stdout, err = run_cli("sweep", *lighter, "--out", str(out), "--resume", "--json", "--quiet")
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["complete"] and payload["shards_run"] == 1 and payload["failed_shards"] == []
    assert_same_rows(reference, out, ("prompts", "tokens", "norms", "truncate"))


# ----------------------------------------------------------------------------- refusals in one line


def _one_line_refusal(run_cli, out: Path, *args: str) -> str:
    code, stdout, err = run_cli("sweep", *SWEEP, "--out", str(out), *args)
    assert code == 2 and stdout == "", (args, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("horizon: error: "), (args, err)
    assert not out.exists(), "nothing written"
    return lines[0]


def test_a_bad_or_unreachable_address_is_one_line(run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from horizon.core.sweep import ray_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "o"
    free = _free_ports(1)[0]
    line = _one_line_refusal(run_cli, out, "--backend", "ray", "--ray-address", f"127.0.0.1:{free}")
    assert f"cannot reach the Ray cluster at 127.0.0.1:{free}: connection refused" in line
    for garbage in ("garbage", "10.0.0.1", "host:port", "http://10.0.0.1:8265", "ray://:10001"):
        line = _one_line_refusal(run_cli, out, "--backend", "ray", "--ray-address", garbage)
        assert "is not a Ray cluster address" in line, line
    line = _one_line_refusal(run_cli, out, "--backend", "ray", "--ray-address", "no-such-host.invalid:6379")
    assert "unknown host" in line
    line = _one_line_refusal(run_cli, out, "--ray-address", f"127.0.0.1:{free}")
    assert "--ray-address is for --backend ray" in line

    # A host that does not answer: a listening socket whose backlog is full drops the next handshake.
    monkeypatch.setattr(ray_cluster, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        fillers = []
        try:
            while True:  # fill the backlog until a handshake is no longer answered
                filler = socket.socket()
                filler.settimeout(0.5)
                fillers.append(filler)
                filler.connect(("127.0.0.1", port))
                assert len(fillers) < 64, "the backlog never filled"
        except TimeoutError:
            pass
        try:
            line = _one_line_refusal(run_cli, out, "--backend", "ray", "--ray-address", f"127.0.0.1:{port}")
        finally:
            for filler in fillers:
                filler.close()
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}: no answer within 0.5 s" in line, line


def test_without_the_ray_extra_one_line(run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    line = _one_line_refusal(run_cli, tmp_path / "o", "--backend", "ray")
    assert "--backend ray needs Ray: pip install 'horizon-inspector[ray]'" in line


def _horizon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    horizon = Path(sys.executable).with_name("horizon")
    return subprocess.run([str(horizon), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.ray_cluster
def test_a_cluster_without_the_resources_asked_for_is_one_line(cluster: Cluster, tmp_path: Path) -> None:
    """Refused before any worker starts: Ray would queue workers it can never place, for ever."""
    where = f"the Ray cluster at {cluster.address}"
    out = tmp_path / "o"
    # Default verbosity: still the one line (Ray's "Connecting to existing Ray cluster" INFO lines are not shown).
    run = _horizon(cluster.env, "sweep", *SWEEP, "--out", str(out), "--backend", "ray", "--ray-address",
                   cluster.address, "--device", "cuda")
    assert run.returncode == 2 and run.stdout == "" and not out.exists()
    assert run.stderr.splitlines() == [f"horizon: error: --device cuda asks for a GPU per Ray worker, but {where} "
                                       "has no GPUs (2 CPUs): use --device cpu, or a cluster with GPUs"]
    run = _horizon(cluster.env, "sweep", *SWEEP, "--out", str(out), "--backend", "ray", "--ray-address",
                   cluster.address, "--workers", "3", "--quiet")
    assert run.returncode == 2 and run.stdout == "" and not out.exists()
    assert run.stderr.splitlines() == [f"horizon: error: --workers 3 asks for 3 CPUs (one per worker), but {where} "
                                       "has 2: use --workers 2 or fewer"]
    # Without its token the cluster refuses the driver: one line that says what to set, not Ray's twenty
    # retry lines (RAY_NUM_REDIS_GET_RETRIES, Ray's own setting, shortens its retries from about 20 s).
    tokenless = {key: value for key, value in cluster.env.items() if key not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    tokenless.update(HOME=str(tmp_path), RAY_NUM_REDIS_GET_RETRIES="2")  # no ~/.ray/auth_token either
    run = _horizon(tokenless, "sweep", *SWEEP, "--out", str(out), "--backend", "ray", "--ray-address",
                   cluster.address)
    assert run.returncode == 2 and run.stdout == "" and not out.exists()
    assert run.stderr.splitlines() == [f"horizon: error: cannot join {where}: the cluster wants its authentication "
                                       "token: set RAY_AUTH_MODE=token (the token is read from RAY_AUTH_TOKEN, or "
                                       "~/.ray/auth_token)"], run.stderr


# ----------------------------------------------------------------------------- Ray's lines follow the verbosity


def test_ray_lines_follow_the_verbosity(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool's lines (and Ray's, passed on) are one line each by default, and only errors under --quiet."""
    import logging

    from horizon.core.sweep import ray_cluster
    from horizon.tui.cli.sweep_cmd import _ray_messages

    ray_logger = logging.getLogger("ray")
    saved = (ray_logger.level, list(ray_logger.handlers), ray_logger.propagate)
    monkeypatch.setattr(ray_logger, "handlers", saved[1])
    monkeypatch.setattr(ray_logger, "propagate", saved[2])
    monkeypatch.setattr(ray_logger, "level", saved[0])
    for quiet in (False, True):
        with _ray_messages(quiet):
            ray_cluster.log.warning("a Ray worker died while it ran shard 3 (pid 7)")
            ray_cluster._raylet_message({"lines": ["A worker died or was killed while executing a task by an "
                                                   "unexpected system error. To troubleshoot ...\nmore"]})
            ray_cluster._raylet_message({"lines": ["Resources requested are infeasible.\nTraceback (most recent ..."]})
            handler = ray_cluster._OneLine()
            handler.emit(ray_logger.makeRecord("ray", logging.ERROR, __file__, 1, "GCS lost.\nTraceback ...",
                                               None, None))
            # ray.init clears the "ray" logger's handlers (which the pool made not to propagate), then logs
            # (a local Ray's token warning).
            ray_cluster._own_ray_logger()
            with ray_cluster.joining():
                ray_logger.handlers.clear()
                logging.getLogger("ray.auth").warning("Token authentication is enabled.\nmore")
                logging.getLogger("ray.auth").info("Started a local Ray instance.")
            assert [type(handler) for handler in ray_logger.handlers] == [ray_cluster._OneLine]
        captured = capsys.readouterr()
        assert captured.out == ""
        expected = ["horizon: ray: GCS lost."]
        if not quiet:
            expected = ["horizon: ray: a Ray worker died while it ran shard 3 (pid 7)",
                        "horizon: ray: Resources requested are infeasible.", *expected,
                        "horizon: ray: Token authentication is enabled."]
        assert captured.err.splitlines() == expected, quiet


def test_workers_that_load_another_model_or_see_other_inputs_are_refused() -> None:
    from horizon.core.errors import HorizonError
    from horizon.core.sweep.ray_cluster import check_same

    first = {"model": {"spec": "m", "hash": "a1", "n_layers": 2, "source": "/opt/a/m"}, "dtype": "float32",
             "bos": {"enabled": True, "token_id": 1}, "n_tokens": [5, 7], "host": "node-a"}
    check_same(first, {**first, "model": {**first["model"], "source": "/home/b/m"}, "host": "node-b"})
    for key, value in (("model", {**first["model"], "hash": "b2"}), ("dtype", "bfloat16"),
                       ("bos", {"enabled": False, "token_id": None}), ("n_tokens", [5, 8])):
        with pytest.raises(HorizonError, match=f"the Ray workers disagree about the {key} \\(on node-a and node-b\\)"):
            check_same(first, {**first, key: value, "host": "node-b"})
