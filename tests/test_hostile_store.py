"""Issue 24, classes 1, 4 and the store's part of 6: a results directory from someone else.

1. Nothing outside DIR: with a symbolic link (or a FIFO) in each place the store reads or writes,
   every command (report, compare, figures, merge, the app's ResultsSession, sweep, sweep --resume,
   sweep --force) leaves an outside folder byte for byte as it was, returns, and says what it
   refused in one line.
4. No silent wrong numbers: NaN or inf in a stored corpus-wide array (ablation means, the truncation
   mean residual) is never used; it is computed again, and a computed one with NaN is refused.
6. Shard claims (two sweeps on one --out compute each shard once), a read-only filesystem named as
   such, a damaged manifest's model description not kept on resume.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from horizon.core.errors import HorizonError
from horizon.core.results import confined, store

from tests.hostile_helpers import (
    SWEEP_ARGS,
    assert_one_line,
    copy_of,
    run_bounded,
    shared_sweep,
    tree_digest,
    write_corpus,
)


@pytest.fixture
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shared_sweep(tmp_path_factory)


# ----------------------------------------------------------------------------- 1. nothing outside DIR


def _traps(folder: Path) -> None:
    """What a store following a link would move, remove or overwrite: a user's file, a dead writer's temp
    file, an unrecorded shard, a file named like the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "user.txt").write_text("the user's own notes\n")
    host = store.temp_tag().rsplit("-", 1)[0]
    (folder / f".shard-00000.parquet.{host}-999999.abcd1234.tmp").write_bytes(b"PAR1 someone else's")
    (folder / "shard-00099.parquet").write_bytes(b"PAR1 not ours")


def _link_away(root: Path, name: str, outside: Path) -> None:
    """Move ``root/name`` outside (with traps beside it) and leave a symbolic link to it in its place."""
    place = root / name
    target = outside / name.replace("/", "_")
    if place.is_dir():
        shutil.move(str(place), str(target))
        _traps(target)
    elif place.exists():
        shutil.move(str(place), str(target))
    else:  # quarantine/ does not exist in a clean sweep: point at a folder of the user's
        _traps(target)
    place.symlink_to(target)


LINKED_PLACES = ["scan", "prompts", "tokens", "norms/shard-00001.parquet", store.QUARANTINE, store.LOCK,
                 store.MANIFEST, "views.json", store.MU_FILE, store.ABLATION_MEANS_FILE]


def _every_command(corpus: Path, root: Path, other: Path, work: Path) -> list[list[str]]:
    sweep = ["sweep", str(corpus), "--out", str(root), *SWEEP_ARGS]
    return [
        ["report", str(root)],
        ["report", str(root), "--json"],
        ["compare", str(root), str(other)],
        ["figures", str(root), "--out", str(work / "figures")],
        ["merge", str(root), "--out", str(work / "merged")],
        ["@session", str(root)],
        [*sweep, "--resume"],
        sweep,
        [*sweep, "--force"],
    ]


@pytest.mark.parametrize("place", LINKED_PLACES)
def test_a_link_anywhere_in_dir_never_touches_what_it_points_to(place: str, swept, tmp_path: Path) -> None:
    corpus, clean = swept
    root = copy_of(clean, tmp_path / "results")
    outside = tmp_path / "outside"
    _traps(outside)
    _link_away(root, place, outside)
    before = tree_digest(outside)
    link_target = os.readlink(root / place)

    results = run_bounded(_every_command(corpus, root, clean, tmp_path))

    assert tree_digest(outside) == before, "nothing outside the results directory was read into, moved or removed"
    assert os.readlink(root / place) == link_target, "the link itself is left alone"
    (report, report_json, compare, figures, merge, session, resume, plain, force) = results
    for (code, out, err), most in ((report, 3), (compare, 3), (figures, 20)):  # figures: a note per figure
        assert_one_line(code, out, err, (0,), max_lines=most)
        assert "symbolic link" in err, err
    payload = json.loads(report_json[1])
    assert any("symbolic link" in problem for problem in payload["problems"])
    if place == store.MANIFEST:  # the manifest outside is never read: report knows no model
        assert payload["model"] is None
    assert_one_line(*merge, (0, 2))
    assert_one_line(*session, (0, 2))
    for code, out, err in (resume, plain, force):
        assert_one_line(code, out, err, (2,), "symbolic link")
        assert place.split("/")[0] in err


