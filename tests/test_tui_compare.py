"""Pilot tests of the Compare screen (``inspect --results A --results B``): rows, warnings, overlays, CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from horizon.core.sources.results_session import ResultsSession
from horizon.tui.app import HorizonApp
from horizon.tui.keys import footer_keys
from horizon.tui.screens.compare import FIGURES, ComparePane
from horizon.tui.widgets.footer import ScreenFooter
from rich.console import Console
from textual.widgets import DataTable, ProgressBar, Static, TabbedContent
from textual.widgets._footer import FooterKey

from tests.figure_sweeps import gpt2_dir, llama_dir
from tests.pilot import settle

FIXTURES = (llama_dir, gpt2_dir)  # the shared sweeps (tiny-llama 4 layers, tiny-gpt2 3 with other settings)
SIZE = (160, 48)


def plain(widget: Static) -> str:
    console = Console(width=400, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


def compare_app(*directories: Path) -> HorizonApp:
    # background=False: the first directory's own panes are tested in test_tui.py; here only Compare.
    return HorizonApp(session=ResultsSession(str(directories[0])), compare=[str(d) for d in directories],
                      background=False, show_timings=False)


def cells(app: HorizonApp) -> tuple[list[str], list[list[str]]]:
    """The compare table's column titles and its rows as plain strings."""
    table = app.query_one("#compare-table", DataTable)
    titles = [str(column.label) for column in table.columns.values()]
    rows = [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]
    return titles, rows


