"""The results store: atomic writes, the manifest lock, and reading damaged directories."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from horizon.core.errors import HorizonError
from horizon.core.model.corpus import Corpus
from horizon.core.results import store
from horizon.core.sweep.sweep import SweepSettings, run_sweep

TEXTS = [
    "The river rose after three days of rain, and the bridge was closed.",
    "def add(a, b):\n    return a + b",
    "Mix the flour and the butter, then add two eggs and a pinch of salt.",
    "Q: Where is the station? A: Second street on the left, next to the bank.",
]


@pytest.fixture(scope="module")
def swept(tiny_llama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished norms sweep over four prompts, one shard per prompt."""
    out = tmp_path_factory.mktemp("store") / "results"
    corpus = Corpus(name="test", texts=TEXTS, kinds=[""] * len(TEXTS))
    summary = run_sweep(corpus, out, tiny_llama, SweepSettings(analyses=["norms"], shard_size=1), device="cpu")
    assert summary.complete and summary.shards_done == 4
    return out


@pytest.fixture
def copy(swept: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(swept, target)
    return target


def test_atomic_write_leaves_no_temp_file_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "t" / "shard-00000.parquet"
    store.write_table_atomic(path, pa.table({"x": [1, 2, 3]}))
    assert pq.read_table(path).column("x").to_pylist() == [1, 2, 3]

    def broken(handle) -> None:
        handle.write(b"PAR1 half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        store.atomic_write(path, broken)
    assert pq.read_table(path).column("x").to_pylist() == [1, 2, 3]
    assert [file.name for file in path.parent.iterdir()] == [path.name]


def _append_entries(root: str, worker: int, count: int) -> None:
    for index in range(count):
        store.update_manifest(Path(root), lambda m, i=index: m["runs"].append({"worker": worker, "i": i}))


def test_manifest_updates_from_several_processes_are_never_lost(tmp_path: Path) -> None:
    store.write_json_atomic(tmp_path / store.MANIFEST, {"format": store.FORMAT, "version": store.FORMAT_VERSION,
                                                         "runs": []})
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_append_entries, args=(str(tmp_path), worker, 25)) for worker in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    runs = store.read_manifest(tmp_path)["runs"]
    assert sorted((run["worker"], run["i"]) for run in runs) == [(w, i) for w in range(4) for i in range(25)]


def test_manifest_records_what_the_issue_asks(swept: Path) -> None:
    manifest = json.loads((swept / store.MANIFEST).read_text())
    assert manifest["model"]["spec"] == "tiny-llama" and manifest["model"]["hash"] == "tiny-llama"
    assert manifest["dtype"] == "float32" and manifest["device"] == "cpu"
    assert manifest["bos"]["enabled"] is True and manifest["bos"]["token_id"] == 0
    assert manifest["packages"]["torch"] and manifest["packages"]["pyarrow"]
    assert manifest["corpus"]["n_prompts"] == 4 and len(manifest["corpus"]["sha256"]) == 64
    assert set(manifest["analyses"]) == {"norms"}
    assert [shard["status"] for shard in manifest["shards"]] == ["done"] * 4
    assert manifest["created"] and manifest["finished"]
    assert manifest["runs"][0]["ended"] is not None


def test_intact_directory_reads_every_row_once(swept: Path) -> None:
    results = store.open_results(swept)
    assert results.problems == []
    assert results.analyses == ["norms"]
    prompts = results.table("prompts").column("prompt").to_pylist()
    assert sorted(prompts) == [0, 1, 2, 3]
    norms = results.table("norms")
    keys = set(zip(*(norms.column(c).to_pylist() for c in ("prompt", "position", "layer", "site")), strict=True))
    assert len(keys) == norms.num_rows, "no duplicated row"
    # Tables are plain Parquet: readable without this package (a directory glob, as pandas/DuckDB do).
    direct = pq.read_table(str(swept / "norms"))
    assert direct.num_rows == norms.num_rows


def test_missing_manifest_still_shows_the_shards(copy: Path, swept: Path) -> None:
    (copy / store.MANIFEST).unlink()
    results = store.open_results(copy)
    assert any("no manifest.json" in problem for problem in results.problems)
    assert results.table("norms").num_rows == store.open_results(swept).table("norms").num_rows > 0


def test_truncated_parquet_is_named_and_skipped(copy: Path, swept: Path) -> None:
    bad = copy / "norms" / "shard-00002.parquet"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    results = store.open_results(copy)
    assert any(str(bad) in problem and "damaged or truncated" in problem for problem in results.problems)
    prompts = set(results.table("norms").column("prompt").to_pylist())
    assert prompts == {0, 1, 3}
    assert store.damaged_shards(copy, results) == [2]


def test_half_written_and_unrecorded_shards_are_ignored(copy: Path) -> None:
    (copy / "norms" / ".shard-00001.parquet.abc123.tmp").write_bytes(b"PAR1 partial")
    manifest = json.loads((copy / store.MANIFEST).read_text())
    manifest["shards"][3].update(status="pending", rows={})  # killed between rename and manifest update
    store.write_json_atomic(copy / store.MANIFEST, manifest)
    results = store.open_results(copy)
    text = " | ".join(results.problems)
    assert "half-written" in text and "not recorded by the manifest" in text and "not finished" in text
    assert set(results.table("norms").column("prompt").to_pylist()) == {0, 1, 2}


def test_damaged_manifest_and_wrong_row_count(copy: Path) -> None:
    manifest = json.loads((copy / store.MANIFEST).read_text())
    manifest["shards"][0]["rows"]["norms"] += 1
    store.write_json_atomic(copy / store.MANIFEST, manifest)
    assert any("rows but the manifest recorded" in p for p in store.open_results(copy).problems)
    (copy / store.MANIFEST).write_text('{"format": "horizon-res', encoding="utf-8")
    results = store.open_results(copy)
    assert any("is damaged" in problem for problem in results.problems)
    assert results.table("norms") is not None


def test_unreadable_directories_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(HorizonError, match="not found"):
        store.open_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HorizonError, match="nothing to report"):
        store.open_results(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(HorizonError, match="not a results directory"):
        store.open_results(tmp_path / "file")


def test_settings_conflicts_name_the_difference(swept: Path) -> None:
    old = store.read_manifest(swept)
    new = json.loads(json.dumps(old))
    assert store.settings_conflicts(old, new) == []
    new["model"]["hash"] = "other"
    new["analyses"]["norms"] = {"sites": ["resid_pre"]}
    conflicts = store.settings_conflicts(old, new)
    assert any(c.startswith("model_hash") for c in conflicts) and any(c.startswith("norms settings") for c in conflicts)


def test_mu_round_trips(tmp_path: Path) -> None:
    mu = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.write_array_atomic(tmp_path / store.MU_FILE, mu)
    store.write_json_atomic(tmp_path / store.MANIFEST, {"format": store.FORMAT, "version": store.FORMAT_VERSION})
    results = store.Results(path=tmp_path, manifest=None)
    np.testing.assert_array_equal(results.mu(), mu)


def test_a_directory_with_the_old_table_names_is_read_and_not_swept_into(tiny_llama, tmp_path: Path,
                                                                          run_cli) -> None:
    """Tables renamed after their analyses (horizon -> scan, truncation -> truncate): old directories still read."""
    out = tmp_path / "old"
    corpus = Corpus(name="test", texts=TEXTS[:2], kinds=["", ""])
    run_sweep(corpus, out, tiny_llama, SweepSettings(analyses=["truncate", "scan"], shard_size=1, ks=[1, 5]),
              device="cpu")
    code, text, err = run_cli("report", str(out), "--json")
    assert code == 0, err
    current = json.loads(text)
    manifest = json.loads((out / store.MANIFEST).read_text())
    for old, new in store.LEGACY_TABLES.items():
        (out / new).rename(out / old)
        for shard in manifest["shards"]:
            for key in ("rows", "sha256"):
                shard[key][old] = shard[key].pop(new)
    (out / store.MANIFEST).write_text(json.dumps(manifest))
    (out / "views.json").unlink()
    results = store.open_results(out)
    assert results.problems == [] and results.analyses == ["truncate", "scan"]
    code, text, err = run_cli("report", str(out), "--json")
    assert code == 0, err
    legacy = json.loads(text)
    assert legacy["scan"] == current["scan"] and legacy["truncate"] == current["truncate"]
    code, text, err = run_cli("sweep", "--out", str(out), "-m", "tiny-llama", "--device", "cpu", "--resume", "-q",
                              "--analyses", "truncate,scan")
    assert code == 2 and "written by an earlier horizon" in err and len(err.strip().splitlines()) == 1
