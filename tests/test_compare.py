"""`horizon compare`: its --json against numbers computed from the Parquet files directly; set-ups, damage, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.figure_sweeps import gpt2_dir, llama_dir

FIXTURES = (llama_dir, gpt2_dir)  # the shared sweeps, used as fixtures below


def read(directory: Path, table: str):
    return pq.read_table(sorted((directory / table).glob("shard-*.parquet")))


def expected_row(directory: Path) -> dict:
    """The comparison numbers of one directory, from its Parquet files and manifest alone."""
    manifest = json.loads((directory / "manifest.json").read_text())
    n_layers = manifest["model"]["n_layers"]
    norms = read(directory, "norms").to_pydict()
    site = np.array(norms["site"])
    layer, position = np.array(norms["layer"])[site == "resid_pre"], np.array(norms["position"])[site == "resid_pre"]
    norm = np.array(norms["norm"], dtype=np.float64)[site == "resid_pre"]
    mean = np.array([norm[(layer == row) & (position > 0)].mean() for row in range(n_layers + 1)])
    bos = np.array([norm[(layer == row) & (position == 0)].mean() for row in range(n_layers + 1)])

    scan = read(directory, "scan").to_pydict()
    only = np.array(scan["only_layer"])
    keep = only < 0
    start, k = np.array(scan["start_layer"])[keep], np.array(scan["k"])[keep]
    weight = np.array(scan["n_tokens"], dtype=np.float64)[keep]
    delta = np.array(scan["delta_loss"])[keep]
    tol = manifest["analyses"]["scan"]["tol"]
    horizons = {}
    for s in sorted(set(start.tolist())):
        ok = [int(value) for value in sorted(set(k[start == s].tolist()))
              if np.average(delta[(start == s) & (k == value)], weights=weight[(start == s) & (k == value)]) <= tol]
        horizons[str(s)] = min(ok) if ok else None

    truncate = read(directory, "truncate").to_pydict()
    length, trow = np.array(truncate["length"]), np.array(truncate["layer"])
    cos = np.array(truncate["cos"], dtype=np.float64)
    rows = {"early": 1, "middle": n_layers // 2, "final": n_layers}
    cosines = {str(c): {where: float(np.median(cos[(length == c) & (trow == at)])) for where, at in rows.items()}
               for c in manifest["analyses"]["truncate"]["lengths"]}

    attention = read(directory, "attention").to_pydict()
    alayer, head = np.array(attention["layer"]), np.array(attention["head"])
    queries = np.array(attention["n_queries"], dtype=np.float64)
    distance = np.array(attention["mean_distance_no_bos"], dtype=np.float64)
    cells = set(zip(alayer.tolist(), head.tolist(), strict=True))
    heads = sorted((float(np.average(distance[(alayer == a) & (head == h)],
                                     weights=queries[(alayer == a) & (head == h)])), int(a), int(h)) for a, h in cells)
    return {"n_layers": n_layers, "d_model": manifest["model"]["d_model"], "mean": mean, "bos": bos,
            "horizons": horizons, "ablation": manifest["analyses"]["scan"].get("ablation", "zero"),
            "cosines": cosines, "local": heads[:3], "long": heads[::-1][:3]}


def test_compare_json_matches_the_parquet_files(llama_dir: Path, gpt2_dir: Path, run_cli) -> None:
    code, out, err = run_cli("compare", str(llama_dir), str(gpt2_dir), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert [row["model"] for row in payload["models"]] == ["tiny-llama", "tiny-gpt2"]
    for row, directory in zip(payload["models"], (llama_dir, gpt2_dir), strict=True):
        want = expected_row(directory)
        assert row["dir"] == str(directory)
        assert row["n_layers"] == want["n_layers"] and row["d_model"] == want["d_model"]
        first, last = row["fit_window"]
        rows = np.arange(first, last + 1)
        slope, intercept = np.polyfit(rows, np.log(want["mean"][first:last + 1]), 1)
        assert row["growth_rate"] == pytest.approx(np.exp(slope), rel=1e-5)
        fitted = intercept + slope * rows
        logs = np.log(want["mean"][first:last + 1])
        r2 = 1 - np.sum((logs - fitted) ** 2) / np.sum((logs - logs.mean()) ** 2)
        assert row["r2"] == pytest.approx(r2, rel=1e-4, abs=1e-6)
        ratios = want["bos"] / want["mean"]
        assert row["bos_norm_ratio"] == pytest.approx(ratios.max(), rel=1e-5)
        assert row["bos_norm_ratio_layer"] == int(np.argmax(ratios))
        assert row["effective_horizon"] == {want["ablation"]: want["horizons"]}
        assert row["cosine_layers"] == {"early": 1, "middle": want["n_layers"] // 2, "final": want["n_layers"]}
        for c, values in want["cosines"].items():
            for where, value in values.items():
                assert row["median_cosine"][c][where] == pytest.approx(value, rel=1e-5), (c, where)
        for key, heads in (("most_local_heads", want["local"]), ("most_long_range_heads", want["long"])):
            assert [(h["layer"], h["head"]) for h in row[key]] == [(a, b) for _, a, b in heads]
            assert [h["mean_distance"] for h in row[key]] == pytest.approx([d for d, _, _ in heads], rel=1e-6)
        assert row["corpus"]["name"] == "figures-test"


def test_different_setups_are_named(llama_dir: Path, gpt2_dir: Path, run_cli) -> None:
    code, out, err = run_cli("compare", str(llama_dir), str(gpt2_dir), "--json")
    payload = json.loads(out)
    assert payload["models"][0]["settings_differ"] == []
    differ = payload["models"][1]["settings_differ"]
    assert "scan.ablation" in differ and "truncate.lengths" in differ
    assert any("not comparable" in line and str(gpt2_dir) in line for line in payload["warnings"])
    code, out, err = run_cli("compare", str(llama_dir), str(gpt2_dir))
    assert code == 0 and "models compared" in out
    assert "not comparable" in err and "scan.ablation" in err
    code, out, err = run_cli("compare", str(llama_dir), str(llama_dir), "--json")
    rows = json.loads(out)["models"]
    assert rows[1]["settings_differ"] == [] and rows[0]["label"] != rows[1]["label"]


def test_compare_imports_no_torch(llama_dir: Path, gpt2_dir: Path) -> None:
    code = ("import sys; from horizon.tui.cli.app import main; rc = main(['compare', *sys.argv[1:], '--json']); "
            "sys.exit(rc if rc else (3 if 'torch' in sys.modules else 4 if 'matplotlib' in sys.modules else 0))")
    finished = subprocess.run([sys.executable, "-c", code, str(llama_dir), str(gpt2_dir)], capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert len(json.loads(finished.stdout)["models"]) == 2


def test_a_damaged_directory_is_compared_as_far_as_it_is_intact(llama_dir: Path, gpt2_dir: Path, tmp_path: Path,
                                                                 run_cli) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(gpt2_dir, damaged)
    (damaged / "attention" / "shard-00000.parquet").write_bytes(b"not parquet")
    code, out, err = run_cli("compare", str(llama_dir), str(damaged), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert any("shard-00000.parquet" in line for line in payload["warnings"])
    row = payload["models"][1]
    assert row["growth_rate"] is not None and row["most_local_heads"]  # the intact shard still counts
    assert row["problems"]


@pytest.mark.parametrize(("args", "words"), [
    (["--x", "width"], "--x"),
    (["--format", "gif", "--out", "OUT"], "--format"),
])
def test_bad_options_are_one_line(llama_dir: Path, tmp_path: Path, run_cli, args: list[str], words: str) -> None:
    args = [str(tmp_path / "figs") if arg == "OUT" else arg for arg in args]
    code, out, err = run_cli("compare", str(llama_dir), *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and words in err
    assert not (tmp_path / "figs").exists()


def test_unknown_directory_and_unwritable_out(llama_dir: Path, tmp_path: Path, run_cli) -> None:
    code, out, err = run_cli("compare", str(llama_dir), str(tmp_path / "nowhere"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "not found" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run_cli("compare", str(llama_dir), "--out", str(blocker / "figs"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write" in err and str(blocker) in err


def test_stored_views_of_the_wrong_shape_are_computed_again(llama_dir: Path, tmp_path: Path, run_cli) -> None:
    from horizon.core.results import store
    from horizon.core.results.views import VIEWS_FILE, views_fingerprint, views_sha256

    copy = tmp_path / "crafted"
    shutil.copytree(llama_dir, copy)
    views = {"norms": {"growth": 5, "sites": []}}
    payload = {"fingerprint": views_fingerprint(store.open_results(copy)), "sha256": views_sha256(views),
               "views": views}
    (copy / VIEWS_FILE).write_text(json.dumps(payload))
    code, out, err = run_cli("compare", str(copy), str(llama_dir), "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert any("cannot be compared" in line for line in payload["warnings"])
    first, second = payload["models"]
    assert first["growth_rate"] == pytest.approx(second["growth_rate"], rel=1e-9)
    assert first["most_local_heads"] == second["most_local_heads"]
