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
from horizon.core import store
from horizon.core.corpus import Corpus
from horizon.core.sweep import SweepSettings, run_sweep
from horizon.tui.cli.common import console

TEXTS = ["The river rose after three days of rain.", "Mix the flour and the butter.", "Berlin is in Germany."]
CORPUS = Corpus(name="registry", texts=TEXTS, kinds=[""] * len(TEXTS))


def rows(worker: Any, indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    """Per prompt: its token count and the mean norm of its final residual (one engine call)."""
    from horizon.core.norms import analyse_norms

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