@pytest.mark.anyio
async def test_one_row_per_directory_with_the_compare_numbers(llama_dir: Path, gpt2_dir: Path, run_cli) -> None:
    code, out, err = run_cli("compare", str(llama_dir), str(gpt2_dir), "--json")
    assert code == 0, err
    want = json.loads(out)["models"]
    app = compare_app(llama_dir, gpt2_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("6")
        await settle(app, pilot)
        assert app.query_one(TabbedContent).active == "compare"
        assert app.focused is app.query_one("#compare-table")
        assert not app.query_one(ProgressBar).display  # loaded: the bar is gone
        titles, rows = cells(app)
    assert len(rows) == 2
    column = {title: index for index, title in enumerate(titles)}
    # tiny-llama stored c = 1, 5, 10 and tiny-gpt2 c = 1, 5: one column per c either stored.
    assert [t for t in titles if t.startswith("cos c=")] == ["cos c=1 e/m/f", "cos c=5 e/m/f", "cos c=10 e/m/f"]
    for row, expected in zip(rows, want, strict=True):
        assert row[column["model"]] == expected["label"]
        assert row[column["L"]] == str(expected["n_layers"]) and row[column["d_model"]] == str(expected["d_model"])
        # Rounded for the screen: each printed number lies within half its last digit of the JSON's.
        assert abs(float(row[column["rate/layer"]]) - expected["growth_rate"]) <= 0.0051
        assert abs(float(row[column["r²"]]) - expected["r2"]) <= 0.0051
        ratio, at = row[column["BOS/mean"]].split(" @")
        assert abs(float(ratio) - expected["bos_norm_ratio"]) <= 0.0051 and int(at) == expected["bos_norm_ratio_layer"]
        assert row[column["fit"]] == "{}-{}".format(*expected["fit_window"])
        (ablation, by_start), = expected["effective_horizon"].items()
        assert row[column["eff. horizon"]] == f"{ablation}: " + ", ".join(
            f"S{start}={'>' if k is None else k}" for start, k in by_start.items())
        for c, values in expected["median_cosine"].items():
            shown = [float(v) for v in row[column[f"cos c={c} e/m/f"]].split()]
            assert shown == pytest.approx([values[w] for w in ("early", "middle", "final")], abs=0.0051)
        for key, title in (("most_local_heads", "most local heads"),
                           ("most_long_range_heads", "most long-range heads")):
            names = [part.split()[0] for part in row[column[title]].split(", ")]
            assert names == [f"L{h['layer']}.H{h['head']}" for h in expected[key]]
        assert row[column["corpus"]] == "figures-test (4 prompts)"
    assert rows[0][column["differs from first"]] == "-"
    assert "scan.ablation" in rows[1][column["differs from first"]]
    assert rows[1][column["cos c=10 e/m/f"]] == "-"  # tiny-gpt2 stored no c = 10


@pytest.mark.anyio
async def test_the_warning_line_names_what_differs_and_only_then(llama_dir: Path, gpt2_dir: Path) -> None:
    app = compare_app(llama_dir, gpt2_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        warning = app.query_one("#compare-warnings", Static)
        text = plain(warning)
        assert warning.display
        assert "tiny-gpt2 differs from tiny-llama" in text and "scan.ablation" in text and "not comparable" in text
        assert str(gpt2_dir) not in text  # directories are named by their labels on screen
    same = compare_app(llama_dir, llama_dir)
    async with same.run_test(size=SIZE) as pilot:
        await settle(same, pilot)
        warning = same.query_one("#compare-warnings", Static)  # the same directory twice: said, and only that
        assert warning.display and "same directory" in plain(warning) and "differs" not in plain(warning)
        _, rows = cells(same)
        assert len(rows) == 2 and rows[0][0] != rows[1][0]  # the same model twice: labels still apart


@pytest.mark.anyio
async def test_the_overlay_draws_one_series_per_model_and_its_keys_switch(llama_dir: Path, gpt2_dir: Path) -> None:
    app = compare_app(llama_dir, gpt2_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("6")
        await settle(app, pilot)
        pane = app.query_one(ComparePane)
        plot = app.query_one("#compare-plot")
        footer = [(key.key, key.action) for key in app.query_one(ScreenFooter).query(FooterKey)
                  if not key.has_class("-command-palette")]
        assert footer == footer_keys("compare")  # the Compare screen's own keys, from tui/keys.py
        assert [key for key, _ in footer] == ["n", "N", "d", "w", "question_mark", "q"]
        assert [item.label for item in plot.inputs] == ["tiny-llama", "tiny-gpt2"]
        assert [item.n_layers for item in plot.inputs] == [4, 3]
        assert (plot.figure, plot.x) == ("norm_growth", "layer")
        title = app.query_one("#compare-figure-title", Static)
        assert "━ tiny-llama ━ tiny-gpt2" in plain(title)  # the colour legend, whatever the plot's size
        assert len({span.style for span in title.content.spans if "rgb(" in str(span.style)}) == 2
        seen = [plot.figure]
        for _ in FIGURES:
            await pilot.press("n")
            await pilot.pause()
            seen.append(plot.figure)
        assert seen == [*FIGURES, "norm_growth"]  # every overlay, then round again
        back = [plot.figure]
        for _ in FIGURES:  # N: the previous figure, as on the Figures screen
            await pilot.press("N")
            await pilot.pause()
            back.append(plot.figure)
        assert back == ["norm_growth", *reversed(FIGURES)]
        assert "n/N figure" in plain(app.query_one("#compare-figure-title", Static))  # the keys it names
        # (9): one line per model and truncation length it stored, named in the legend.
        while plot.figure != "cosine":
            await pilot.press("n")
        await pilot.pause()
        legend = plot.render().plain
        for item in plot.inputs:
            for c in ("1", "5", "10"):
                assert (f"{item.label} c = {c} " in legend) == (c in item.truncate["median_cos"]), (item.label, c)
        # (7): one line per model and start layer, with its ablation.
        while plot.figure != "loss_vs_k":
            await pilot.press("n")
        await pilot.pause()
        assert plot.figure == "loss_vs_k"
        legend = plot.render().plain
        for item in plot.inputs:
            for start in sorted({row["start_layer"] for row in item.scan["rows"]}):
                assert f"{item.label} S={start}, {item.scan['ablation']}" in legend
        await pilot.press("n")
        await pilot.pause()
        await pilot.press("d")
        await pilot.pause()
        assert plot.x == pane.x == "depth"
        assert "x: layer / L" in plain(app.query_one("#compare-figure-title", Static))
        await pilot.press("d")
        await pilot.pause()
        assert plot.x == "layer"
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"Show compare", "Next compare figure", "Previous compare figure", "Toggle compare x axis"} <= titles
        # On the Figures screen n is its own next figure and leaves the Compare overlay where it is.
        shown = plot.figure
        await pilot.press("7")
        await pilot.pause()
        figures = app.query_one("#figures-plot")
        first = figures.figure
        await pilot.press("n")
        await pilot.pause()
        assert figures.figure != first and plot.figure == shown


@pytest.mark.anyio
async def test_a_directory_that_cannot_be_read_is_one_line(llama_dir: Path, tmp_path: Path) -> None:
    app = compare_app(llama_dir, tmp_path / "nowhere")
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        status = plain(app.query_one("#compare-status", Static)).strip()
        assert status.startswith("cannot compare:") and "nowhere" in status and "\n" not in status
        assert app.failed.get("compare")  # the app heard of it too (status line, notification)
        assert app.query_one("#compare-table", DataTable).row_count == 0


@pytest.mark.anyio
async def test_one_results_directory_has_no_compare_screen(llama_dir: Path) -> None:
    app = HorizonApp(session=ResultsSession(str(llama_dir)), background=False, show_timings=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert not app.query(ComparePane)
        await pilot.press("6")
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "tokens"


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[HorizonApp]:
    """The apps ``inspect`` would run (run is replaced: nothing is drawn)."""
    apps: list[HorizonApp] = []

    def run(self: HorizonApp, *args: Any, **kwargs: Any) -> None:
        apps.append(self)

    monkeypatch.setattr(HorizonApp, "run", run)
    return apps


def test_two_results_reach_the_app(llama_dir: Path, gpt2_dir: Path, run_cli, started: list[HorizonApp]) -> None:
    code, _, err = run_cli("inspect", "--results", str(llama_dir), "--results", str(gpt2_dir))
    assert code == 0, err
    (app,) = started
    assert app.compared is not None and app.compared.paths == [str(llama_dir), str(gpt2_dir)]
    assert app.loading_label == str(llama_dir)
    assert app._load is not None and app._load().results.path == llama_dir  # the first one's panes
    code, _, err = run_cli("inspect", "--results", str(llama_dir))
    assert code == 0, err
    assert started[1].compared is None  # one directory: as before, no Compare screen


def test_a_path_that_is_no_results_directory_exits_2_before_the_app(llama_dir: Path, tmp_path: Path, run_cli,
                                                                  started: list[HorizonApp]) -> None:
    for args in (["--results", str(llama_dir), "--results", str(tmp_path)],
                 ["--results", str(tmp_path / "nowhere"), "--results", str(llama_dir)]):
        code, out, err = run_cli("inspect", *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert "is not a results directory" in err
    assert not started


# ----------------------------------------------------------------------------- the source


def test_compared_results_load_once_with_progress(llama_dir: Path, gpt2_dir: Path) -> None:
    from horizon.core.errors import HorizonError
    from horizon.core.sources import compare
    from horizon.core.sources.results_session import ComparedResults

    with pytest.raises(HorizonError):
        ComparedResults([str(llama_dir)])  # one directory has nothing to compare with
    source = ComparedResults([str(llama_dir), str(gpt2_dir)])
    assert source.ready() is None
    steps: list[tuple[int, int]] = []
    comparison = source.load(progress=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]  # each directory read, then each one's figure input
    assert source.ready() is comparison and source.load() is comparison  # read once
    direct = compare.compare(compare.load_all([llama_dir, gpt2_dir]))
    assert [row["label"] for row in comparison.rows] == [row["label"] for row in direct["models"]]
    assert [row["growth_rate"] for row in comparison.rows] == [row["growth_rate"] for row in direct["models"]]
    assert len(comparison.warnings()) == len(direct["warnings"])
    for named, raw in zip(comparison.warnings(), direct["warnings"], strict=True):
        assert str(gpt2_dir) in raw and str(gpt2_dir) not in named and "tiny-gpt2" in named


@pytest.mark.anyio
async def test_a_damaged_directory_is_compared_with_its_damage_named(llama_dir: Path, gpt2_dir: Path,
                                                                    tmp_path: Path) -> None:
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(gpt2_dir, damaged)
    (damaged / "attention" / "shard-00000.parquet").write_bytes(b"not parquet")
    app = compare_app(llama_dir, damaged)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        warnings = plain(app.query_one("#compare-warnings", Static))
        _, rows = cells(app)
    assert "shard-00000.parquet" in warnings and str(damaged) not in warnings
    assert len(rows) == 2 and rows[1][0] == "tiny-gpt2"


@pytest.mark.anyio
async def test_directories_load_in_a_worker_behind_a_progress_bar(llama_dir: Path, gpt2_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """While the directories are read the screen shows a progress bar and the app answers keys."""
    import threading

    from horizon.core.sources import compare

    release = threading.Event()
    read = compare.load

    def slow_load(path: Any) -> Any:
        assert release.wait(timeout=60), "the test never let the worker go on"
        return read(path)

    monkeypatch.setattr(compare, "load", slow_load)
    app = compare_app(llama_dir, gpt2_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        await pilot.press("6")
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "compare"  # the UI thread is free meanwhile
        bar = app.query_one(ProgressBar)
        assert bar.display and bar.total == 4 and not bar.progress
        assert "reading 2 results directories" in plain(app.query_one("#compare-status", Static))
        assert app.query_one("#compare-table", DataTable).row_count == 0
        release.set()
        await settle(app, pilot)
        assert bar.progress == 4 and not bar.display
        assert app.query_one("#compare-table", DataTable).row_count == 2


@pytest.mark.anyio
async def test_names_from_the_manifest_are_shown_escaped(llama_dir: Path, gpt2_dir: Path, tmp_path: Path) -> None:
    import shutil

    hostile = tmp_path / "hostile"
    shutil.copytree(gpt2_dir, hostile)
    manifest = json.loads((hostile / "manifest.json").read_text())
    manifest["model"]["spec"] = "evil\x1b[31m[bold]model[/bold]"
    (hostile / "manifest.json").write_text(json.dumps(manifest))
    app = compare_app(llama_dir, hostile)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        _, rows = cells(app)
        warnings = plain(app.query_one("#compare-warnings", Static))
    assert rows[1][0] == "evil\\x1b[31m[bold]model[/bold]"  # the escape made visible, the markup kept as text
    assert "\x1b" not in warnings and "evil\\x1b[31m[bold]model[/bold] differs from tiny-llama" in warnings


@pytest.mark.parametrize("module", ["horizon.core.sources.results_session", "horizon.tui.screens.compare",
                                    "horizon.tui.app"])
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    """Regression: the live and the results session (core/sources/) import each other; either may come first."""
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
