"""Issue 17: every failure path clean, tried as a hostile but realistic user would.

Each class of the issue has tests here (damaged stores, a lost manifest, leftovers, unwritable
outputs, interrupts, option checks, hostile text, special inputs); ``test_every_command_on_damaged
stores`` runs every command against damaged results directories and asserts what the README
promises: the exit code, at most three stderr lines, no traceback, no raw control character on
stdout, and the row counts of an undamaged run.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from horizon.core import store
from horizon.core.errors import HorizonError

HORIZON = str(Path(sys.executable).with_name("horizon"))
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def assert_clean(code: int, out: str, err: str, expected_code: int = 2, needle: str = "") -> None:
    assert code == expected_code, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) <= 3, err
    assert "Traceback" not in err and "Traceback" not in out, err
    assert not RAW_CONTROL.search(out), repr(out[:500])
    assert not RAW_CONTROL.search(err), repr(err[:500])
    assert needle in err, err


def corpus_file(tmp_path: Path, n: int = 12) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Prompt number {i}: " + "the cat sat on the mat. " * (2 + i % 3) for i in range(n)),
                    encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- 5. interrupts


def _sweep_command(corpus: Path, out: Path) -> list[str]:
    return [HORIZON, "sweep", str(corpus), "--out", str(out), "--model", "tiny-llama", "--device", "cpu",
            "--analyses", "norms,scan", "--ks", "1,2", "--shard-size", "1", "-q"]


@pytest.mark.parametrize("delay", [0.05, 0.6])
def test_ctrl_c_while_starting_is_one_line_and_130(tmp_path: Path, delay: float) -> None:
    """Early Ctrl-C: while the interpreter imports the command modules (Typer, torch)."""
    process = subprocess.Popen(_sweep_command(corpus_file(tmp_path), tmp_path / "out"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the machine was too fast: the sweep finished before the signal")
    assert_clean(process.returncode, out, err, 130, "horizon: error: interrupted")
    assert len(err.strip().splitlines()) == 1


def test_ctrl_c_mid_sweep_is_resumable(tmp_path: Path) -> None:
    corpus, out = corpus_file(tmp_path), tmp_path / "out"
    command = _sweep_command(corpus, out)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if any(shard["status"] == "done" for shard in store.read_manifest(out)["shards"]):
                break
        except HorizonError:
            pass
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, err = process.communicate(timeout=120)
    assert_clean(process.returncode, stdout, err, 130, "interrupted")
    assert len(err.strip().splitlines()) == 1 and "resumable with --resume" in err, err
    finish = subprocess.run([*command, "--resume", "--json"], capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    results = store.open_results(out)
    assert json.loads(finish.stdout)["complete"] and results.problems == []
    assert sorted(results.table("prompts").column("prompt").to_pylist()) == list(range(12))
    assert results.table("horizon").num_rows == 12 * 2
