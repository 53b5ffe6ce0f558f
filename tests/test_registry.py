"""The registry of analyses: an analysis registered here, in the test suite, flows through the
sweep, the store, ``report`` and its ``--json`` without any other module knowing about it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.memory import budget as B
from horizon.core.model.corpus import Corpus
from horizon.core.results import store
from horizon.core.sweep.sweep import SweepSettings, run_sweep
from horizon.tui.cli.common import console

TEXTS = ["The river rose after three days of rain.", "Mix the flour and the butter.", "Berlin is in Germany."]
CORPUS = Corpus(name="registry", texts=TEXTS, kinds=[""] * len(TEXTS))


def rows(worker: Any, indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    """Per prompt: its token count and the mean norm of its final residual (one engine call)."""
    from horizon.core.analyses.norms.engine import analyse_norms

    report = analyse_norms(worker.model, token_ids, worker.settings.bos)
    final = [float(np.mean(per_prompt[-1])) for per_prompt in report.norms["resid_pre"]]
    return pa.table({"prompt": pa.array(indices, pa.int32()),
                     "n_tokens": pa.array([len(ids) for ids in token_ids], pa.int32()),
                     "final_norm": pa.array(final, pa.float64())})


def view(results: Any, table: pa.Table, manifest: dict[str, Any], has_bos: bool) -> dict[str, Any]:
    n_tokens = registry.column(table, "n_tokens").astype(np.float64)
    return {"n_prompts": table.num_rows, "n_tokens": int(n_tokens.sum()),
            "final_norm": registry.weighted_mean(registry.column(table, "final_norm"), n_tokens)}


def render(view: dict[str, Any]) -> None:
    console.print(f"final norm: {view['final_norm']:.4f} over {view['n_prompts']} prompts")


EXTRA = registry.Analysis(
    name="finalnorm", table="final_norm",
    schema={"prompt": pa.int32(), "n_tokens": pa.int32(), "final_norm": pa.float64()},
    rows=rows, view=view, settings=lambda settings, n_layers: {"unit": "mean over positions"},
    expected_rows=lambda lengths, settings, model: len(lengths), render=f"{__name__}:render",
)


@pytest.fixture
def extra():
    registry.register(EXTRA)
    yield EXTRA
    registry.unregister(EXTRA.name)


def test_a_registered_analysis_flows_through_sweep_report_and_json(extra, tiny_llama, tmp_path: Path,
                                                                    run_cli) -> None:
    out = tmp_path / "results"
    summary = run_sweep(CORPUS, out, tiny_llama, SweepSettings(analyses=["finalnorm", "attention"], shard_size=2),
                        device="cpu")
    assert summary.complete and summary.analyses == ["attention", "finalnorm"]  # registration order
    results = store.open_results(out)
    assert results.problems == [] and results.analyses == ["attention", "finalnorm"]
    stored = results.table("final_norm")
    assert sorted(stored.column("prompt").to_pylist()) == [0, 1, 2]
    assert results.manifest["analyses"]["finalnorm"] == {"unit": "mean over positions"}

    code, text, err = run_cli("report", str(out), "--json")
    assert code == 0, err
    payload = json.loads(text)
    lengths = sorted(stored.column("n_tokens").to_pylist())
    assert payload["finalnorm"]["n_prompts"] == 3 and payload["finalnorm"]["n_tokens"] == sum(lengths)
    assert payload["problems"] == []
    code, text, err = run_cli("report", str(out))
    assert code == 0, err
    assert f"final norm: {payload['finalnorm']['final_norm']:.4f} over 3 prompts" in text

    # The CLI's sweep takes it by name too, and a lost manifest is rebuilt with its files adopted.
    (out / store.MANIFEST).unlink()
    code, text, err = run_cli("sweep", "--out", str(out), "-m", "tiny-llama", "--device", "cpu", "--shard-size", "2",
                              "--analyses", "finalnorm,attention", "--json", "--quiet", "--unverified",
                              str(_corpus_file(tmp_path)))
    assert code == 0, err
    swept = json.loads(text)
    assert swept["analyses"] == ["attention", "finalnorm"] and swept["shards_run"] == 0, swept


def _corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


def test_a_table_name_is_written_by_one_analysis_only(extra) -> None:
    with pytest.raises(ValueError, match="already written"):
        registry.register(registry.Analysis(name="other", table="final_norm", schema={}, rows=rows, view=view))


# ----------------------------------------------------------------------------- cost model and corpus-wide inputs


def test_the_built_in_corpus_inputs_are_the_files_the_store_reads() -> None:
    # Each entry names its array's file; core/results/store.py reads the same files back and guards them.
    files = {name: entry.corpus.file for name, entry in registry.REGISTRY.items() if entry.corpus is not None}
    assert files == {"truncate": "truncation_mu.npy", "scan": "ablation_means.npy"}
    assert store.corpus_files() == ("truncation_mu.npy", "ablation_means.npy")
    assert (store.MU_FILE, store.ABLATION_MEANS_FILE) == store.corpus_files()  # the old names, read from the entries
    assert set(store.corpus_files()) <= set(store.top_names())
    assert store.LEGACY_TABLES == {"truncation": "truncate", "horizon": "scan"}  # each entry's former_tables


def doubled_norms(dims: B.ModelDims, batch: int, n_tokens: int, **tiling: int) -> dict[str, int]:
    parts = registry.REGISTRY["norms"].cost.parts(dims, batch, n_tokens, **tiling)  # type: ignore[union-attr]
    return {name: 2 * size for name, size in parts.items()}


def mean_token_id(model: Any, token_ids: list[list[int]], bos: bool) -> np.ndarray:
    return np.full((2, 3), np.mean([token for ids in token_ids for token in ids]))


COSTED = registry.Analysis(
    name="costed", table="costed", schema=EXTRA.schema, view=view,
    rows=lambda worker, indices, token_ids, tokens: pa.table({
        "prompt": pa.array(indices, pa.int32()), "n_tokens": pa.array([len(ids) for ids in token_ids], pa.int32()),
        "final_norm": pa.array([float(worker.corpus_inputs["costed"][0, 0])] * len(indices), pa.float64())}),
    cost=B.Cost(parts=doubled_norms, relative_work=lambda settings, n_layers: 3.0, cpu_batch_tokens=64),
    corpus=registry.CorpusInput(file="costed.npy", checksum_key="_costed_sha256", dtype=np.float64,
                                shape=lambda n_layers, d_model: (2, 3), description="the mean token id",
                                compute=mean_token_id, receive=lambda array, model, settings: array * 10),
)


@pytest.fixture
def costed():
    registry.register(COSTED)
    yield COSTED
    registry.unregister(COSTED.name)


def test_a_registered_cost_model_is_what_the_budget_plans_with(costed) -> None:
    from horizon.core.sweep.plan import relative_weights

    dims = B.ModelDims(n_layers=4, d_model=64, n_heads=4, d_mlp=256, vocab=1000)
    assert "costed" in B.ANALYSES
    assert B.peak_bytes("costed", dims, 3, 50) == 2 * B.peak_bytes("norms", dims, 3, 50)
    budget = B.Budget(total=10 ** 9, fixed=0, source="test")
    # Under a budget that fits 4 prompts of the doubled cost, the norms fit more: the batch is the largest
    # whose doubled norms bytes fit, counted here by trying each.
    tight = B.Budget(total=2 * B.peak_bytes("norms", dims, 4, 50) + 1, fixed=0, source="test")
    expected = max(batch for batch in range(1, 9) if 2 * B.peak_bytes("norms", dims, batch, 50) <= tight.total)
    assert expected == 4 and B.plan("costed", dims, [50] * 8, tight).batch_size == expected
    assert B.plan("norms", dims, [50] * 8, tight).batch_size > expected
    assert B.plan("costed", dims, [50] * 8, budget).batch_size == 8
    assert relative_weights(SweepSettings(), 4)["costed"] == 3.0


def test_a_registered_corpus_input_reaches_every_shard(costed, tiny_llama) -> None:
    from horizon.core.sweep.worker import SweepWorker, WorkerConfig

    config = WorkerConfig(model=tiny_llama.spec, device="cpu", dtype="float32", texts=TEXTS,
                          settings=SweepSettings(analyses=["costed"]))
    worker = SweepWorker(config, loaded=tiny_llama)
    array = worker.compute_corpus_input("costed")
    assert np.allclose(array, np.mean([token for ids in worker.token_ids for token in ids]))
    worker.set_corpus_input("costed", array)
    tables = worker.run_shard([0, 1], ["costed"])
    assert tables["costed"].column("final_norm").to_pylist() == [float(array[0, 0]) * 10] * 2
    assert worker.batch_tokens("costed") == 64  # on CPU with an automatic batch: its declared cap


# ----------------------------------------------------------------------------- settings checks and kept arrays


def refuse_odd_start_layers(settings: SweepSettings, n_layers: int, n_ctx: int) -> None:
    """A check only this analysis makes: start layers must be even and within the model."""
    bad = [layer for layer in settings.start_layers if layer % 2 or layer >= n_layers]
    if bad:
        raise HorizonError(f"kept: start layer {bad[0]} is odd or past layer {n_layers - 1}")


def token_count_rows(worker: Any, indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    kept = worker.corpus_inputs["kept"]
    return pa.table({"prompt": pa.array(indices, pa.int32()),
                     "n_tokens": pa.array([len(ids) for ids in token_ids], pa.int32()),
                     "final_norm": pa.array([float(kept[1, 2])] * len(indices), pa.float64())})


KEPT = registry.Analysis(
    name="kept", table="kept", schema=EXTRA.schema, view=view, rows=token_count_rows,
    expected_rows=lambda lengths, settings, model: len(lengths), check_settings=refuse_odd_start_layers,
    corpus=registry.CorpusInput(file="kept_mean.npy", checksum_key="_kept_sha256", dtype=np.float64,
                                shape=lambda n_layers, d_model: (n_layers, 3), description="the kept mean",
                                compute=lambda model, token_ids, bos: np.arange(model.n_layers * 3.0).reshape(-1, 3),
                                receive=lambda array, model, settings: array, kept_after_sweep=True),
)


@pytest.fixture
def kept():
    registry.register(KEPT)
    yield KEPT
    registry.unregister(KEPT.name)


def test_the_sweep_checks_a_registered_analysis_s_settings_through_its_entry(kept, tiny_llama, tmp_path) -> None:
    n_layers = tiny_llama.n_layers
    SweepSettings(analyses=["kept"], start_layers=[0]).validate_for_model(n_layers, 64)
    with pytest.raises(HorizonError, match="kept: start layer 1 is odd"):
        SweepSettings(analyses=["kept"], start_layers=[0, 1]).validate_for_model(n_layers, 64)
    # Only the analyses swept are checked: norms does not care about start layers.
    SweepSettings(analyses=["norms"], start_layers=[1]).validate_for_model(n_layers, 64)
    with pytest.raises(HorizonError, match="odd"):
        run_sweep(CORPUS, tmp_path / "refused", tiny_llama, SweepSettings(analyses=["kept"], start_layers=[1]),
                  device="cpu")
    assert not (tmp_path / "refused" / "kept").exists()


def test_the_store_reads_guards_and_merges_a_registered_corpus_file(kept, tiny_llama, tmp_path) -> None:
    out = tmp_path / "results"
    summary = run_sweep(CORPUS, out, tiny_llama, SweepSettings(analyses=["kept"], shard_size=2), device="cpu")
    assert summary.complete
    expected = np.arange(tiny_llama.n_layers * 3.0).reshape(-1, 3)
    assert "kept_mean.npy" in store.corpus_files() and "kept_mean.npy" in store.top_names()
    results = store.open_results(out)
    assert results.problems == []
    np.testing.assert_array_equal(results.corpus_array("kept"), expected)
    assert results.table("kept").column("final_norm").to_pylist() == [float(expected[1, 2])] * 3
    assert results.mu() is None  # no truncate in this sweep

    merged = tmp_path / "merged"
    store.merge([out], merged)
    np.testing.assert_array_equal(np.load(merged / "kept_mean.npy"), expected)

    # A damaged copy is named (it is read back after the sweep: kept_after_sweep) ...
    np.save(out / "kept_mean.npy", expected + 1)
    problems = store.open_results(out).problems
    assert len(problems) == 1 and "kept_mean.npy is damaged" in problems[0] and "the kept tables" in problems[0]
    (out / "kept_mean.npy").unlink()
    assert "kept_mean.npy is missing" in store.open_results(out).problems[0]
    # ... and a link in its place is foreign, never followed.
    (out / "kept_mean.npy").symlink_to(merged / "kept_mean.npy")
    assert [path.name for path, _ in store.foreign_entries(out)] == ["kept_mean.npy"]
    (out / "kept_mean.npy").unlink()

    registry.unregister("kept")  # without its entry the store knows no such file
    assert "kept_mean.npy" not in store.corpus_files()
    assert store.open_results(out).corpus_array("kept") is None
