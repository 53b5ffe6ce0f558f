"""The Python API (`import horizon`): its documented examples, its numbers against the CLI's --json and a
sweep's tables, its errors, and the example notebook."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import horizon
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous.",
           "A small cat sat on the warm mat and looked at the birds outside."]
# Measured when the plan is made (the process's resident set): the only numbers two runs may not share.
MEASURED = ("fixed_bytes", "predicted_peak_bytes")


@pytest.fixture(scope="module")
def model() -> horizon.Model:
    return horizon.load("tiny-llama", device="cpu", max_memory="4GB")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n\n".join(PROMPTS) + "\n")
    return path


def code_blocks(text: str, fence: str = "python") -> list[str]:
    return re.findall(rf"```{fence}\n(.*?)```", text, re.S)


def test_every_example_of_the_api_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = code_blocks((ROOT / "docs" / "API.md").read_text())
    assert len(blocks) >= 12
    namespace: dict[str, Any] = {}
    for number, block in enumerate(blocks):
        exec(compile(block, f"docs/API.md python block {number + 1}", "exec"), namespace)


def test_every_public_name_is_documented() -> None:
    page = (ROOT / "docs" / "API.md").read_text()
    for name in horizon.__all__:
        assert re.search(rf"horizon\.{re.escape(name)}\b|`{re.escape(name)}`|\b{re.escape(name)}\b", page), name
        assert getattr(horizon, name) is not None


def test_the_example_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/example.ipynb's code cells, in order, in one namespace (no Jupyter needed)."""
    monkeypatch.chdir(tmp_path)
    notebook = json.loads((ROOT / "docs" / "example.ipynb").read_text())
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert len(cells) >= 4
    namespace: dict[str, Any] = {}
    for number, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"docs/example.ipynb cell {number + 1}", "exec"), namespace)
    assert type(namespace["figure"]).__name__ == "Figure"