@pytest.mark.parametrize("place", [store.MANIFEST, "views.json", store.MU_FILE, store.ABLATION_MEANS_FILE,
                                   store.LOCK, "norms/shard-00001.parquet", "scan", store.QUARANTINE])
def test_a_fifo_anywhere_in_dir_never_blocks(place: str, swept, tmp_path: Path) -> None:
    """A FIFO where a file (or folder) belongs: every command returns, readers name it, writers refuse it."""
    corpus, clean = swept
    root = copy_of(clean, tmp_path / "results")
    where = root / place
    if where.is_dir():
        shutil.rmtree(where)
    else:
        where.unlink(missing_ok=True)
    os.mkfifo(where)

    results = run_bounded(_every_command(corpus, root, clean, tmp_path), timeout=300)

    (report, report_json, compare, figures, merge, session, resume, plain, force) = results
    for (code, out, err), most in ((report, 3), (compare, 3), (figures, 20)):  # figures: a note per figure
        assert_one_line(code, out, err, (0,), max_lines=most)
        assert "FIFO" in err, err
    assert any("FIFO" in problem for problem in json.loads(report_json[1])["problems"])
    assert_one_line(*merge, (0, 2))
    assert_one_line(*session, (0, 2))
    for code, out, err in (resume, plain, force):
        assert_one_line(code, out, err, (2,), "FIFO")
    assert (root / place).is_fifo(), "left as it was"


def test_readers_keep_what_is_intact_beside_a_link(swept, tmp_path: Path, run_cli) -> None:
    """A linked table folder is left out; the other tables are read and checked as usual."""
    _, clean = swept
    root = copy_of(clean, tmp_path / "results")
    _link_away(root, "scan", tmp_path / "outside")
    results = store.open_results(root)
    assert "scan" not in results.files and results.table("norms").num_rows == \
        store.open_results(clean).table("norms").num_rows
    code, out, _err = run_cli("report", str(root))
    assert code == 0 and "norms: mean L2 norm" in out and "scan:" not in out


def test_confined_refuses_links_on_the_way_and_at_the_end(tmp_path: Path) -> None:
    """The one helper every store path goes through: each operation, with a link in each position."""
    from horizon.core.results import confined

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (outside / "file").write_text("outside")
    (root / "dir-link").symlink_to(outside)
    (root / "real" / "file-link").symlink_to(outside / "file")
    (root / "real" / "mine").write_text("mine")
    before = tree_digest(outside)
    for operation in (lambda p: confined.open_read(root, p), lambda p: confined.unlink(root, p),
                      lambda p: confined.replace(root, root / "real" / "mine", p),
                      lambda p: confined.copy(root, p, tmp_path / "copy", tmp_path / "copy" / "x")):
        for path in (root / "dir-link" / "file", root / "real" / "file-link"):
            with pytest.raises(confined.Foreign, match="symbolic link"):
                operation(path)
    with pytest.raises(confined.Foreign):
        confined.make_dirs(root, root / "dir-link" / "sub")
    with pytest.raises(confined.Foreign):
        confined.remove_tree(root, root / "dir-link")
    with pytest.raises(confined.Foreign):
        confined.create(root, root / "dir-link", ".x.", ".tmp")
    assert tree_digest(outside) == before and (root / "real" / "mine").read_text() == "mine"
    assert confined.read_bytes(root, root / "real" / "mine", 100) == b"mine"


# ----------------------------------------------------------------------------- 4. NaN in corpus-wide arrays


def _poison(root: Path, name: str, key: str, analysis: str, value: float) -> np.ndarray:
    """Put ``value`` into a stored corpus-wide array and record its new sha256 (as anyone can)."""
    array = np.load(root / name)
    array.flat[3] = value
    np.save(root / name, array)
    manifest = json.loads((root / store.MANIFEST).read_text())
    manifest["analyses"][analysis][key] = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    for shard in manifest["shards"][1:2]:  # one shard of the analysis to redo, so the array is used again
        table = "scan" if analysis == "scan" else "truncate"
        shard["rows"].pop(table)
        shard["sha256"].pop(table)
        shard["status"] = "pending"
    (root / store.MANIFEST).write_text(json.dumps(manifest))
    (root / ("scan" if analysis == "scan" else "truncate") / "shard-00001.parquet").unlink()
    return array


