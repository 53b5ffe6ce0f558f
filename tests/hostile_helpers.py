"""Shared by the hostile test modules (issue 24): one small sweep per session, crafted copies of it, and a
driver that runs horizon commands in a subprocess under a memory and time bound.

``shared_sweep`` builds one tiny-llama sweep (3 short prompts, every analysis, mean ablation) once per
test session; every test copies it. ``run_bounded`` runs a list of commands in one fresh interpreter
(``horizon.tui.cli.app.main`` for each, plus ``@session DIR``: the app's ResultsSession) under
``RLIMIT_AS`` and a timeout, and returns (exit code, stdout, stderr) per command.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from horizon.core.results import store

TEXTS = [
    "The river rose after three days of rain, and the bridge was closed.",
    "Mix the flour and the butter, then add two eggs and a pinch of salt.",
    "Where is the station? Second street on the left, next to the bank.",
]
SWEEP_ARGS = ("--model", "tiny-llama", "--device", "cpu", "--analyses", "norms,truncate,scan,attention",
              "--ks", "1,2", "--lengths", "1", "--ablation", "mean", "--shard-size", "1", "-q")
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
MEMORY_LIMIT = 2 * 1024**3  # bytes of address space a crafted input may make a command use
TIME_LIMIT = 240  # seconds for a batch of commands (a hang is what this bounds, not speed)


def write_corpus(directory: Path) -> Path:
    path = directory / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": text}) for text in TEXTS) + "\n", encoding="utf-8")
    return path


def shared_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(corpus, results directory) of the one undamaged sweep of this test session (built on first use)."""
    base = tmp_path_factory.getbasetemp() / "hostile-shared"
    corpus, out = base / "corpus.jsonl", base / "sweep"
    if not (out / store.MANIFEST).is_file():
        from horizon.tui.cli.app import main

        base.mkdir(exist_ok=True)
        write_corpus(base)
        assert main(["sweep", str(corpus), "--out", str(out), *SWEEP_ARGS]) == 0
        results = store.open_results(out)
        assert results.problems == [] and results.n_done() == len(TEXTS)
        assert (out / store.ABLATION_MEANS_FILE).is_file() and (out / store.MU_FILE).is_file()
    return corpus, out


def copy_of(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def reseal(root: Path) -> None:
    """Record every table file's current row count and sha256 in the manifest, as anyone editing a directory can."""
    manifest = json.loads((root / store.MANIFEST).read_text())
    for shard in manifest["shards"]:
        for table in shard.get("rows", {}):
            file = store.shard_path(root, table, shard["id"])
            shard["rows"][table] = pq.read_metadata(file).num_rows
            shard.setdefault("sha256", {})[table] = hashlib.sha256(file.read_bytes()).hexdigest()
    (root / store.MANIFEST).write_text(json.dumps(manifest))


def tree_digest(folder: Path) -> str:
    """Names, kinds, sizes, modification times and bytes of everything under ``folder`` (links not followed)."""
    digest = hashlib.sha256()
    for directory, dirs, files in sorted(os.walk(folder, followlinks=False)):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            path = Path(directory) / name
            info = path.lstat()
            digest.update(f"{path.relative_to(folder)}:{stat.S_IFMT(info.st_mode)}:{info.st_size}:"
                          f"{info.st_mtime_ns};".encode())
            if stat.S_ISREG(info.st_mode):
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            elif stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(path).encode())
    return digest.hexdigest()


_DRIVER = r"""
import contextlib, io, json, resource, sys
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from horizon.tui.cli.app import main
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if argv[0] == "@session":
            from horizon.core.errors import HorizonError
            from horizon.core.sources.results_session import ResultsSession
            try:
                session = ResultsSession(argv[1])
                session.norms(), session.truncate(), session.scan()
                print("session", session.label, len(session.prompts))
                code = 0
            except HorizonError as exc:
                print(f"horizon: error: {exc}", file=sys.stderr)
                code = 2
        else:
            code = main(argv)
    results.append([code, out.getvalue(), err.getvalue()])
sys.__stdout__.write("\n@@RESULTS@@" + json.dumps(results))
"""


def run_bounded(commands: list[list[str]], memory: int = MEMORY_LIMIT, timeout: int = TIME_LIMIT,
                env: dict[str, str] | None = None) -> list[tuple[int, str, str]]:
    """Run ``commands`` one after another in one fresh interpreter under ``memory`` bytes of address space and
    ``timeout`` seconds for all of them; (exit code, stdout, stderr) per command. A hang fails the test."""
    # The limit is on address space, which counts reservations as well as use: pyarrow's default pool
    # (mimalloc) reserves 1 GiB at its first allocation, and a loaded model's threads add their
    # arenas, so a resumed sweep passed or failed by thread count. The system pool reserves nothing.
    bounded_env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system", **(env or {})}
    process = subprocess.run([sys.executable, "-c", _DRIVER, str(memory)], input=json.dumps(commands),
                             capture_output=True, text=True, timeout=timeout, env=bounded_env)
    marker = process.stdout.rfind("@@RESULTS@@")
    assert process.returncode == 0 and marker >= 0, (process.returncode, process.stderr[-3000:])
    return [tuple(item) for item in json.loads(process.stdout[marker + len("@@RESULTS@@"):])]


def assert_one_line(code: int, out: str, err: str, codes: tuple[int, ...] = (2,), needle: str = "",
                    max_lines: int = 3) -> None:
    """What the README promises of bad input: the exit code, one stderr line for an error (at most
    ``max_lines`` of warnings and notes otherwise), no traceback, no raw control character."""
    assert code in codes, (code, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) <= (1 if code == 2 else max_lines), err
    assert "Traceback" not in err and "Traceback" not in out, err[-2000:]
    assert not RAW_CONTROL.search(out), repr(out[:500])
    assert not RAW_CONTROL.search(err), repr(err[:500])
    assert needle in err, err
