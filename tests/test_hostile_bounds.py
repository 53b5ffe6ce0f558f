"""Issue 24, classes 3 and 5 (sizes): tiny crafted inputs that claim huge sizes, each run in a subprocess
under a 2 GB address-space limit (``RLIMIT_AS``) and a time bound.

An 85-byte GGUF claiming 2^40 array elements; a shard whose prompt number is 2^31-1; a small shard of
20 million rows; JSON nested 100,000 deep in a corpus line, a manifest and views.json; a manifest
listing 200,000 shards; a 3-D or header-inflated .npy. Each is refused, or left out and named, in one
line: never a traceback, never unbounded memory or time.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from horizon.core.results import store

from tests.hostile_helpers import SWEEP_ARGS, assert_one_line, copy_of, reseal, run_bounded, shared_sweep


@pytest.fixture
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shared_sweep(tmp_path_factory)


def _readers(root: Path, other: Path, work: Path) -> list[list[str]]:
    return [["report", str(root)], ["compare", str(root), str(other)],
            ["figures", str(root), "--out", str(work / "figures")], ["@session", str(root)]]


def _check_readers(results: list[tuple[int, str, str]], needle: str) -> None:
    (report, compare, figures, session) = results
    for (code, out, err), most in ((report, 3), (compare, 6), (figures, 20)):
        assert_one_line(code, out, err, (0, 2), max_lines=most)
        assert needle in err, err
    assert_one_line(*session, (0, 2))


def test_a_gguf_header_claiming_2_to_the_40_elements(tmp_path: Path) -> None:
    key = b"general.architecture"
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    data += struct.pack("<I", 9) + struct.pack("<IQ", 4, 2**40)
    path = tmp_path / "tiny.gguf"
    path.write_bytes(data.ljust(85, b"\0"))
    for code, out, err in run_bounded([["verify", "-m", str(path)], ["tokens", "-m", str(path), "-p", "hi"]]):
        assert_one_line(code, out, err, (2,), "1099511627776 array elements")


def test_gguf_bounds_accept_the_bundled_model() -> None:
    from horizon.core.model.gguf_files import bundled_gguf_path, check_gguf_header

    check_gguf_header(bundled_gguf_path())  # a real header passes the same walk


def _rewrite(file: Path, change) -> None:  # type: ignore[no-untyped-def]
    table = pq.read_table(file)
    pq.write_table(change(table), file, compression="zstd")


@pytest.mark.parametrize("with_manifest", [True, False])
def test_a_prompt_number_of_2_to_the_31(with_manifest: bool, swept, tmp_path: Path) -> None:
    _, clean = swept
    root = copy_of(clean, tmp_path / "results")
    big = pa.array([2**31 - 1], pa.int32())
    for table in ("tokens", "norms", "truncate"):
        _rewrite(root / table / "shard-00000.parquet",
                 lambda t: t.set_column(0, "prompt", pa.array(np.full(t.num_rows, 2**31 - 1), pa.int32())))
    _rewrite(root / "prompts" / "shard-00000.parquet", lambda t: t.set_column(0, "prompt", big))
    assert (root / "tokens" / "shard-00000.parquet").stat().st_size < 4096
    reseal(root)
    if not with_manifest:
        (root / store.MANIFEST).unlink()
    results = run_bounded(_readers(root, clean, tmp_path))
    _check_readers(results, "prompt values" if with_manifest else "warning")


def test_a_small_shard_of_twenty_million_rows(swept, tmp_path: Path) -> None:
    _, clean = swept
    root = copy_of(clean, tmp_path / "results")
    file = root / "norms" / "shard-00000.parquet"
    one = pq.read_table(file).slice(0, 1)
    block = pa.concat_tables([one] * 1_000_000).combine_chunks()
    with pq.ParquetWriter(file, block.schema, compression="zstd") as writer:
        for _ in range(20):
            writer.write_table(block, row_group_size=1_000_000)
    assert file.stat().st_size < 2_000_000 and pq.read_metadata(file).num_rows == 20_000_000
    reseal(root)
    results = run_bounded(_readers(root, clean, tmp_path))
    _check_readers(results, "20000000 rows")


def _deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def test_json_nested_100k_deep(swept, tmp_path: Path) -> None:
    corpus, clean = swept
    deep_corpus = tmp_path / "deep.jsonl"
    deep_corpus.write_text('{"text": "fine"}\n{"text": "x", "kind": ' + _deep() + "}\n")
    manifest_deep = copy_of(clean, tmp_path / "manifest")
    (manifest_deep / store.MANIFEST).write_text('{"format": "horizon-results", "shards": ' + _deep() + "}")
    views_deep = copy_of(clean, tmp_path / "views")
    (views_deep / "views.json").write_text('{"views": ' + _deep() + "}")
    corpus_run, manifest_report, manifest_resume, views_report, views_compare = run_bounded([
        ["sweep", str(deep_corpus), "--out", str(tmp_path / "out"), "-m", "tiny-llama"],
        ["report", str(manifest_deep)],
        ["sweep", str(corpus), "--out", str(manifest_deep), *SWEEP_ARGS, "--resume"],
        ["report", str(views_deep)],
        ["compare", str(views_deep), str(clean)],
    ])
    assert_one_line(*corpus_run, (2,), "nested too deeply")
    assert_one_line(*manifest_report, (0,), "nested too deeply")
    assert_one_line(*manifest_resume, (0,), "rebuilt")
    assert_one_line(*views_report, (0,), "nested too deeply")
    assert_one_line(*views_compare, (0,), "nested too deeply")
    assert store.open_results(manifest_deep).problems == [], "the resume left a whole directory"


@pytest.mark.parametrize("consistent", [False, True])
def test_a_manifest_listing_200000_shards(consistent: bool, swept, tmp_path: Path) -> None:
    """200,000 shards for a corpus of 3 prompts (or a corpus that claims 200,000): damaged, and rebuilt on resume."""
    corpus, clean = swept
    root = copy_of(clean, tmp_path / "results")
    manifest = json.loads((root / store.MANIFEST).read_text())
    pending = [{"id": index, "prompts": [index, index], "n_tokens": 5, "status": "pending", "rows": {}}
               for index in range(len(manifest["shards"]), 200_000)]
    manifest["shards"] += pending
    if consistent:
        manifest["corpus"]["n_prompts"] = 200_000
    (root / store.MANIFEST).write_text(json.dumps(manifest))
    report, resume = run_bounded([["report", str(root)],
                                  ["sweep", str(corpus), "--out", str(root), *SWEEP_ARGS, "--resume", "--json"]])
    assert_one_line(*report, (0,), "200000")
    assert_one_line(*resume, (0,), "rebuilt")
    summary = json.loads(resume[1])
    assert summary["complete"] and summary["shards_total"] == 3 and summary["shards_run"] == 0


def _npy_sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_a_three_dimensional_ablation_means_file(swept, tmp_path: Path) -> None:
    corpus, clean = swept
    root = copy_of(clean, tmp_path / "results")
    cube = np.zeros((2, 3, 4))
    np.save(root / store.ABLATION_MEANS_FILE, cube)
    manifest = json.loads((root / store.MANIFEST).read_text())
    manifest["analyses"]["scan"]["_means_sha256"] = _npy_sha(cube)
    manifest["shards"][1]["rows"].pop("scan")
    manifest["shards"][1]["sha256"].pop("scan")
    manifest["shards"][1]["status"] = "pending"
    (root / store.MANIFEST).write_text(json.dumps(manifest))
    (root / "scan" / "shard-00001.parquet").unlink()
    (resume,) = run_bounded([["sweep", str(corpus), "--out", str(root), *SWEEP_ARGS, "--resume"]])
    assert_one_line(*resume, (0,))
    assert np.array_equal(np.load(root / store.ABLATION_MEANS_FILE), np.load(clean / store.ABLATION_MEANS_FILE))


def test_an_npy_header_claiming_2_to_the_40_values(swept, tmp_path: Path) -> None:
    corpus, clean = swept
    root = copy_of(clean, tmp_path / "results")
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"
    header += b" " * (118 - len(header)) + b"\n"
    (root / store.MU_FILE).write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16)
    report, resume = run_bounded([["report", str(root)],
                                  ["sweep", str(corpus), "--out", str(root), *SWEEP_ARGS, "--resume"]])
    assert_one_line(*report, (0,), store.MU_FILE)
    assert_one_line(*resume, (0,))
    assert np.array_equal(np.load(root / store.MU_FILE), np.load(clean / store.MU_FILE)), "computed again"
