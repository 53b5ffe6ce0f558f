"""Issue 17: every failure path clean, tried as a hostile but realistic user would.

Each class of the issue has tests here (damaged stores, a lost manifest, leftovers, unwritable
outputs, interrupts, option checks, hostile text, special inputs); ``test_every_command_on_damaged
stores`` runs every command against damaged results directories and asserts what the README
promises: the exit code, at most three stderr lines, no traceback, no raw control character on
stdout, and the row counts of an undamaged run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from horizon.core.errors import HorizonError
from horizon.core.results import confined, store
from horizon.core.results.views import VIEWS_FILE

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


@pytest.mark.parametrize("delay", [0.25, 0.6])
def test_ctrl_c_while_starting_is_one_line_and_130(tmp_path: Path, delay: float) -> None:
    """Early Ctrl-C: while the interpreter imports the command modules (Typer, torch).

    (The first few tens of milliseconds, before Python has run a line of ``horizon``, stay Python's own.)
    """
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
    assert results.table("scan").num_rows == 12 * 2


# ----------------------------------------------------------------------------- the damaged-store matrix


TEXTS = [
    "The river rose after three days of rain, and the bridge was closed to traffic.",
    "Evil \x1b[2J prompt \x1b]0;pwned\x07 with [/] markup [bold]and[/bold] a \x9b31m C1 escape, then words.",
    "Mix the flour and the butter, then add two eggs and a pinch of salt.",
    "Q: Where is the station? A: Second street on the left, next to the bank.",
]
SWEEP_ARGS = ("--model", "tiny-llama", "--device", "cpu", "--analyses", "norms,truncate,scan,attention",
              "--ks", "1,3", "--lengths", "1,3", "--shard-size", "1", "-q")


def _write_corpus(directory: Path) -> Path:
    path = directory / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": text}) for text in TEXTS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    """An undamaged sweep (one shard per prompt, every analysis) and its row count per table."""
    from horizon.tui.cli.app import main

    root = tmp_path_factory.mktemp("hostile")
    corpus, out = _write_corpus(root), root / "clean"
    assert main(["sweep", str(corpus), "--out", str(out), *SWEEP_ARGS]) == 0
    results = store.open_results(out)
    assert results.problems == [] and results.n_done() == 4
    return corpus, out, {table: results.table(table).num_rows for table in store.TABLES}


def _corrupt_pages(root: Path) -> None:
    """Keep the footer, ruin the data pages: the metadata reads, the data does not."""
    file = root / "norms" / "shard-00001.parquet"
    data = bytearray(file.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for index in range(8, len(data) - footer - 8):
        data[index] = 0xFF
    file.write_bytes(bytes(data))


def _corrupt_pages_legacy(root: Path) -> None:
    """The same on a manifest written before checksums were recorded (only a full read finds it)."""
    _corrupt_pages(root)
    manifest = json.loads((root / store.MANIFEST).read_text())
    for shard in manifest["shards"]:
        shard.pop("sha256", None)
    (root / store.MANIFEST).write_text(json.dumps(manifest))


def _wrong_schema(root: Path) -> None:
    file = root / "scan" / "shard-00002.parquet"
    rows = pq.read_metadata(file).num_rows
    pq.write_table(pa.table({"prompt": pa.array(["x"] * rows), "k": pa.array([1.5] * rows)}), file)


def _manifest_structure(root: Path) -> None:
    manifest = json.loads((root / store.MANIFEST).read_text())
    manifest["shards"][1]["rows"] = ["norms"]
    manifest["model"]["n_layers"] = "four"
    (root / store.MANIFEST).write_text(json.dumps(manifest))


def _manifest_truncated(root: Path) -> None:
    text = (root / store.MANIFEST).read_text()
    (root / store.MANIFEST).write_text(text[: len(text) // 2])


def _manifest_missing(root: Path) -> None:
    (root / store.MANIFEST).unlink()


def _views_mismatch(root: Path) -> None:
    payload = json.loads((root / VIEWS_FILE).read_text())
    payload["views"]["scan"]["loss_clean"] = 123.0  # the fingerprint still names the same files
    (root / VIEWS_FILE).write_text(json.dumps(payload))


def _views_crafted(root: Path) -> None:
    """A cache written by someone else: self-consistent, but full of escapes and markup."""
    from horizon.core.results.views import views_sha256

    payload = json.loads((root / VIEWS_FILE).read_text())
    views = payload["views"]
    views["truncate"]["outliers"][0].update(context_before="\x1b]0;owned\x07\x1b[2J", token="[/]",
                                            context_after="\x9b1;1H[bold red]x")
    views["truncate"]["categories"][str(min(views["truncate"]["lengths"]))]["evil\x1b[5m[/]"] = [0.0] * 5
    views["scan"]["rows"][0]["k"] = "\x1b[2J"  # of the wrong type: rendering it fails, and is recomputed
    payload["sha256"] = views_sha256(views)
    (root / VIEWS_FILE).write_text(json.dumps(payload))


def _views_garbage(root: Path) -> None:
    (root / VIEWS_FILE).write_text('["not", "views"]')


def _mu_damaged(root: Path) -> None:
    (root / store.MU_FILE).write_bytes(b"\x93NUMPY garbage")


def _shard_missing(root: Path) -> None:
    (root / "attention" / "shard-00003.parquet").unlink()


def _leftovers_and_strays(root: Path) -> None:
    here = store.temp_tag().rsplit("-", 1)[0]
    (root / "norms" / f".shard-00001.parquet.{here}-999999.abc12345.tmp").write_bytes(b"PAR1 half")  # a dead pid
    remote = root / "tokens" / ".shard-00002.parquet.otherhost-12.abc12345.tmp"  # another machine, 2 days old
    remote.write_bytes(b"PAR1 half")
    os.utime(remote, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    (root / ".manifest.json.x.tmp").write_text("{")
    (root / ".views.json.x.tmp").write_text("{")
    (root / f".{store.MU_FILE}.x.tmp").write_bytes(b"")
    shutil.copyfile(root / "norms" / "shard-00000.parquet", root / "norms" / "shard-00007.parquet")
    (root / "tokens" / "notes.txt").write_text("a stray file a Parquet reader would choke on")


DAMAGE = {
    "corrupt_pages": _corrupt_pages,
    "corrupt_pages_legacy": _corrupt_pages_legacy,
    "wrong_schema": _wrong_schema,
    "manifest_structure": _manifest_structure,
    "manifest_truncated": _manifest_truncated,
    "manifest_missing": _manifest_missing,
    "views_mismatch": _views_mismatch,
    "views_crafted": _views_crafted,
    "views_garbage": _views_garbage,
    "mu_damaged": _mu_damaged,
    "shard_missing": _shard_missing,
    "leftovers_and_strays": _leftovers_and_strays,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_command_on_damaged_stores(damage: str, baseline, run_cli, tmp_path: Path) -> None:
    corpus, clean, rows = baseline
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    DAMAGE[damage](copy)

    # report: names the problem, shows what is intact, never a traceback or a raw escape.
    code, out, err = run_cli("report", str(copy))
    assert_clean(code, out, err, 0)
    assert "horizon: warning:" in err or "horizon: note:" in err, err
    assert "norms: mean L2 norm" in out
    code, out, err = run_cli("report", str(copy), "--json")
    assert_clean(code, out, err, 0)
    # Every damage is named; a cache that is consistent with itself is served to --json as it is (escaped
    # the JSON way), and its shape is only found wrong when the rich view draws it.
    assert json.loads(out)["problems"] or damage == "views_crafted", "every damage is named"

    # the app's results mode (inspect --results): opens what is intact, or refuses with a HorizonError.
    from horizon.core.sources.results_session import ResultsSession

    try:
        session = ResultsSession(str(copy))
        session.norms(), session.truncate()
    except HorizonError:
        assert damage.startswith("manifest"), damage

    # merge: copies only intact files, or refuses in one line.
    code, out, err = run_cli("merge", str(copy), "--out", str(tmp_path / "merged"))
    assert code in (0, 2)
    assert_clean(code, out, err, code)

    # sweep --resume: redoes what is damaged, keeps the rest, leaves a directory any reader can take.
    code, out, err = run_cli("sweep", str(corpus), "--out", str(copy), *SWEEP_ARGS, "--resume")
    assert_clean(code, out, err, 0)
    after = store.open_results(copy)
    assert after.problems == [], after.problems
    assert not store.leftover_temps(copy)
    for table, count in rows.items():
        assert after.table(table).num_rows == count, table
        assert pq.read_table(str(copy / table)).num_rows == count, table  # a plain Parquet reader
    code, out, err = run_cli("report", str(copy))
    assert_clean(code, out, err, 0)
    assert "warning" not in err, err


def test_resume_redoes_only_the_damaged_shard(baseline, tmp_path: Path) -> None:
    from horizon.core.model.corpus import load_corpus
    from horizon.core.sweep.sweep import SweepSettings, run_sweep

    corpus, clean, _rows = baseline
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    _corrupt_pages(copy)
    settings = SweepSettings(analyses=["norms", "truncate", "scan", "attention"], ks=[1, 3], lengths=[1, 3],
                             shard_size=1)
    summary = run_sweep(load_corpus(str(corpus)), copy, "tiny-llama", settings, device="cpu", resume=True)
    assert summary.complete and summary.shards_run == 1 and summary.shards_done_before == 3
    assert any("quarantine" in note for note in summary.notes)
    quarantined = list((copy / store.QUARANTINE).rglob("shard-00001.parquet"))
    assert len(quarantined) == 1 and quarantined[0].parent.name == "norms"


# ----------------------------------------------------------------------------- 2. a lost manifest


@pytest.mark.parametrize("damage", ["manifest_missing", "manifest_truncated", "manifest_structure"])
def test_lost_manifest_is_rebuilt_without_redoing_intact_shards(damage: str, baseline, tmp_path: Path) -> None:
    from horizon.core.model.corpus import load_corpus
    from horizon.core.sweep.sweep import SweepSettings, run_sweep

    corpus, clean, rows = baseline
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    DAMAGE[damage](copy)
    (copy / "scan-of-another-run").mkdir()
    settings = SweepSettings(analyses=["norms", "truncate", "scan", "attention"], ks=[1, 3], lengths=[1, 3],
                             shard_size=1)
    summary = run_sweep(load_corpus(str(corpus)), copy, "tiny-llama", settings, device="cpu", resume=True)
    assert summary.complete and summary.shards_run == 0, "every intact shard was adopted, none redone"
    assert any("rebuilt" in note for note in summary.notes)
    results = store.open_results(copy)
    assert results.problems == []
    assert {table: results.table(table).num_rows for table in store.TABLES} == rows
    if damage != "manifest_missing":
        assert list((copy / store.QUARANTINE).rglob(store.MANIFEST)), "the damaged manifest is kept aside"


def test_rebuild_refuses_files_of_other_settings(baseline, tmp_path: Path) -> None:
    """Files whose content does not fit this run (other ks) are moved aside and redone, not adopted."""
    from horizon.core.model.corpus import load_corpus
    from horizon.core.sweep.sweep import SweepSettings, run_sweep

    corpus, clean, _rows = baseline
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    _manifest_missing(copy)
    settings = SweepSettings(analyses=["norms", "scan"], ks=[1, 2], shard_size=1)
    summary = run_sweep(load_corpus(str(corpus)), copy, "tiny-llama", settings, device="cpu")
    assert summary.complete and summary.shards_run == 4  # scan redone everywhere; norms adopted
    horizon = store.open_results(copy).table("scan")
    assert sorted(set(horizon.column("k").to_pylist())) == [1, 2]
    assert list((copy / store.QUARANTINE).rglob("*.parquet"))


# ----------------------------------------------------------------------------- 4. unwritable outputs


def test_out_under_a_regular_file(run_cli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run_cli("sweep", str(_write_corpus(tmp_path)), "--out", str(blocker / "sub"), *SWEEP_ARGS)
    assert_clean(code, out, err, 2, "is a file, not a directory")
    assert len(err.strip().splitlines()) == 1 and str(blocker) in err


def test_read_only_out(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode: make the write itself fail instead
            def denied(path, *args, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))

            monkeypatch.setattr(confined, "create", denied)
            monkeypatch.setattr(Path, "mkdir", denied)
        code, out, err = run_cli("sweep", str(_write_corpus(tmp_path)), "--out", str(locked / "out"), *SWEEP_ARGS)
        assert_clean(code, out, err, 2, str(locked))
        assert len(err.strip().splitlines()) == 1 and "ermission denied" in err, err
    finally:
        locked.chmod(0o700)


def test_disk_full_keeps_finished_shards_and_resumes(baseline, run_cli, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    corpus, _, rows = baseline
    out = tmp_path / "full"
    real = pq.write_table
    calls = {"n": 0}

    def write_table(table, where, **kwargs):
        calls["n"] += 1
        if calls["n"] > 12:  # two shards of six tables, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)
    code, stdout, err = run_cli("sweep", str(corpus), "--out", str(out), *SWEEP_ARGS)
    assert_clean(code, stdout, err, 2, "no space left on the device")
    assert len(err.strip().splitlines()) == 1 and "--resume" in err and str(out) in err
    assert store.open_results(out).n_done() == 2 and not store.leftover_temps(out)
    monkeypatch.setattr(pq, "write_table", real)
    code, stdout, err = run_cli("sweep", str(corpus), "--out", str(out), *SWEEP_ARGS, "--resume", "--json")
    assert_clean(code, stdout, err, 0)
    assert json.loads(stdout)["shards_done_before"] == 2
    results = store.open_results(out)
    assert results.problems == [] and {table: results.table(table).num_rows for table in store.TABLES} == rows


# ----------------------------------------------------------------------------- 7. hostile text


def test_escape_sequences_never_reach_the_terminal(baseline, run_cli, tmp_path: Path) -> None:
    corpus, _clean, _ = baseline
    code, out, err = run_cli("truncate", "-m", "tiny-llama", "--device", "cpu", "-f", str(corpus), "--outliers",
                             "200")
    assert_clean(code, out, err, 0)
    assert "\\x1b[2J" in out or "\\x1b" in out, "the escape is shown, made visible"
    code, out, err = run_cli("tokens", "-m", "tiny-llama", "-p", TEXTS[1])
    assert_clean(code, out, err, 0)
    code, out, err = run_cli("tokens", "-m", "tiny-llama", "-p", TEXTS[1], "--json")
    assert_clean(code, out, err, 0)
    assert json.loads(out)["tokens"][0][1:], "JSON keeps the exact text, escaped the JSON way"


def test_markup_in_paths_and_model_names(baseline, run_cli, tmp_path: Path) -> None:
    corpus, clean, _ = baseline
    weird = tmp_path / "[/]odd [bold]dir\x1b[2J"
    shutil.copytree(clean, weird)
    code, out, err = run_cli("report", str(weird))
    assert_clean(code, out, err, 0)
    assert "[/]odd" in out
    code, out, err = run_cli("sweep", str(corpus), "--out", str(tmp_path / "[/]new"), "--model", "tiny-llama",
                             "--device", "cpu", "--analyses", "norms", "--max-prompts", "1")
    assert_clean(code, out, err, 0)
    assert "[/]new" in out
    code, out, err = run_cli("tokens", "-m", "[/]no\x1b[2Jmodel", "-p", "hi")
    assert_clean(code, out, err, 2, "[/]no\\x1b[2Jmodel")


def test_app_shows_outside_text_escaped() -> None:
    from horizon.core.untrusted import markup_safe, visible
    from horizon.tui.widgets.token_grid import visible_token
    from rich.text import Text

    assert visible_token(" \x1b[2J") == "·\\x1b[2J"
    assert visible("plain text, no change ↵") == "plain text, no change ↵"
    assert Text.from_markup(markup_safe("[/]a[bold]b\x07")).plain == "[/]a[bold]b\\x07"


# ----------------------------------------------------------------------------- 8. special inputs


def test_special_inputs(run_cli, tmp_path: Path) -> None:
    closed = subprocess.run(f"exec {HORIZON} tokens -m tiny-llama -f - <&-", shell=True, capture_output=True,
                            text=True, timeout=120)
    assert_clean(closed.returncode, closed.stdout, closed.stderr, 2, "stdin is closed")
    assert_clean(*run_cli("tokens", "-m", "tiny-llama", "-f", "/dev/zero"), 2, "is a device")
    assert_clean(*run_cli("sweep", "/dev/zero", "--out", str(tmp_path / "o"), "-m", "tiny-llama"), 2, "is a device")
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    assert_clean(*run_cli("tokens", "-m", str(text), "-p", "hi"), 2, "is not a model")
    import horizon.core.model.prompts as prompts

    big = tmp_path / "big.txt"
    big.write_text("word " * 1000)
    original = prompts.MAX_INPUT_BYTES
    prompts.MAX_INPUT_BYTES = 100
    try:
        assert_clean(*run_cli("tokens", "-m", "tiny-llama", "-f", str(big)), 2, "more than")
    finally:
        prompts.MAX_INPUT_BYTES = original


def test_merge_into_an_unwritable_place(baseline, run_cli, tmp_path: Path) -> None:
    _, clean, rows = baseline
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean(*run_cli("merge", str(clean), "--out", str(blocker / "merged")), 2, "is a file, not a directory")
    assert_clean(*run_cli("merge", str(clean), "--out", str(blocker)), 2, "not empty (or not a directory)")
    code, out, err = run_cli("merge", str(clean), "--out", str(tmp_path / "merged"))
    assert_clean(code, out, err, 0)
    merged = store.open_results(tmp_path / "merged")
    assert merged.problems == [] and {table: merged.table(table).num_rows for table in store.TABLES} == rows


def test_tidy_keeps_a_live_writers_temp_file(baseline, tmp_path: Path) -> None:
    """Another --shard worker on this machine may be writing right now: its temp file stays."""
    _, clean, _ = baseline
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    live = copy / "norms" / f".shard-00001.parquet.{store.temp_tag()}.abc12345.tmp"  # this process: alive
    live.write_bytes(b"PAR1 writing")
    dead = copy / "norms" / f".shard-00002.parquet.{store.temp_tag().rsplit('-', 1)[0]}-999999.abc12345.tmp"
    dead.write_bytes(b"PAR1 half")
    with store.locked(copy):
        manifest = store.read_manifest(copy)
        lines = store.tidy(copy, manifest, pid_alive=lambda pid: pid != 999999)
    assert live.exists() and not dead.exists() and lines == ["removed 1 temp file(s) of an interrupted run"]


def test_force_discards_tables_but_keeps_the_quarantine(baseline, run_cli, tmp_path: Path) -> None:
    corpus, clean, _ = baseline
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    _leftovers_and_strays(copy)
    code, out, err = run_cli("sweep", str(corpus), "--out", str(copy), *SWEEP_ARGS, "--resume")
    assert_clean(code, out, err, 0, "quarantine")
    kept = sorted(path.name for path in (copy / store.QUARANTINE).rglob("*") if path.is_file())
    code, out, err = run_cli("sweep", str(corpus), "--out", str(copy), "--model", "tiny-llama", "--device", "cpu",
                             "--analyses", "norms", "--shard-size", "2", "--force", "-q", "--json")
    assert_clean(code, out, err, 0)
    assert json.loads(out)["shards_done_before"] == 0, "--force redid everything"
    assert sorted(path.name for path in (copy / store.QUARANTINE).rglob("*") if path.is_file()) == kept
    assert not (copy / "scan").exists() and not (copy / store.MU_FILE).exists()


def test_merge_that_fails_part_way_leaves_no_out(baseline, run_cli, tmp_path: Path, monkeypatch) -> None:
    """A disk that fills during the copy: one line naming --out, and no half-merged directory anywhere."""
    _, clean, rows = baseline
    copies = 0
    real_copy = confined.copy

    def copy_then_fill(root, source, target_root, destination):  # type: ignore[no-untyped-def]
        nonlocal copies
        copies += 1
        if copies == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(destination))
        return real_copy(root, source, target_root, destination)

    monkeypatch.setattr(confined, "copy", copy_then_fill)
    target = tmp_path / "merged"
    assert_clean(*run_cli("merge", str(clean), "--out", str(target)), 2, f"cannot write {target}")
    assert copies == 3 and not target.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(confined, "copy", real_copy)
    assert_clean(*run_cli("merge", str(clean), "--out", str(target)), 0)
    merged = store.open_results(target)
    assert merged.problems == [] and {table: merged.table(table).num_rows for table in store.TABLES} == rows


def test_merge_carries_every_corpus_wide_array(baseline, run_cli, tmp_path: Path) -> None:
    _, clean, _ = baseline
    source = tmp_path / "source"
    shutil.copytree(clean, source)
    arrays = {name: (source / name).read_bytes() for name in store.corpus_files() if (source / name).exists()}
    if store.ABLATION_MEANS_FILE not in arrays:  # the baseline sweep ran zero ablation: give it a means file
        arrays[store.ABLATION_MEANS_FILE] = b"means"
        (source / store.ABLATION_MEANS_FILE).write_bytes(b"means")
    assert store.MU_FILE in arrays
    assert_clean(*run_cli("merge", str(source), "--out", str(tmp_path / "merged")), 0)
    assert {name: (tmp_path / "merged" / name).read_bytes() for name in arrays} == arrays
