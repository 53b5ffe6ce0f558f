"""Sweeps: tables against the analyses run directly, sharding, merge, resume after kill -9, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from horizon.core.errors import HorizonError
from horizon.core.model.corpus import Corpus, tokenize_corpus
from horizon.core.results import store
from horizon.core.sweep.sweep import ShardSpec, SweepSettings, corpus_views, plan_shards, run_sweep

TEXTS = [
    "The river rose after three days of rain, and the bridge was closed to traffic on Monday.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Mix the flour and the butter, then add two eggs, a pinch of salt and a little milk.",
    "Q: Where is the station?\nA: Second street on the left, next to the old bank.",
    "La ville est située au bord du lac.",
]
CORPUS = Corpus(name="test", texts=TEXTS, kinds=[""] * len(TEXTS))
ALL = ["norms", "truncate", "scan", "attention"]
KEYS = {
    "prompts": ["prompt"],
    "tokens": ["prompt", "position"],
    "norms": ["prompt", "site", "layer", "position"],
    "truncate": ["prompt", "length", "position", "layer"],
    "scan": ["prompt", "start_layer", "k"],
    "attention": ["prompt", "layer", "head"],
}


def settings(**changes) -> SweepSettings:
    return SweepSettings(analyses=list(ALL), shard_size=2, **changes)


def light() -> SweepSettings:
    """The cheaper analyses, for the tests about splitting work (truncate checks the shared corpus mean)."""
    return SweepSettings(analyses=["norms", "truncate"], shard_size=2)


LIGHT_TABLES = ("prompts", "tokens", "norms", "truncate")


@pytest.fixture(scope="module")
def full(tiny_llama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "full"
    summary = run_sweep(CORPUS, out, tiny_llama, settings(), device="cpu")
    assert summary.complete and summary.shards_total == 3 and summary.prompts_run == 5
    return out


def sorted_table(results: store.Results, name: str) -> pa.Table:
    table = results.table(name)
    return table.sort_by([(key, "ascending") for key in KEYS[name]])


def assert_same_tables(left: Path, right: Path, tables: tuple[str, ...] = tuple(KEYS)) -> None:
    a, b = store.open_results(left), store.open_results(right)
    assert a.problems == [] and b.problems == []
    for name in tables:
        x, y = sorted_table(a, name), sorted_table(b, name)
        assert x.num_rows == y.num_rows > 0, name
        for column in x.column_names:
            xs, ys = x.column(column).to_pylist(), y.column(column).to_pylist()
            if isinstance(xs[0], float):
                np.testing.assert_allclose(xs, ys, rtol=1e-4, atol=1e-5, err_msg=f"{name}.{column}")
            else:
                assert xs == ys, f"{name}.{column}"


# ----------------------------------------------------------------------------- planning


def test_shard_spec_and_plan() -> None:
    assert plan_shards(5, 2) == [[0, 1], [2, 3], [4]]
    spec = ShardSpec.parse("1/3")
    assert (spec.index, spec.count, str(spec)) == (1, 3, "1/3")
    owners = [[ShardSpec(i, 3).owns(shard) for i in range(3)] for shard in range(10)]
    assert all(sum(row) == 1 for row in owners), "every shard has exactly one worker"
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(HorizonError, match="--shard"):
            ShardSpec.parse(bad)


def test_settings_are_validated() -> None:
    for bad, message in (({"analyses": ["norms", "bogus"]}, "unknown analysis"), ({"shard_size": 0}, "--shard-size"),
                         ({"max_tokens": 1}, "--max-tokens"), ({"tol": -1.0}, "--tol"),
                         ({"analyses": ["truncate"], "bos": False}, "needs BOS")):
        with pytest.raises(HorizonError, match=message):
            SweepSettings(**bad).validate()


# ----------------------------------------------------------------------------- numbers


def test_tables_and_views_match_the_analyses_run_directly(full: Path, tiny_llama) -> None:
    import torch
    from horizon.core.analyses.attention.engine import attention_distance
    from horizon.core.analyses.norms.engine import analyse_norms
    from horizon.core.analyses.scan.engine import scan
    from horizon.core.analyses.truncate.engine import analyse_truncation, mean_residual

    token_ids = tokenize_corpus(tiny_llama, CORPUS)
    results = store.open_results(full)
    views = corpus_views(results)
    assert set(views) == set(ALL)

    # norms: per-position values of the table, and the pooled statistics of the view.
    direct = analyse_norms(tiny_llama, token_ids, True)
    norms = results.table("norms")
    row = norms.filter(pa.compute.equal(norms.column("prompt"), 3)).to_pylist()
    for record in row[:: max(1, len(row) // 50)]:
        expected = direct.norms[record["site"]][3][record["layer"], record["position"]]
        assert record["norm"] == pytest.approx(expected, rel=1e-5)
    for site, stats in direct.stats.items():
        np.testing.assert_allclose(views["norms"]["sites"][site]["mean_norm"], stats.mean_norm, rtol=1e-5)
        np.testing.assert_allclose(views["norms"]["sites"][site]["quantiles"]["25"], stats.quantiles[25], rtol=1e-5)
    assert views["norms"]["growth"]["rate"] == pytest.approx(direct.growth.rate, rel=1e-5)
    assert views["norms"]["n_positions"] == direct.n_positions

    # scan: the token-weighted corpus rows equal one scan over all prompts together.
    together = scan(tiny_llama, token_ids)
    for got, expected in zip(views["scan"]["rows"], together.rows, strict=True):
        assert (got["k"], got["K"], got["start_layer"]) == (expected["k"], expected["K"], expected["start_layer"])
        for name in ("loss", "delta_loss", "kl", "top1_agreement"):
            assert got[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-5), name
    assert views["scan"]["loss_clean"] == pytest.approx(together.loss_clean, rel=1e-5)
    assert views["scan"]["effective_horizon"]["0"] == together.effective_horizon[0]

    # truncate: every shard centred with the corpus mean, so the corpus summary equals one run.
    mu = mean_residual(tiny_llama, token_ids, True)
    np.testing.assert_allclose(results.mu(), mu.numpy(), rtol=1e-5, atol=1e-6)
    report = analyse_truncation(tiny_llama, token_ids, mu=mu)
    for length in (1, 5, 10):
        np.testing.assert_allclose(views["truncate"]["median_cos"][str(length)], report.median_cos[length],
                                   rtol=1e-4, atol=1e-5)
    assert views["truncate"]["n_records"] == len(report.record_pos)

    # attention: query-weighted means of per-prompt statistics equal the pooled statistics.
    with torch.inference_mode():
        pooled = attention_distance(tiny_llama, token_ids, True)
    np.testing.assert_allclose(views["attention"]["mean_distance"], pooled.mean_distance, rtol=1e-6)
    np.testing.assert_allclose(views["attention"]["mass"]["1-5"], pooled.mass["1-5"], rtol=1e-6)
    np.testing.assert_allclose(views["attention"]["mean_distance_no_bos"], pooled.mean_distance_no_bos, rtol=1e-6)


# ----------------------------------------------------------------------------- sharding, merge, mixing


def test_shards_into_one_directory_equal_the_single_run(full: Path, tiny_llama, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    first = run_sweep(CORPUS, out, tiny_llama, light(), device="cpu", shard=ShardSpec(0, 2))
    assert not first.complete and first.shards_run == 2  # shards 0 and 2
    second = run_sweep(CORPUS, out, tiny_llama, light(), device="cpu", shard=ShardSpec(1, 2))
    assert second.complete and second.shards_run == 1 and second.shards_done_before == 2
    assert_same_tables(full, out, LIGHT_TABLES)
    again = run_sweep(CORPUS, out, tiny_llama, light(), device="cpu")
    assert again.shards_run == 0 and again.complete


def test_merge_of_separate_shard_directories(full: Path, tiny_llama, tmp_path: Path, run_cli) -> None:
    for index in range(2):
        run_sweep(CORPUS, tmp_path / f"part{index}", tiny_llama, light(), device="cpu", shard=ShardSpec(index, 2))
    code, out, err = run_cli("merge", str(tmp_path / "part0"), str(tmp_path / "part1"), "--out",
                             str(tmp_path / "merged"), "--json")
    assert code == 0, err
    assert json.loads(out)["shards_done"] == 3
    assert_same_tables(full, tmp_path / "merged", LIGHT_TABLES)
    code, _, err = run_cli("merge", str(tmp_path / "part0"), "--out", str(tmp_path / "merged"))
    assert code == 2 and "not empty" in err


def test_refuses_to_mix_settings_unless_forced(full: Path, tiny_llama, tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    run_sweep(CORPUS, out, tiny_llama, SweepSettings(analyses=["norms"], shard_size=2), device="cpu")
    with pytest.raises(HorizonError, match=r"other settings.*shard_size"):
        run_sweep(CORPUS, out, tiny_llama, SweepSettings(analyses=["norms"], shard_size=3), device="cpu")
    other = Corpus(name="other", texts=TEXTS[:2], kinds=["", ""])
    with pytest.raises(HorizonError, match="corpus_sha256"):
        run_sweep(other, out, tiny_llama, SweepSettings(analyses=["norms"], shard_size=2), device="cpu")
    summary = run_sweep(other, out, tiny_llama, SweepSettings(analyses=["norms"], shard_size=2), device="cpu",
                        force=True)
    assert summary.complete and store.read_manifest(out)["corpus"]["n_prompts"] == 2
    assert sorted(store.open_results(out).table("prompts").column("prompt").to_pylist()) == [0, 1]
    # A new analysis on the same directory runs only that analysis, and keeps the old tables.
    added = run_sweep(other, out, tiny_llama, SweepSettings(analyses=["scan"], shard_size=2, ks=[1, 5]),
                      device="cpu")
    assert added.complete and store.open_results(out).analyses == ["norms", "scan"]
    with pytest.raises(HorizonError, match="no sweep to resume"):
        run_sweep(CORPUS, tmp_path / "fresh", tiny_llama, settings(), device="cpu", resume=True)


# ----------------------------------------------------------------------------- kill -9 and resume


def test_resume_after_kill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Prompt number {i}: " + "the cat sat on the mat. " * (3 + i % 4)
                                  for i in range(12)), encoding="utf-8")
    out = tmp_path / "killed"
    command = [str(Path(sys.executable).parent / "horizon"), "sweep", str(corpus), "--out", str(out),
               "--model", "tiny-llama", "--device", "cpu", "--analyses", "norms,scan", "--ks", "1,2",
               "--shard-size", "1", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            done = sum(1 for shard in store.read_manifest(out)["shards"] if shard["status"] == "done")
        except HorizonError:
            done = 0
        if done >= 2:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted = store.open_results(out)
    assert 2 <= interrupted.n_done() < 12, "the kill landed mid-sweep"
    assert any("not finished" in problem for problem in interrupted.problems)

    finish = subprocess.run([*command, "--resume", "--json"], capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    summary = json.loads(finish.stdout)
    assert summary["complete"] and summary["shards_done_before"] >= 2
    results = store.open_results(out)
    assert results.problems == []
    assert sorted(results.table("prompts").column("prompt").to_pylist()) == list(range(12))
    tokens = results.table("tokens")
    n_positions = tokens.num_rows
    norms = results.table("norms")
    keys = set(zip(*(norms.column(c).to_pylist() for c in KEYS["norms"]), strict=True))
    assert len(keys) == norms.num_rows, "no duplicated row"
    n_layers = store.read_manifest(out)["model"]["n_layers"]
    # resid_pre has L+1 rows (with the final residual), the four other sites L rows, per position.
    assert norms.num_rows == n_positions * ((n_layers + 1) + 4 * n_layers), "no lost row"
    horizon = results.table("scan")
    assert horizon.num_rows == 12 * 2
    assert len(set(zip(*(horizon.column(c).to_pylist() for c in KEYS["scan"]), strict=True))) == horizon.num_rows


# ----------------------------------------------------------------------------- Ray


def test_ray_backend_produces_the_same_tables(full: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    lighter = SweepSettings(analyses=["norms", "truncate", "attention"], shard_size=2)
    summary = run_sweep(CORPUS, out, "tiny-llama", lighter, device="cpu", backend="ray", workers=2)
    assert summary.complete and summary.shards_run == 3
    manifest = store.read_manifest(out)
    assert manifest["runs"][-1]["backend"] == "ray" and manifest["runs"][-1]["workers"] == 2
    assert_same_tables(full, out, (*LIGHT_TABLES, "attention"))


# ----------------------------------------------------------------------------- CLI


def test_report_cli_without_a_model(full: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import horizon.core.model.loader as loader

    def no_model(*args, **kwargs):
        raise AssertionError("report must not load a model")

    monkeypatch.setattr(loader, "load_model", no_model)
    code, out, err = run_cli("report", str(full), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["problems"] == [] and payload["shards"] == {"total": 3, "done": 3}
    for key in ("norms", "truncate", "scan", "attention"):
        assert payload[key] is not None, key
    assert payload["model"]["spec"] == "tiny-llama" and payload["corpus"]["n_prompts"] == 5
    code, out, err = run_cli("report", str(full))
    assert code == 0, err
    for title in ("norms: mean L2 norm", "truncate: median", "scan: loss vs enforced horizon", "attention: mean"):
        assert title in out


def test_report_cli_on_a_damaged_directory(full: Path, run_cli, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(full, copy)
    bad = copy / "scan" / "shard-00001.parquet"
    bad.write_bytes(b"PAR1 not really")
    (copy / store.MANIFEST).unlink()
    code, out, err = run_cli("report", str(copy), "--json")
    assert code == 0
    assert "manifest.json" in err and str(bad) in err
    payload = json.loads(out)
    assert payload["scan"]["n_prompts"] == 3  # shards 0 and 2 are intact
    assert payload["norms"] is not None
    code, _, err = run_cli("report", str(tmp_path / "nothing"))
    assert code == 2 and err.startswith("horizon: error: results directory not found")


def test_sweep_cli_checks_flags_before_loading(run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import horizon.core.model.loader as loader

    seen: dict = {}

    def fake_load(spec, **kwargs):
        seen.update(kwargs, spec=spec)
        raise HorizonError("stopped before loading")

    monkeypatch.setattr(loader, "load_model", fake_load)
    out = str(tmp_path / "o")
    for args, message in ((["--analyses", "norms,nope"], "unknown analysis"), (["--shard", "2/2"], "--shard"),
                          (["--lengths", "a"], "--lengths"), (["--max-tokens", "1"], "--max-tokens"),
                          (["--backend", "ray", "--shard", "0/2"], "--workers")):
        code, _, err = run_cli("sweep", "--out", out, "--model", "tiny-llama", *args)
        assert code == 2 and message in err, (args, err)
    assert seen == {}
    # --device-map / --n-devices pass through to the loader (and on to the bridge).
    code, _, err = run_cli("sweep", "--out", out, "--model", "tiny-llama", "--device-map", "auto", "--n-devices", "2")
    assert code == 2 and "stopped before loading" in err
    assert seen["device_map"] == "auto" and seen["n_devices"] == 2 and seen["spec"] == "tiny-llama"


def test_sweep_cli_end_to_end(run_cli, tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": text}) for text in TEXTS[:3]), encoding="utf-8")
    out = tmp_path / "cli"
    code, stdout, err = run_cli("sweep", str(corpus), "--out", str(out), "--model", "tiny-llama", "--device", "cpu",
                                "--analyses", "norms,attention", "--max-tokens", "12", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["complete"] and summary["prompts_run"] == 3 and summary["tokens_run"] <= 36
    tokens = store.open_results(out).table("tokens")
    assert max(tokens.column("position").to_pylist()) == 11  # cut to 12 tokens, BOS included
    code, _, err = run_cli("sweep", str(corpus), "--out", str(out), "--model", "tiny-llama", "--device", "cpu",
                           "--analyses", "norms", "--max-tokens", "20")
    assert code == 2 and "max_tokens" in err and "--force" in err


def test_report_uses_the_stored_views_without_torch(full: Path) -> None:
    from horizon.core.results.views import VIEWS_FILE, load_views, views_fingerprint

    results = store.open_results(full)
    stored = json.loads((full / VIEWS_FILE).read_text())
    assert stored["fingerprint"] == views_fingerprint(results)
    assert load_views(results)["scan"] == stored["views"]["scan"]
    code = ("import sys; from horizon.tui.cli.app import main; rc = main(['report', sys.argv[1], '--json']); "
            "sys.exit(rc if rc else (3 if 'torch' in sys.modules else 0))")
    finished = subprocess.run([sys.executable, "-c", code, str(full)], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["attention"]["n_layers"] == 4
