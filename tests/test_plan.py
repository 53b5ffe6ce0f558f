"""The sweep's cost model (core/sweep/plan.py): ``--plan``'s projection and the running sweep's ETA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from horizon.core.model.corpus import Corpus
from horizon.core.results import store
from horizon.core.sweep.plan import (
    Eta,
    batch_units,
    crossover,
    plan_sweep,
    predicted_shard_work,
    sample_indices,
    shard_units,
)
from horizon.core.sweep.sweep import SweepSettings, run_sweep

TEXTS = [
    "The river rose after three days of rain, and the bridge was closed to traffic on Monday morning.",
    "Hi there.",
    "def add(a, b):\n    return a + b",
    "Mix the flour and the butter, then add two eggs, a pinch of salt, a little milk and some sugar to taste.",
    "La ville est au bord du lac.",
]
CORPUS = Corpus(name="t", texts=TEXTS, kinds=[""] * len(TEXTS))


# ----------------------------------------------------------------------------- the cost model (pure)


def test_units_count_padding_and_the_quadratic_term() -> None:
    assert shard_units([10, 20], 1, math.inf) == 30  # one prompt per batch: no padding
    assert shard_units([10, 20], 2, math.inf) == 40  # one batch padded to 20
    # sorted by length before batching, as the worker does: [10, 12] and [20, 30]
    assert shard_units([30, 10, 20, 12], 2, math.inf) == 2 * 12 + 2 * 30
    assert batch_units(1, 100, 100.0) == 200  # at the crossover the T^2 term equals the linear one
    assert shard_units([40], 1, 10.0) == 40 + 160


def test_crossover_is_where_attention_work_equals_the_linear_work() -> None:
    d_model, d_mlp, n_heads = 576, 1536, 9
    cross = crossover("scan", d_model, d_mlp, n_heads)
    # per token and layer: linear 4 d^2 + 3 d d_mlp; attention 2 d per key, so equal at T = cross
    assert 2 * d_model * cross == pytest.approx(4 * d_model**2 + 3 * d_model * d_mlp)
    assert crossover("attention", d_model, d_mlp, n_heads) < cross  # the pattern reducers add T^2 work


def test_eta_rescales_the_predicted_work_by_the_measured_time() -> None:
    eta = Eta({0: 1.0, 1: 2.0, 2: 3.0})
    assert eta.seconds_left() is None  # no shard measured: no scale yet
    eta.finish(0, 10.0)
    assert eta.seconds_left() == pytest.approx((2 + 3) * 10.0)
    eta.finish(1, 10.0)  # slower than predicted for shard 0: the rate is now 20 s / 3 units
    assert eta.seconds_left() == pytest.approx(3 * 20.0 / 3)
    eta.finish(1, 99.0)  # a shard counts once
    assert eta.seconds_left() == pytest.approx(20.0)
    eta.finish(2, 5.0)
    assert eta.seconds_left() == 0.0


def test_predicted_work_grows_with_the_analyses_and_the_lengths() -> None:
    dims = {"n_layers": 4, "d_model": 64, "d_mlp": 256, "n_heads": 4}
    settings = SweepSettings()
    one = predicted_shard_work([10, 20], ["norms"], settings, dims, None)
    assert predicted_shard_work([10, 20], ["norms", "scan"], settings, dims, None) > one
    assert predicted_shard_work([10, 40], ["norms"], settings, dims, None) > one
    assert predicted_shard_work([10, 20], ["norms"], settings, dims, 1) < one  # no padding


def test_sample_takes_prompts_of_typical_length() -> None:
    lengths = [50, 3, 7, 900, 8, 9, 6, 5]
    picked = sample_indices(lengths, 3)
    assert len(picked) == 3 and picked == sorted(picked)
    assert 3 not in picked and 1 not in picked  # not the extremes
    assert sample_indices(lengths, 20) == list(range(len(lengths)))


# ----------------------------------------------------------------------------- the projection


def test_plan_projects_the_rows_the_sweep_writes_and_writes_nothing(tiny_llama, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dict(analyses=["norms", "truncate", "scan", "attention"], shard_size=2, ks=[1, 3])
    monkeypatch.chdir(tmp_path)
    plan = plan_sweep(CORPUS, tiny_llama, SweepSettings(**settings), sample_size=2)
    assert list(tmp_path.iterdir()) == []  # nothing written
    payload = plan.to_json()
    assert set(payload) >= {"analyses", "total", "n_prompts", "n_tokens", "device", "sample"}
    assert payload["n_prompts"] == len(TEXTS) and payload["device"] == "cpu"
    assert len(payload["sample"]["prompts"]) == 2
    for part in payload["analyses"].values():
        assert set(part) >= {"seconds", "peak_bytes", "batch_size", "disk_bytes"}
        assert part["seconds"] > 0 and part["disk_bytes"] > 0 and part["peak_bytes"] > 0
    # Each figure is rounded to 0.01 s on its own, so the parts add up to the total within that.
    parts = [part["seconds"] for part in payload["analyses"].values()]
    assert payload["total"]["overhead_seconds"] >= 0
    assert payload["total"]["seconds"] == pytest.approx(payload["total"]["overhead_seconds"] + sum(parts),
                                                        abs=0.005 * (len(parts) + 2))

    out = tmp_path / "run"
    run_sweep(CORPUS, out, tiny_llama, SweepSettings(**settings), device="cpu")
    manifest = store.read_manifest(out)
    for name, part in payload["analyses"].items():
        assert part["rows"] == sum(shard["rows"][name] for shard in manifest["shards"]), name
        written = sum(path.stat().st_size for path in (out / name).glob("shard-*.parquet"))
        assert 0.5 < part["disk_bytes"] / written < 2.0, name  # bytes per row from the sample's Parquet


def test_sweep_reports_a_shrinking_eta(tiny_llama, tmp_path: Path) -> None:
    seen: list[float | None] = []
    run_sweep(CORPUS, tmp_path / "run", tiny_llama, SweepSettings(analyses=["norms"], shard_size=1), device="cpu",
              on_eta=seen.append)
    assert len(seen) == len(TEXTS) + 1
    assert seen[0] is None and seen[-1] == 0.0
    assert all(value is not None and value > 0 for value in seen[1:-1])


def test_cli_plan_prints_json_and_writes_no_results_directory(run_cli, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    out = tmp_path / "never"
    code, stdout, stderr = run_cli("sweep", str(corpus), "--out", str(out), "--model", "tiny-llama", "--device", "cpu",
                                   "--analyses", "norms,attention", "--plan", "--json", "--batch-size", "2")
    assert code == 0, stderr
    assert not out.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.txt"]
    payload = json.loads(stdout)
    assert set(payload["analyses"]) == {"norms", "attention"}
    assert payload["analyses"]["norms"]["batch_size"] == 2
    assert payload["n_prompts"] == len(TEXTS)


def test_cli_plan_table(run_cli, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    code, stdout, stderr = run_cli("sweep", str(corpus), "--out", str(tmp_path / "never"), "--model", "tiny-llama",
                                   "--device", "cpu", "--analyses", "norms", "--plan")
    assert code == 0, stderr
    assert "sweep plan" in stdout and "norms" in stdout and "total" in stdout
    assert not (tmp_path / "never").exists()


def test_cli_refuses_a_bad_batch_size_before_loading(run_cli, tmp_path: Path) -> None:
    code, _, stderr = run_cli("sweep", "--out", str(tmp_path / "x"), "--model", "tiny-llama", "--batch-size", "0")
    assert code == 2 and "--batch-size" in stderr
    code, _, stderr = run_cli("sweep", "--out", str(tmp_path / "x"), "--model", "tiny-llama", "--max-memory", "lots")
    assert code == 2 and "--max-memory" in stderr