@pytest.mark.parametrize(("name", "key", "analysis", "value"), [
    (store.ABLATION_MEANS_FILE, "_means_sha256", "scan", float("nan")),
    (store.ABLATION_MEANS_FILE, "_means_sha256", "scan", float("inf")),
    (store.MU_FILE, "_mu_sha256", "truncate", float("nan")),
])
def test_nan_in_a_stored_corpus_array_is_computed_again(name: str, key: str, analysis: str, value: float,
                                                         swept, tmp_path: Path, run_cli) -> None:
    corpus, clean = swept
    root = copy_of(clean, tmp_path / "results")
    _poison(root, name, key, analysis, value)
    code, _out, err = run_cli("sweep", str(corpus), "--out", str(root), *SWEEP_ARGS, "--resume", "--json")
    assert code == 0, err
    stored = np.load(root / name)
    assert np.isfinite(stored).all() and np.array_equal(stored, np.load(clean / name)), "computed again, the same"
    table = "scan" if analysis == "scan" else "truncate"
    redone = pq.read_table(root / table / "shard-00001.parquet").to_pandas()
    expected = pq.read_table(clean / table / "shard-00001.parquet").to_pandas()
    value_columns = ["loss", "delta_loss", "kl"] if table == "scan" else ["cos", "cos_raw"]
    assert np.isfinite(redone[value_columns].to_numpy()).all()
    np.testing.assert_allclose(redone[value_columns].to_numpy(), expected[value_columns].to_numpy(), rtol=1e-5,
                               atol=1e-6)
    assert json.loads(run_cli("report", str(root), "--json")[1])["scan"]["effective_horizon"] == \
        json.loads(run_cli("report", str(clean), "--json")[1])["scan"]["effective_horizon"]


def test_computed_means_with_nan_are_refused(swept, tmp_path: Path) -> None:
    """A model that overflows gives NaN means: refused in one line, nothing stored (the fault the check exists for)."""
    import torch
    from horizon.core.patching.ablation import AblationMeans
    from horizon.core.sweep import corpus_arrays

    _, clean = swept
    root = copy_of(clean, tmp_path / "results")
    manifest = store.read_manifest(root)
    manifest["analyses"]["scan"].pop("_means_sha256")
    (root / store.ABLATION_MEANS_FILE).unlink()
    shape = corpus_arrays.corpus_array_shape("scan", manifest["model"])
    poisoned = np.zeros(shape)
    poisoned[1, 2] = np.nan
    with pytest.raises(HorizonError, match="NaN"):
        corpus_arrays.ensure_corpus_array(root, manifest, "scan", lambda: poisoned)
    assert not (root / store.ABLATION_MEANS_FILE).exists()
    means = AblationMeans(torch.tensor(poisoned))
    with pytest.raises(HorizonError, match="NaN"):
        means.check(manifest["model"]["n_layers"], manifest["model"]["d_model"])
    finite = corpus_arrays.ensure_corpus_array(root, manifest, "scan", lambda: np.ones(shape))
    assert np.array_equal(finite, np.ones(shape))


def test_load_array_refuses_what_its_header_cannot_hold(tmp_path: Path) -> None:
    np.save(tmp_path / "good.npy", np.ones((3, 4)))
    assert store.load_array(tmp_path, tmp_path / "good.npy", (3, 4)).shape == (3, 4)
    with pytest.raises(ValueError, match="shape"):
        store.load_array(tmp_path, tmp_path / "good.npy", (4, 4))
    np.save(tmp_path / "cube.npy", np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="shape"):
        store.load_array(tmp_path, tmp_path / "cube.npy", (3, 4))
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }"
    header += b" " * (118 - len(header)) + b"\n"
    (tmp_path / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 8)
    with pytest.raises(ValueError, match="claims"):
        store.load_array(tmp_path, tmp_path / "huge.npy")
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="not floats"):
        store.load_array(tmp_path, tmp_path / "text.npy")


# ----------------------------------------------------------------------------- 6. claims, read-only, damage


def test_two_sweeps_on_one_out_compute_each_shard_once(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Prompt number {i}: the cat sat on the mat, and then it slept." for i in range(10)))
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("horizon")), "sweep", str(corpus), "--out", str(out), "--model",
               "tiny-llama", "--device", "cpu", "--analyses", "norms,scan", "--ks", "1,2", "--shard-size", "1",
               "-q", "--json"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = []
    for process in (first, second):
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        runs.append(json.loads(stdout))
    assert sum(run["shards_run"] for run in runs) == 10, runs  # none computed twice
    results = store.open_results(out)
    assert results.problems == [] and results.n_done() == 10
    assert sorted(results.table("prompts").column("prompt").to_pylist()) == list(range(10))
    assert not (out / store.CLAIMS).exists() or not any((out / store.CLAIMS).iterdir()), "claims released"


