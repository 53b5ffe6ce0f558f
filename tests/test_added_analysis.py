"""An analysis added from the test suite (tests/added_analysis/: "peak", the largest resid_pre norm per
prompt and layer) with one ``register`` call, seen through its own CLI command, the sweep, ``--plan``,
``report`` and ``report --json``, and the results session; its numbers checked against plain HF hidden
states. No module of the package knows about it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from horizon.core import analyses as registry
from horizon.core.model.loader import LoadedModel, _tiny_hf_model
from horizon.core.results import store
from horizon.core.sources.results_session import ResultsSession

from tests.added_analysis import ANALYSIS, SCHEMA, report_from_rows
from tests.test_cli import assert_clean_failure

# The first two share a shard, batched together: the short one padded far past its end, so a peak taken over the
# padding would show (the command runs each alone).
TEXTS = ["The river rose after three days of rain, and the bridge into the old town was closed for a week.", "Hi.",
         "Mix the flour and the butter."]
TINY = ["-m", "tiny-llama", "--device", "cpu"]
SWEEP = [*TINY, "--analyses", "peak", "--shard-size", "2", "--json", "--quiet", "--unverified"]


@pytest.fixture
def peak() -> Iterator[registry.Analysis]:
    """The analysis registered for one test; the registry as it was afterwards (the CLI drops its command at its
    next invocation that reads the registry)."""
    registry.register(ANALYSIS)
    yield ANALYSIS
    registry.unregister(ANALYSIS.name)


def hf_peaks(model: LoadedModel, token_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The independent computation: a fresh HF model with the same seeded weights (not the bridge), its hidden
    states (hidden_states[l] is the input of layer l: resid_pre_l), the norm of every position, the largest after
    BOS. Returns (peak [layers], position [layers])."""
    hf_model = _tiny_hf_model("tiny-llama", len(model.tokenizer))
    with torch.inference_mode():
        hidden = hf_model(torch.tensor([token_ids]), output_hidden_states=True).hidden_states
    norms = torch.stack([hidden[layer][0] for layer in range(model.n_layers)]).double().norm(dim=-1).numpy()
    after_bos = norms[:, 1:]  # [layers, positions after BOS]
    return after_bos.max(axis=1), after_bos.argmax(axis=1) + 1


def run_peak(run_cli: Any, text: str) -> dict[str, Any]:
    code, out, err = run_cli("peak", text, *TINY, "--json")
    assert code == 0, err
    return json.loads(out)


def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the command


def test_its_command_gives_the_largest_norms_of_plain_hf_hidden_states(peak, run_cli, tiny_llama) -> None:
    payload = run_peak(run_cli, TEXTS[0])
    ids = payload["token_ids"][0]
    assert payload["tokens"][0][0] == "<|endoftext|>"  # BOS at position 0, left out of the peak
    expected, where = hf_peaks(tiny_llama, ids)
    peaks = np.asarray(payload["peak_norm"])
    assert peaks.shape == (1, tiny_llama.n_layers) and payload["bos_excluded"] is True
    np.testing.assert_allclose(peaks[0], expected, rtol=1e-5)
    assert payload["position"][0] == where.tolist()
    assert payload["memory"]["batch_size"] == 1 and payload["device"] == "cpu"

    code, out, err = run_cli("peak", TEXTS[0], *TINY)  # the rich view: one row per layer, its peak and token
    assert code == 0, err
    assert f"{expected[0]:.3f}" in out and repr(payload["tokens"][0][int(where[0])]) in out


