"""`norms` on parallel attention + MLP blocks (GPT-NeoX, GPT-J, Phi, Cohere, parallel Falcon and
StableLM): both sublayers read resid_pre, so there is no resid_mid. It is reported as absent (in
the table, the JSON, the sweep's rows and report, the app's pane), never as a number; every other
site is held to plain HF hooks on a second copy of the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from horizon.core.analyses.norms import NORM_SITES, PARALLEL_ABSENT
from horizon.core.analyses.norms.engine import analyse_norms
from horizon.core.checks.verify import VERIFY_PROMPT, _prompt_ids

from tests.conftest import SHORT_PROMPT
from tests.families import family_model, hf_family_model, plain_run, save_family_dir, tokenizer

PARALLEL = ("gpt_neox", "gptj", "phi", "cohere", "falcon_parallel", "stablelm_parallel")


@pytest.mark.parametrize("family", PARALLEL)
def test_parallel_norms_equal_plain_hf_and_resid_mid_is_absent(family: str) -> None:
    model = family_model(family)
    assert model.parallel_attn_mlp
    ids = _prompt_ids(model, VERIFY_PROMPT)
    _, stream = plain_run(hf_family_model(family, len(tokenizer())), ids, parallel=True)
    assert len(stream) == model.n_layers + 1  # the attention's norm input per layer, then the final norm's
    report = analyse_norms(model, ids.tolist(), has_bos=True, include_bos=True)
    expected = {"resid_pre": stream, "resid_post": stream[1:]}
    for site, readings in expected.items():
        for layer, reading in enumerate(readings):
            plain = reading[0].double().norm(dim=-1).numpy()
            assert np.abs(report.norms[site][0][layer] - plain).max() <= 1e-5 * plain.max(), (site, layer)
    assert report.absent == PARALLEL_ABSENT and "resid_mid" not in report.norms and "resid_mid" not in report.stats
    data = report.to_json()
    assert list(data["sites"]) == list(NORM_SITES) and data["sites"]["resid_mid"] is None
    assert data["absent_sites"] == {"resid_mid": PARALLEL_ABSENT["resid_mid"]}
    assert all(data["sites"][site] is not None for site in NORM_SITES if site != "resid_mid")


def test_sequential_blocks_have_every_site() -> None:
    report = analyse_norms(family_model("stablelm"), [[0, 5, 6, 7]], has_bos=True)
    assert report.absent == {} and set(report.stats) == set(NORM_SITES)
    assert report.to_json()["absent_sites"] == {}


@pytest.fixture(scope="module")
def neox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_family_dir("gpt_neox", tmp_path_factory.mktemp("neox"))


def test_cli_norms_on_a_parallel_model(neox_dir: Path, run_cli) -> None:
    """Was a 52-line traceback (KeyError: blocks.0.hook_resid_mid) after verify passed."""
    code, out, err = run_cli("norms", "--model", str(neox_dir), "--device", "cpu", "--prompt", SHORT_PROMPT, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["sites"]["resid_mid"] is None and "parallel attention + MLP" in data["absent_sites"]["resid_mid"]
    assert len(data["sites"]["resid_post"]["mean_norm"]) == data["n_layers"] == 2
    code, out, err = run_cli("norms", "--model", str(neox_dir), "--device", "cpu", "--prompt", SHORT_PROMPT,
                             "--weights")
    assert code == 0, err
    assert "resid_mid none in this model (parallel attention + MLP" in " ".join(out.split())
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        assert site in out


def test_sweep_and_report_on_a_parallel_model(neox_dir: Path, tmp_path: Path, run_cli) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in (SHORT_PROMPT, "Hello there, world.")))
    out_dir = tmp_path / "out"
    code, _, err = run_cli("sweep", str(corpus), "--out", str(out_dir), "--model", str(neox_dir), "--device", "cpu",
                           "--analyses", "norms", "-q")
    assert code == 0, err
    import pyarrow.parquet as pq

    table = pq.read_table(out_dir / "norms")
    assert "resid_mid" not in set(table.column("site").to_pylist())
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["model"]["parallel_attn_mlp"] is True
    code, out, err = run_cli("report", str(out_dir), "--json")
    assert code == 0, err
    view = json.loads(out)["norms"]
    assert view["sites"]["resid_mid"] is None and view["absent_sites"] == PARALLEL_ABSENT
    code, out, err = run_cli("report", str(out_dir))
    assert code == 0 and "Traceback" not in err, err


def test_the_app_pane_says_resid_mid_is_absent() -> None:
    from horizon.tui.screens.norms import site_table
    from rich.console import Console

    report = analyse_norms(family_model("gpt_neox"), [[0, 5, 6, 7]], has_bos=True)
    console = Console(width=120, record=True)
    console.print(site_table(report))
    text = console.export_text()
    assert "resid_mid" in text and "none in this model" in text
    assert torch.isfinite(torch.tensor(report.stats["resid_pre"].mean_norm)).all()