def test_a_live_claim_is_left_to_its_process_and_a_dead_one_is_taken(swept, tmp_path: Path) -> None:
    from horizon.core.model.corpus import load_corpus
    from horizon.core.sweep.sweep import SweepSettings, run_sweep

    corpus, clean = swept
    root = copy_of(clean, tmp_path / "results")
    manifest = json.loads((root / store.MANIFEST).read_text())
    manifest["shards"][2].update(status="pending", rows={}, sha256={})
    (root / store.MANIFEST).write_text(json.dumps(manifest))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        claim = root / store.CLAIMS / "shard-00002.claim"
        claim.parent.mkdir(exist_ok=True)
        claim.write_text(f"{store.temp_tag().rsplit('-', 1)[0]}-{sleeper.pid}")
        settings = SweepSettings(analyses=["norms", "truncate", "scan", "attention"], ks=[1, 2], lengths=[1],
                                 ablation="mean", shard_size=1)
        summary = run_sweep(load_corpus(str(corpus)), root, "tiny-llama", settings, device="cpu", resume=True)
        assert summary.shards_run == 0 and not summary.complete
        assert any("another process" in note for note in summary.notes)
    finally:
        sleeper.kill()
        sleeper.wait()
    summary = run_sweep(load_corpus(str(corpus)), root, "tiny-llama", settings, device="cpu", resume=True)
    assert summary.shards_run == 1 and summary.complete and not claim.exists()


def test_a_read_only_filesystem_is_called_read_only(swept, tmp_path: Path, run_cli, monkeypatch) -> None:
    corpus, _ = swept

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(args[1]) if len(args) > 1 else "")

    monkeypatch.setattr(confined, "create", read_only)
    monkeypatch.setattr(confined, "open_lock", read_only)
    code, out, err = run_cli("sweep", str(corpus), "--out", str(tmp_path / "out"), *SWEEP_ARGS)
    assert_one_line(code, out, err, (2,), "read-only")
    assert "ermission" not in err

    class Flags:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    monkeypatch.setattr(os, "statvfs", lambda path: Flags())
    code, out, err = run_cli("sweep", str(corpus), "--out", str(tmp_path / "other"), *SWEEP_ARGS)
    assert_one_line(code, out, err, (2,), "read-only filesystem")


@pytest.mark.parametrize("n_layers", [10**18, 5])
def test_a_resume_does_not_keep_a_damaged_model_description(n_layers: int, swept, tmp_path: Path) -> None:
    """n_layers beyond any model, or merely not this model's: the manifest is damaged and is rebuilt."""
    from horizon.core.model.corpus import load_corpus
    from horizon.core.sweep.sweep import SweepSettings, run_sweep

    corpus, clean = swept
    root = copy_of(clean, tmp_path / "results")
    manifest = json.loads((root / store.MANIFEST).read_text())
    manifest["model"]["n_layers"] = n_layers
    (root / store.MANIFEST).write_text(json.dumps(manifest))
    settings = SweepSettings(analyses=["norms", "truncate", "scan", "attention"], ks=[1, 2], lengths=[1],
                             ablation="mean", shard_size=1)
    summary = run_sweep(load_corpus(str(corpus)), root, "tiny-llama", settings, device="cpu", resume=True)
    assert any("rebuilt" in note for note in summary.notes) and summary.complete
    assert store.read_manifest(root)["model"]["n_layers"] == store.read_manifest(clean)["model"]["n_layers"]
    assert summary.shards_run == 0, "the intact shards were adopted"


def test_a_folder_of_the_users_own_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    """A link of the user's under a name the store never uses is not foreign: the folder is refused as before."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("x")
    (user / "link").symlink_to(tmp_path)
    from horizon.tui.cli.app import main

    assert main(["sweep", str(write_corpus(tmp_path)), "--out", str(user), "-m", "tiny-llama", "--device", "cpu",
                 "--analyses", "norms", "-q"]) == 2
    assert sorted(path.name for path in user.iterdir()) == ["link", "notes.txt"]
