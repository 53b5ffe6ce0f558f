"""No snapshot picture depends on the order of float sums: the picture tests pass again in a fresh
process on another thread count (two where this run has one, as under make test; else one).

Another BLAS/OpenMP thread count sums floats in another order, so every float the pictures are drawn
from changes in its last bits; the stored pictures must still match. (The float-noise tests, which
measure every display choice's margin against a float64 run, hold for any order and are not rerun.)
It runs as one test of the suite so that it shares the machine with the others (pytest-xdist).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_pictures_are_the_same_on_another_thread_count(tmp_path: Path) -> None:
    modules = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_tui*_snapshots.py"))
    threads = "2" if torch.get_num_threads() == 1 else "1"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    env.update(HORIZON_TEST_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    done = subprocess.run([sys.executable, "-m", "pytest", *modules, "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-k", "not float_noise", "--basetemp", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"on {threads} thread(s):\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    assert "tests/test_tui_snapshots.py" in modules
