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
    assert files == {"truncate": store.MU_FILE, "scan": store.ABLATION_MEANS_FILE}
    assert sorted(files.values()) == sorted(store.CORPUS_FILES)


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