def test_its_command_follows_the_registry_and_leaves_the_built_in_help_as_it_was(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    code, before, _ = run_cli("--help")
    assert code == 0 and " peak " not in before
    registry.register(ANALYSIS)
    try:
        code, listed, _ = run_cli("--help")
        assert code == 0
        commands = [line.split()[1] for line in listed.splitlines() if line.startswith("│ ") and line[2] != " "
                    and not line[2:].startswith("-")]
        assert commands[-2:] == ["study", "peak"], commands  # after every built-in command
        # The help without it is the help with it, less its line: the built-in commands are as they were.
        assert [line for line in listed.splitlines() if not line.startswith("│ peak ")] == before.splitlines()
        code, out, _ = run_cli("peak", "--help")
        assert code == 0 and "largest resid_pre norm" in out and "--max-memory" in out
    finally:
        registry.unregister(ANALYSIS.name)
    assert_clean_failure(*run_cli("peak", "some text"), "No such command 'peak'")
    code, again, _ = run_cli("--help")
    assert code == 0 and again == before


def test_its_command_fails_cleanly_on_bad_input(peak, run_cli, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_clean_failure(*run_cli("peak", "   ", *TINY), "empty")
    assert_clean_failure(*run_cli("peak", "hi", *TINY, "--max-memory", "lots"), "--max-memory")
    assert_clean_failure(*run_cli("peak", *TINY), "Missing argument")


@pytest.mark.parametrize(("name", "command", "needle"), [
    ("tokens", "tests.added_analysis.command:peak", "`horizon tokens` is a built-in command"),
    ("broken", "tests.added_analysis.no_such_module:peak", "cannot be loaded: ModuleNotFoundError"),
    ("broken", "tests.added_analysis.command:no_such_function", "cannot be loaded: AttributeError"),
    ("broken", "no colon", "cannot be loaded"),
])
def test_a_command_that_cannot_be_added_is_one_line_and_exit_2(run_cli, name: str, command: str,
                                                               needle: str) -> None:
    broken = registry.Analysis(name=name, table=f"{name}_table", schema=SCHEMA, rows=ANALYSIS.rows,
                               view=ANALYSIS.view, command=command)
    registry.register(broken)
    try:
        assert_clean_failure(*run_cli("--help"), needle)
        if name != "tokens":
            assert_clean_failure(*run_cli(name, "text"), needle)
        # A built-in command reads no analysis's command: it runs (`horizon tokens` too, the built-in one).
        code, out, err = run_cli("tokens", "-m", "tiny-llama", "-p", "Hello world", "--json")
        assert code == 0 and json.loads(out)["tokens"][0][:2] == ["<|endoftext|>", "Hello"], err
    finally:
        registry.unregister(name)


# ----------------------------------------------------------------------------- sweep, plan, report, results session


@pytest.fixture
def swept(peak, run_cli, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A sweep of the three texts (two shards) with only the added analysis, and its command's output per text."""
    out = tmp_path / "results"
    code, text, err = run_cli("sweep", str(corpus_file(tmp_path)), "--out", str(out), *SWEEP)
    assert code == 0, err
    summary = json.loads(text)
    assert summary["analyses"] == ["peak"] and summary["complete"] is True, summary
    return out, [run_peak(run_cli, prompt) for prompt in TEXTS]


def test_the_sweep_stores_the_commands_numbers(swept, tiny_llama) -> None:
    out, singles = swept
    results = store.open_results(out)
    assert results.problems == [] and results.analyses == ["peak"]
    assert results.manifest["analyses"]["peak"] == {"site": "resid_pre",
                                                    "reduction": "max over positions, BOS excluded"}
    table = results.table("peak")
    assert table.num_rows == len(TEXTS) * tiny_llama.n_layers
    assert {name: table.schema.field(name).type for name in SCHEMA} == SCHEMA
    for prompt, single in enumerate(singles):  # batched and padded in the sweep, alone in the command
        mine = table.filter(pc.equal(table.column("prompt"), prompt)).sort_by("layer")
        np.testing.assert_allclose(mine.column("peak_norm").to_numpy(), single["peak_norm"][0], rtol=1e-5)
        assert mine.column("position").to_pylist() == single["position"][0]
        assert mine.column("token").to_pylist() == [single["tokens"][0][p] for p in single["position"][0]]


def test_report_shows_its_view_drawn_by_its_renderer(swept, run_cli) -> None:
    out, singles = swept
    peaks = np.asarray([single["peak_norm"][0] for single in singles])  # [prompts, layers]
    code, text, err = run_cli("report", str(out), "--json")
    assert code == 0, err
    view = json.loads(text)["peak"]
    assert view["n_prompts"] == len(TEXTS) and view["n_layers"] == peaks.shape[1] and view["bos_excluded"] is True
    np.testing.assert_allclose(view["mean_peak_norm"], peaks.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(view["max_peak_norm"], peaks.max(axis=0), rtol=1e-5)
    code, text, err = run_cli("report", str(out))
    assert code == 0, err
    assert f"peak resid_pre norm: {len(TEXTS)} prompts (BOS excluded)" in " ".join(text.split())  # title may wrap
    assert f"{view['mean_peak_norm'][0]:.3f}" in text and f"{view['max_peak_norm'][-1]:.3f}" in text


def test_the_results_session_sees_its_table_and_view(swept, run_cli) -> None:
    out, singles = swept
    session = ResultsSession(str(out))
    code, text, _ = run_cli("report", str(out), "--json")
    assert code == 0
    assert session.views["peak"] == pytest.approx(json.loads(text)["peak"])
    report = report_from_rows(session.views["peak"], session.results.table("peak"), session.prompt_numbers)
    assert session.prompt_numbers == [0, 1, 2]
    np.testing.assert_allclose(report.peak, [single["peak_norm"][0] for single in singles], rtol=1e-5)
    assert report.position.tolist() == [single["position"][0] for single in singles]


def test_the_plan_projects_it(peak, run_cli, tmp_path: Path, tiny_llama) -> None:
    out = tmp_path / "never"
    code, text, err = run_cli("sweep", str(corpus_file(tmp_path)), "--out", str(out), "--plan", *SWEEP)
    assert code == 0, err
    projected = json.loads(text)
    assert list(projected["analyses"]) == ["peak"] and projected["n_shards"] == 2
    part = projected["analyses"]["peak"]
    assert part["rows"] == len(TEXTS) * tiny_llama.n_layers  # its expected_rows
    assert part["peak_bytes"] > 0  # planned with its cost model (an analysis without one has no peak)
    assert len(part["batch_sizes"]) == 2 and part["disk_bytes"] > 0
    assert not out.exists()  # the plan writes nothing