def test_import_is_cheap_and_names_are_public() -> None:
    code = ("import sys, horizon; horizon.HorizonError; horizon.load; horizon.Result; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(sorted(horizon.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "load" in done.stdout and "HorizonError" in done.stdout
    assert sorted(dir(horizon)) == sorted(set(dir(horizon)))
    with pytest.raises(AttributeError):
        horizon.engine  # noqa: B018  (not public)


def without_measured(payload: dict[str, Any]) -> dict[str, Any]:
    payload = json.loads(json.dumps(payload))
    for name in MEASURED:
        payload["memory"].pop(name)
    return payload


CASES = {
    "norms": (["norms", "--weights", "--fit", "1:4"], lambda m, p: m.norms(p, weights=True, fit="1:4")),
    "norms-no-bos": (["norms", "--no-bos", "--include-bos"], lambda m, p: m.norms(p, bos=False, include_bos=True)),
    "patch": (["patch", "--k", "2", "--ablation", "mean"], lambda m, p: m.patch(p, 2, ablation="mean")),
    "patch-only": (["patch", "--k", "1", "--only-layer", "final", "--unit", "sublayer"],
                   lambda m, p: m.patch(p, 1, only_layer="final", unit="sublayer")),
    "scan": (["scan", "--by-layer", "--ks", "1,2,3"], lambda m, p: m.scan(p, by_layer=True, ks=[1, 2, 3])),
    "scan-starts": (["scan", "--start-layers", "0,2", "--tol", "0.05", "--max-tokens", "12"],
                    lambda m, p: m.scan(p, start_layers=[0, 2], tol=0.05, max_tokens=12)),
    "truncate": (["truncate", "--lengths", "1,3", "--outliers", "4"],
                 lambda m, p: m.truncate(p, lengths=[1, 3], outliers=4)),
    "attention": (["attention"], lambda m, p: m.attention(p)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_to_json_is_the_cli_json(case: str, model: horizon.Model, prompt_file: Path, run_cli,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The same prompts (a file: the CLI's --file, the API's Path) give the same payload, key for key."""
    arguments, call = CASES[case]
    code, out, err = run_cli(*arguments, "--model", "tiny-llama", "--device", "cpu", "--max-memory", "4GB",
                             "--file", str(prompt_file), "--json")
    assert code == 0, err
    result = call(model, prompt_file)
    assert capsys.readouterr().out == ""  # the API prints nothing
    assert without_measured(result.to_json()) == without_measured(json.loads(out))


def test_a_string_and_a_list_are_prompts_too(model: horizon.Model, run_cli) -> None:
    code, out, _ = run_cli("attention", "--model", "tiny-llama", "--device", "cpu", "--max-memory", "4GB",
                           "--prompt", PROMPTS[1], "--json")
    assert code == 0
    cli = without_measured(json.loads(out))
    assert without_measured(model.attention(PROMPTS[1]).to_json()) == cli
    assert without_measured(model.attention([PROMPTS[1]]).to_json()) == cli


def close_tables(ours: Any, stored: Any, keys: list[str]) -> None:
    """Two long tables with the same rows (matched on ``keys``): equal keys and text, numbers to float32 noise."""
    assert sorted(ours.columns) == sorted(stored.columns)
    ours = ours.sort_values(keys).reset_index(drop=True)
    stored = stored[list(ours.columns)].sort_values(keys).reset_index(drop=True)
    assert len(ours) == len(stored) > 0
    for column in ours.columns:
        if ours[column].dtype.kind == "f":
            np.testing.assert_allclose(ours[column].to_numpy(), stored[column].to_numpy(), rtol=2e-4, atol=2e-5,
                                       equal_nan=True, err_msg=column)
        else:
            assert ours[column].tolist() == stored[column].tolist(), column


def test_to_pandas_is_the_table_a_sweep_writes(model: horizon.Model, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    prompt = PROMPTS[0]
    results = horizon.sweep([prompt], tmp_path / "sweep", model=model, ks=[1, 2, 3], lengths=[1, 3], by_layer=True)
    assert capsys.readouterr().out == ""  # the sweep prints nothing either
    close_tables(model.norms(prompt).to_pandas(), results.norms.to_pandas(), ["site", "layer", "position"])
    close_tables(model.truncate(prompt, lengths=[1, 3]).to_pandas(), results.truncate.to_pandas(),
                 ["length", "position", "layer"])
    close_tables(model.scan(prompt, ks=[1, 2, 3], by_layer=True).to_pandas(), results.scan.to_pandas(),
                 ["only_layer", "start_layer", "k"])
    close_tables(model.attention(prompt).to_pandas(), results.attention.to_pandas(), ["layer", "head"])


def test_several_prompts_have_no_per_prompt_scan_table(model: horizon.Model) -> None:
    with pytest.raises(horizon.HorizonError, match="one row set per prompt"):
        model.scan(PROMPTS, ks=[1]).to_pandas()


BAD = {
    "ks": (["scan", "--ks", "0"], lambda m: m.scan(PROMPTS[0], ks=[0])),
    "fit": (["norms", "--fit", "3"], lambda m: m.norms(PROMPTS[0], fit="3")),
    "fit-range": (["norms", "--fit", "1:9"], lambda m: m.norms(PROMPTS[0], fit="1:9")),
    "k": (["patch", "--k", "99"], lambda m: m.patch(PROMPTS[0], 99)),
    "unit": (["patch", "--k", "1", "--unit", "block"], lambda m: m.patch(PROMPTS[0], 1, unit="block")),
    "only-and-start": (["patch", "--k", "1", "--only-layer", "2", "--start-layer", "1"],
                       lambda m: m.patch(PROMPTS[0], 1, only_layer=2, start_layer=1)),
    "no-bos": (["truncate", "--no-bos"], lambda m: m.truncate(PROMPTS[0], bos=False)),
    "lengths": (["truncate", "--lengths", "1,0"], lambda m: m.truncate(PROMPTS[0], lengths=[1, 0])),
    "by-layer": (["scan", "--by-layer", "--start-layers", "1"],
                 lambda m: m.scan(PROMPTS[0], by_layer=True, start_layers=[1])),
    "empty": (["norms", "--prompt", "   "], lambda m: m.norms("   ")),
    "ablation": (["scan", "--ablation", "random"], lambda m: m.scan(PROMPTS[0], ablation="random")),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_the_cli_one_line(case: str, model: horizon.Model, run_cli) -> None:
    arguments, call = BAD[case]
    if "--prompt" not in arguments:
        arguments = [*arguments, "--prompt", PROMPTS[0]]
    code, out, err = run_cli(*arguments, "--model", "tiny-llama", "--device", "cpu")
    assert code == 2 and out == ""
    with pytest.raises(horizon.HorizonError) as raised:
        call(model)
    message = str(raised.value)
    assert "\n" not in message
    assert err.strip() == f"horizon: error: {message}"


def test_bad_prompts_and_budgets(model: horizon.Model) -> None:
    for prompts in ([], [1, 2], 42):
        with pytest.raises(horizon.HorizonError, match="prompts must be a string"):
            model.attention(prompts)  # type: ignore[arg-type]
    with pytest.raises(horizon.HorizonError, match="--max-memory"):
        horizon.load("tiny-llama", device="cpu", max_memory="lots")
    small = horizon.load("tiny-llama", device="cpu", max_memory="1MB")
    with pytest.raises(horizon.HorizonError, match=r"budget 1\.00 MB \(--max-memory 1\.00 MB\)"):
        small.norms(PROMPTS[0])


def test_results_show_themselves(model: horizon.Model) -> None:
    from rich.console import Console

    scan = model.scan(PROMPTS[0], ks=[1, 2])
    console = Console(width=100, record=True)
    console.print(scan)
    shown = console.export_text()
    assert "Scan of tiny-llama" in shown and "effective horizon" in shown
    assert "effective horizon" in repr(scan) and "<strong>Scan of tiny-llama</strong>" in scan._repr_html_()
    with pytest.raises(horizon.HorizonError, match="figure 'fig01-norm-growth'"):
        scan.figure("fig01-norm-growth")


def test_figures_without_matplotlib_say_what_to_install(model: horizon.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    attention = model.attention(PROMPTS[0])
    monkeypatch.setitem(sys.modules, "horizon.tui.figures.plots", None)  # as if matplotlib were not installed
    with pytest.raises(horizon.HorizonError, match=r"pip install 'horizon-inspector\[figures\]'"):
        attention.figure()


def test_progress_reaches_the_callback(model: horizon.Model) -> None:
    steps: list[float] = []
    model.norms(PROMPTS, progress=steps.append)
    assert sum(steps) == len(PROMPTS)
    steps.clear()
    truncation = model.truncate(PROMPTS[0], lengths=[1], progress=steps.append)
    assert sum(steps) == len(truncation.report.record_token)


def test_stored_results_refuse_what_they_lack(model: horizon.Model, tmp_path: Path) -> None:
    results = horizon.sweep([PROMPTS[1]], tmp_path / "norms-only", model=model, analyses=["norms"])
    assert results.analyses == ["norms"] and results.sweep is not None and results.sweep["complete"]
    with pytest.raises(horizon.HorizonError, match="has no scan results"):
        results.scan  # noqa: B018
    with pytest.raises(horizon.HorizonError, match="unknown analysis 'tokens'"):
        results["tokens"]
    with pytest.raises(horizon.HorizonError, match=r"has no manifest\.json and no readable shard file"):
        horizon.open_results(tmp_path)
    with pytest.raises(horizon.HorizonError, match="unknown sweep setting 'colour'"):
        horizon.sweep([PROMPTS[1]], tmp_path / "other", model=model, colour="red")


def test_only_layer_is_the_row_of_the_layer_matrix(model: horizon.Model) -> None:
    """scan(only_layer=N): the curve of the horizon enforced at layer N alone, the by-layer matrix's row N."""
    matrix = model.scan(PROMPTS[0], ks=[1, 2, 3], by_layer=True).by_layer
    for layer, label in ((2, 2), (model.n_layers, "final")):
        row = model.scan(PROMPTS[0], ks=[1, 2, 3], only_layer=label)
        assert row.to_json()["only_layer"] == layer
        np.testing.assert_allclose([r["delta_loss"] for r in row.report.rows], matrix.delta_loss[layer], atol=1e-6)
        np.testing.assert_allclose([r["kl"] for r in row.report.rows], matrix.kl[layer], atol=1e-6)
    with pytest.raises(horizon.HorizonError, match="only_layer and by_layer are exclusive"):
        model.scan(PROMPTS[0], only_layer=1, by_layer=True)


def test_verify_is_the_cli_json(model: horizon.Model, run_cli) -> None:
    code, out, err = run_cli("verify", "--model", "tiny-llama", "--device", "cpu", "--reference", "loaded", "--json")
    assert code == 0, err
    verdict = model.verify(reference="loaded")
    assert verdict.passed and verdict.to_json() == json.loads(out)
    with pytest.raises(horizon.HorizonError, match="--reference must be fresh or loaded"):
        model.verify(reference="other")


def test_a_list_of_prompts_is_checked_prompt_by_prompt(model: horizon.Model) -> None:
    with pytest.raises(horizon.HorizonError, match=r"^prompt 2 is empty or whitespace only$"):
        model.tokens([PROMPTS[0], "  \n"])
    with pytest.raises(horizon.HorizonError, match=r"^the prompt is empty or whitespace only$"):
        model.tokens([" "])
