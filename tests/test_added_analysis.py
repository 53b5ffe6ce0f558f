"""An analysis added from the test suite (tests/added_analysis/: "peak", the largest resid_pre norm per
prompt and layer) with one ``register`` call, seen through its own CLI command, the sweep, ``--plan``,
``report`` and ``report --json``, the results session, and its own pane in the app (tab 8, live and
results mode); its numbers checked against plain HF hidden states. No module of the package knows about it."""

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
from horizon.core.model.prompts import tokenize
from horizon.core.results import store
from horizon.core.sources.queries import Query
from horizon.core.sources.results_session import ResultsSession
from horizon.core.sources.session import Session, Source
from horizon.tui import keys
from horizon.tui.app import HorizonApp, background_jobs
from horizon.tui.cli.app import COMMAND_MODULES
from textual.widgets import Static, TabbedContent, TabPane

from tests.added_analysis import ANALYSIS, SCHEMA, report_from_rows
from tests.added_analysis.pane import PeakPane
from tests.pilot import settle
from tests.test_cli import assert_clean_failure
from tests.test_tui import footer_shown, plain

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
    if after_bos.shape[1] > 1:  # the positions compared exactly are no float tie (gaps here: 0.5% and more)
        top_two = np.sort(after_bos, axis=1)[:, -2:]
        assert ((top_two[:, 1] - top_two[:, 0]) / top_two[:, 1]).min() > 1e-4
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
        # After every built-in command (their order is the order their modules were first imported in
        # this process, which other tests change; a fresh `horizon --help` lists them as COMMAND_MODULES).
        assert commands[-1] == "peak" and set(COMMAND_MODULES) <= set(commands[:-1]), commands
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


# ----------------------------------------------------------------------------- its query and its pane in the app

BUILT_IN_TABS = ["tokens", "norms", "horizon", "outliers", "attention", "figures"]


def test_its_query_goes_to_its_hooks_and_no_other(peak, tiny_llama) -> None:
    assert Query.of("peak") == Query.of("peak") and Query.of("peak") != Query.norms()
    assert Query.of("norms") != Query.norms()  # a registered analysis's own hooks, never the built-in query
    with pytest.raises(ValueError, match="no analysis 'nope'"):
        Query.of("nope")
    session = Session(tiny_llama, TEXTS[:2], tokenize(tiny_llama, TEXTS[:2]))
    assert session.ready(Query.of("peak")) is None  # nothing computed yet
    assert session.get(Query.of("norms")) is None  # norms brings no live hook
    report = session.get(Query.of("peak"))
    assert session.ready(Query.of("peak")) is report and session.ready(Query.norms()) is None
    for prompt in range(2):
        expected, where = hf_peaks(tiny_llama, session.token_ids[prompt])
        np.testing.assert_allclose(report.peak[prompt], expected, rtol=1e-5)
        assert report.position[prompt].tolist() == where.tolist()
    assert [job.analysis for job in background_jobs(0)][-1] == "peak"  # the app computes it in the background


def shown_peaks(app: HorizonApp) -> tuple[np.ndarray, list[int]]:
    """(peak norm, position) per layer as the peak pane's table shows them (3 decimals)."""
    peaks, positions = [], []
    for line in plain(app.query_one(PeakPane)).splitlines():
        cells = line.replace("│", " ").split()
        if len(cells) >= 3 and cells[0].isdigit():  # a layer's row: layer, peak, position, token
            peaks.append(float(cells[1]))
            positions.append(int(cells[2]))
    return np.asarray(peaks), positions


async def show_tab_8(app: HorizonApp, pilot: Any) -> None:
    await settle(app, pilot)
    assert [pane.id for pane in app.query(TabPane)] == [*BUILT_IN_TABS, "peak"]  # after every built-in tab
    assert str(app.query_one(TabbedContent).get_tab("peak").label) == "8 Peak"
    await pilot.press("8")
    await settle(app, pilot)
    assert app.query_one(TabbedContent).active == "peak"
    assert footer_shown(app) == [("question_mark", "help"), ("q", "quit")]  # the keys every screen's footer shows


def assert_pane_shows(app: HorizonApp, singles: list[dict[str, Any]], prompt: int) -> None:
    peaks, positions = shown_peaks(app)
    assert len(peaks) == len(singles[prompt]["peak_norm"][0])
    np.testing.assert_allclose(peaks, singles[prompt]["peak_norm"][0], atol=5e-4)  # printed to 3 decimals
    assert positions == singles[prompt]["position"][0]


@pytest.mark.anyio
async def test_the_live_app_shows_its_pane_on_key_8(peak, run_cli, tiny_llama) -> None:
    singles = [run_peak(run_cli, text) for text in TEXTS[:2]]  # its command, one prompt at a time
    session = Session(tiny_llama, TEXTS[:2], tokenize(tiny_llama, TEXTS[:2]))  # batched together, one padded
    app = HorizonApp(session=session, show_timings=False)
    async with app.run_test(size=(100, 40)) as pilot:
        await show_tab_8(app, pilot)
        assert_pane_shows(app, singles, 0)
        expected, _ = hf_peaks(tiny_llama, singles[0]["token_ids"][0])
        np.testing.assert_allclose(shown_peaks(app)[0], expected, atol=5e-4)
        app.prompt_index = 1
        await settle(app, pilot)
        assert_pane_shows(app, singles, 1)
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert "Show peak" in titles
        await pilot.press("question_mark")  # the help lists its key after the built-in ones
        await settle(app, pilot)
        lines = plain(app.screen.query_one("#help-body", Static)).splitlines()
        keys_listed = [line.split()[0] for line in lines if line.strip() and line.split()[0] in {"7", "8", "?"}]
        assert keys_listed == ["7", "?", "8"]
        assert any("Peak: the peak analysis's own screen" in line for line in lines)


@pytest.mark.anyio
async def test_results_mode_shows_its_stored_numbers_in_its_pane(swept) -> None:
    out, singles = swept
    source: Source = ResultsSession(str(out))
    app = HorizonApp(session=source, show_timings=False)
    async with app.run_test(size=(100, 40)) as pilot:
        await show_tab_8(app, pilot)
        for prompt in range(len(TEXTS)):
            app.prompt_index = prompt
            await settle(app, pilot)
            assert_pane_shows(app, singles, prompt)


@pytest.mark.anyio
async def test_once_unregistered_the_app_is_as_before(tiny_llama) -> None:
    before = (keys.help_rows(), keys.footer_keys("tokens"), keys.all_keys())
    registry.register(ANALYSIS)
    try:
        assert keys.help_rows()[-1] == ("8", "Peak: the peak analysis's own screen")
        assert keys.footer_keys("peak") == [("question_mark", "help"), ("q", "quit")]
    finally:
        registry.unregister(ANALYSIS.name)
    assert (keys.help_rows(), keys.footer_keys("tokens"), keys.all_keys()) == before
    assert keys.all_keys() == keys.KEYS and keys.added_panes() == []
    with pytest.raises(ValueError, match="no screen 'peak'"):
        keys.footer_keys("peak")
    assert "peak" not in [job.analysis for job in background_jobs(0)]
    app = HorizonApp(session=Session(tiny_llama, TEXTS[:1], tokenize(tiny_llama, TEXTS[:1])), background=False)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(app, pilot)
        assert [pane.id for pane in app.query(TabPane)] == BUILT_IN_TABS
        await pilot.press("8")
        await settle(app, pilot)
        assert app.query_one(TabbedContent).active == "tokens"  # no key 8
        assert "8" not in app._bindings.key_to_bindings
