"""Terminal figures (tui/figures/terminal.py, tui/widgets/plot.py): axes, quantisation, every figure
drawn at 80x24 and 160x48, overlays, the honest norm sparklines, and the app's save key."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from horizon.core.sources.compare import FigureInput
from horizon.tui.figures import FIGURES, terminal
from horizon.tui.format import BLOCKS, quantise
from horizon.tui.widgets.scales import recording_margins
from textual_plotext.plot import Plot

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SIZES = ((80, 18), (160, 42))  # the plot area of an 80x24 and of a 160x48 screen


# ----------------------------------------------------------------------------- inputs


def exponential_norms(n_layers: int, rate: float = 1.3, first_ratio: float = 18.06) -> dict:
    """Norms views with resid_pre = first_ratio * rate**i from row 1 (row 0 the embedding)."""
    mean = [1.0] + [first_ratio * rate**row for row in range(n_layers)]
    sites = {"resid_pre": {"mean_norm": mean}, "attn_out": {"mean_norm": [m / 7 for m in mean]},
             "mlp_out": {"mean_norm": [m / 3 for m in mean]}}
    return {"sites": sites, "growth": {"rate": rate, "fit_layers": [2, n_layers - 1], "r2": 0.99},
            "bos": {"mean_norm": [m * 4 for m in mean]}}


def full_input(label: str = "model-a", n_layers: int = 30) -> FigureInput:
    """A figure input holding every figure's data (synthetic numbers, the views' shapes)."""
    rows = [{"start_layer": start, "k": k, "loss": 3.2 + 4 / k + start / 10} for start in (0, 2)
            for k in range(1, n_layers + 2)]
    scan = {"ablation": "zero", "loss_clean": 3.2, "tol": 0.1, "effective_horizon": {0: n_layers - 5, 2: n_layers - 3},
            "rows": rows,
            "by_layer": {"ks": list(range(1, n_layers + 2)), "layers": list(range(n_layers + 1)),
                         "delta_loss": [[0.01 * k * layer for k in range(n_layers + 1)]
                                        for layer in range(n_layers + 1)]}}
    median = {str(c): [1 - layer / (n_layers * (1 + c / 10)) for layer in range(n_layers + 1)] for c in (1, 5, 10)}
    truncate = {"median_cos": median,
                "quartiles_cos": {c: [[v - 0.1 for v in values], [v + 0.05 for v in values]]
                                  for c, values in median.items()},
                "categories": {c: {"count": {"alpha": 12, "newline": 2}, "alpha": values, "newline": values[::-1]}
                               for c, values in median.items()}}
    weights = {"W_OV_frobenius": [[1 + head + layer / 10 for head in range(9)] for layer in range(n_layers)],
               "b_O": None, "mlp_out_random": [2.0**(layer / 5) for layer in range(n_layers)], "n_random": 64,
               "neuron_rate_real": [0.3] * n_layers, "neuron_rate_random": [0.5] * n_layers, "kind": "in"}
    rng = np.random.default_rng(0)
    samples = [rng.lognormal(mean=row / 10, sigma=0.3, size=200) for row in range(n_layers + 1)]
    prompt = (np.exp(np.arange(n_layers + 1)[:, None] / 10 + np.arange(40)[None, :] / 40), ["t"] * 40)
    attention = {"mean_distance_no_bos": [[1 + head + layer for head in range(9)] for layer in range(n_layers)]}
    return FigureInput(label=label, n_layers=n_layers, norms=exponential_norms(n_layers), scan=scan,
                       truncate=truncate, attention=attention, weights=weights, samples=samples, prompt=prompt)


def drawn(figure: str, inputs: list[FigureInput], width: int, height: int, **options) -> list[str]:
    plot = Plot()
    terminal.draw(plot, figure, inputs, width, height, **options)
    plot.plotsize(width, height)
    plot._set_size(width, height)  # as PlotextPlot.render does
    plot.theme("clear")
    return ANSI.sub("", plot.build()).rstrip("\n").split("\n")


def tick_row(lines: list[str]) -> list[str]:
    """The x tick labels: the line under the plot's bottom frame (└...┘)."""
    bottom = next(index for index, line in enumerate(lines) if "└" in line)
    return lines[bottom + 1].split()


# ----------------------------------------------------------------------------- names, quantising, axes


def test_terminal_table_matches_the_exported_figures() -> None:
    from horizon.tui.figures import TABLE
    from horizon.tui.screens.compare import FIGURES as COMPARE

    assert [terminal.STEMS[name] for name in terminal.NEEDS] == list(FIGURES)
    assert [figure.stem[:5] for figure in TABLE] == [f"fig{n:02d}" for n in range(1, len(TABLE) + 1)]
    assert list(COMPARE) == list(terminal.OVERLAID) and set(terminal.ACROSS) < set(terminal.OVERLAID)
    assert COMPARE["loss_vs_k"] == "(7) loss vs k" and COMPARE["cosine"] == "(9) cosine per layer"
    assert set(terminal.DRAW) == set(terminal.NEEDS)
    plots = pytest.importorskip("horizon.tui.figures.plots")
    for stem, (function, overlay, need) in plots.PLOTS.items():
        name = terminal.name_of(stem)
        assert function.__name__ == name and terminal.NEEDS[name] == need
        assert (name in terminal.OVERLAID) == overlay
    assert terminal.figure_name("fig07-loss-vs-k") == terminal.figure_name("loss_vs_k") == "loss_vs_k"
    with pytest.raises(ValueError):
        terminal.figure_name("no-such-figure")


@pytest.mark.parametrize("value", [18.0634, 0.000123456, 9.99951, -3.14159, 123456.7, 1e-30, 0.5])
def test_quantise_keeps_three_significant_figures_as_decimal_text(value: float) -> None:
    with recording_margins() as margins:
        rounded = quantise(value)
    assert rounded == float(f"{value:.3g}")  # the same decimal text, so the same bits
    assert rounded == quantise(float(np.float32(value))) or margins[0].distance < 1e-6 * abs(value)
    assert len(margins) == 1 and margins[0].kind == "plot value"
    assert abs(abs(rounded - value) + margins[0].distance - 10 ** (math.floor(math.log10(abs(value))) - 2) / 2) \
        < 1e-9 * abs(value)  # distance to the rounding boundary + distance rounded = half a unit
    assert quantise(None) is None and quantise(float("nan")) is None and quantise(0.0) == 0.0


@pytest.mark.parametrize("room", [10, 24, 40, 76, 150])
@pytest.mark.parametrize("values", [[0, 30], [1, 31], [0.0, 1.0], [3.21, 11.94], [-0.23, 0.98], [5, 5], [1516, 1517]])
def test_linear_axis_is_round_covers_the_data_and_labels_never_meet(room: int, values: list[float]) -> None:
    integer = all(float(v).is_integer() for v in values)
    axis = terminal.linear_axis(values, room, terminal._x_per_tick, integer=integer)
    assert axis.low <= min(values) and axis.high >= max(values)
    assert axis.ticks[0] == axis.low and axis.ticks[-1] == axis.high
    steps = {round(b - a, 9) for a, b in zip(axis.ticks, axis.ticks[1:], strict=False)}
    assert len(steps) <= 1  # evenly spaced
    if len(axis.ticks) > 1:
        step = steps.pop()
        assert float(f"{step:.0e}") == pytest.approx(step) and str(f"{step:.0e}")[0] in "125"
        # centred labels of width w need w + 2 characters each: neighbours are that far apart
        spacing = (room - 1) / (len(axis.ticks) - 1)
        assert spacing >= max(len(label) for label in axis.labels) + 2
    assert len(set(axis.labels)) == len(axis.labels)


@pytest.mark.parametrize("rows", [3, 4, 8, 13, 37])
@pytest.mark.parametrize("values", [[0.13, 1.4], [1.2, 600.0], [1.0, 61000.0], [20.0, 60.0], [0.001, 1e6], [5.0, 5.0]])
def test_log_axis_brackets_the_data_on_round_values_two_rows_apart(rows: int, values: list[float]) -> None:
    axis = terminal.log_axis(values, rows)
    assert axis.log and axis.low <= min(values) and axis.high >= max(values)
    assert axis.high / axis.low <= 10 * max(values) / min(values)  # no more than a decade to spare
    assert axis.ticks[0] == math.log10(axis.low) and axis.ticks[-1] == math.log10(axis.high)
    per_row = (axis.ticks[-1] - axis.ticks[0]) / max(1, rows - 1)
    assert all(b - a >= 2 * per_row - 1e-12 for a, b in zip(axis.ticks, axis.ticks[1:], strict=False))
    for tick, label in zip(axis.ticks, axis.labels, strict=True):
        assert float(label) == pytest.approx(10**tick) and str(float(label)).lstrip("0.").lstrip("0")[0] in "125"


# ----------------------------------------------------------------------------- the figures


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("figure", list(terminal.NEEDS))
def test_every_figure_fits_its_size(figure: str, size: tuple[int, int]) -> None:
    width, height = size
    lines = drawn(figure, [full_input()], width, height)
    assert len(lines) == height and all(len(line) <= width for line in lines)
    assert "no data" not in "\n".join(lines)


def test_a_figure_without_its_data_says_so() -> None:
    empty = FigureInput(label="x", n_layers=4)
    lines = drawn("loss_vs_k", [empty], 80, 18)
    assert "no data" in lines[0]


@pytest.mark.parametrize("size", SIZES)
def test_loss_vs_k_ticks_are_separate_round_numbers(size: tuple[int, int]) -> None:
    """The complaint: "1516" where two labels met. Every x tick label is one number, ascending."""
    lines = drawn("loss_vs_k", [full_input(n_layers=30)], *size, current_k=15)
    labels = tick_row(lines)
    numbers = [int(label) for label in labels]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert numbers[0] <= 1 and numbers[-1] >= 31 and all(n % (numbers[1] - numbers[0]) == 0 for n in numbers)


def test_norm_growth_is_on_a_log_axis_with_decade_labels() -> None:
    lines = drawn("norm_growth", [full_input(n_layers=30)], 80, 18)
    y_labels = [line.split("┤")[0].strip() for line in lines if "┤" in line]
    values = [float(label) for label in y_labels]
    assert values == sorted(values, reverse=True) and values[0] / values[-1] >= 1e4  # 1 .. 18*1.3^29 ~ 3e4
    def mantissa(value: float) -> float:
        return round(value / 10 ** math.floor(math.log10(value)), 6)

    assert all(mantissa(v) in (1, 2, 5) for v in values)  # the ends: 1-2-5 values around the data
    assert all(mantissa(v) == 1 for v in values[1:-1])  # many decades: the ticks between are decades


def test_overlays_draw_one_legend_entry_per_model_and_share_relative_depth() -> None:
    a, b = full_input("model-a", 30), full_input("model-b", 12)
    for figure in terminal.OVERLAID:
        text = "\n".join(drawn(figure, [a, b], 160, 42, x="depth"))
        assert "model-a" in text and "model-b" in text, figure
    labels = tick_row(drawn("norm_growth", [a, b], 160, 42, x="depth"))
    assert float(labels[0]) == 0 and float(labels[-1]) == 1  # layer / L of both models


def test_one_model_figures_draw_the_first_input_only() -> None:
    lines = drawn("attention_distance", [full_input("model-a"), full_input("model-b")], 80, 18)
    assert "model-a" in lines[0] and "model-b" not in "\n".join(lines)


def test_pixels_depend_on_the_quantised_values_only() -> None:
    """Values equal to 3 significant figures draw the same picture (the float-noise guarantee)."""
    a = full_input()
    b = full_input()
    noisy = [v * (1 + 1e-7) for v in b.norms["sites"]["resid_pre"]["mean_norm"]]
    assert [quantise(v) for v in noisy] == [quantise(v) for v in a.norms["sites"]["resid_pre"]["mean_norm"]]
    b.norms["sites"]["resid_pre"]["mean_norm"] = noisy
    assert drawn("norm_growth", [a], 80, 18) == drawn("norm_growth", [b], 80, 18)


# ----------------------------------------------------------------------------- the Norms screen's sparklines


def test_growth_sparkline_leaves_the_first_ratio_out_of_its_scale() -> None:
    from horizon.tui.screens.norms import growth_row

    ratios = [18.06, 1.02, 1.10, 1.25, 1.05, 1.30]
    low, line, high, note = growth_row(ratios)
    levels = [BLOCKS.index(char) for char in line.plain]
    assert levels[0] == len(BLOCKS) - 1 and len(set(levels[1:])) >= 4  # not flattened by 18.06
    assert (low, high) == ("1.02", "1.30") and "18.1" in note
    assert growth_row([1.5, 1.0, 2.0])[3] == ""  # inside the others' range: on the scale, no note


def test_resid_sparkline_is_logarithmic() -> None:
    from horizon.tui.screens.norms import log_sparkline

    line = log_sparkline([2.0**row for row in range(8)])  # an exponential: equal steps on a log scale
    assert [BLOCKS.index(char) for char in line] == list(range(8))


# ----------------------------------------------------------------------------- the save key


async def _figures_app(tiny_llama, monkeypatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    from horizon.core.model.prompts import tokenize
    from horizon.core.sources.session import Session
    from horizon.tui.app import HorizonApp

    monkeypatch.setenv("HORIZON_FIGURES_DIR", str(tmp_path / "figs"))
    prompt = "The capital of France is Paris. It is known for the Eiffel Tower."
    return HorizonApp(session=Session(tiny_llama, [prompt], tokenize(tiny_llama, [prompt])), show_timings=False)


@pytest.mark.anyio
async def test_save_key_writes_the_figure_shown_as_svg(tiny_llama, monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    app = await _figures_app(tiny_llama, monkeypatch, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await app.workers.wait_for_complete()
        await pilot.press("7")
        await pilot.pause()
        await pilot.press("w")
        await pilot.pause(0.2)
        await app.workers.wait_for_complete()
        await pilot.pause()
        notes = [str(note.message) for note in app._notifications]
    written = sorted((tmp_path / "figs").iterdir())
    assert [path.name for path in written] == ["fig01-norm-growth-tiny-llama_cpu.svg"]
    root = ET.parse(written[0]).getroot()
    ids = [element.get("id", "") for element in root.iter("{http://www.w3.org/2000/svg}g")]
    assert {"norm-line-tiny-llama_cpu", "fit-line-tiny-llama_cpu", "bos-line-tiny-llama_cpu",
            "axes-norm-growth-logy"} <= set(ids)
    assert any(f"saved {written[0]}" in note for note in notes)


@pytest.mark.anyio
async def test_save_key_without_matplotlib_is_one_notice(tiny_llama, monkeypatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    app = await _figures_app(tiny_llama, monkeypatch, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await app.workers.wait_for_complete()
        await pilot.press("7", "w")
        await pilot.pause()
        notes = [str(note.message) for note in app._notifications]
    assert not (tmp_path / "figs").exists()
    assert len([note for note in notes if "matplotlib" in note]) == 1


def test_bos_is_apart_and_does_not_squeeze_the_growth_curve() -> None:
    item = full_input(n_layers=12)
    mean = item.norms["sites"]["resid_pre"]["mean_norm"]
    item.norms["bos"]["mean_norm"] = [value * 1000 for value in mean]  # far above every other series
    lines = drawn("norm_growth", [item], 80, 18)
    top = max(float(line.split("┤")[0]) for line in lines if "┤" in line)
    assert max(mean) <= top < max(item.norms["bos"]["mean_norm"])
    assert top <= 10 * max(mean)  # the axis is the curve's, not BOS's
    assert "BOS apart, up to" in lines[0]


@pytest.mark.anyio
async def test_weight_figures_are_computed_when_first_shown(tiny_llama, monkeypatch, tmp_path: Path) -> None:
    from horizon.tui.screens.figures import FiguresPane
    from horizon.tui.widgets.plot import FigurePlot

    app = await _figures_app(tiny_llama, monkeypatch, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await app.workers.wait_for_complete()
        await pilot.press("7")
        pane = app.query_one(FiguresPane)
        assert "weights" not in pane.available()  # not computed until figure 5 or 6 is shown
        await pilot.press(*("n",) * 4)  # figure 5
        await pilot.pause(0.2)
        await app.workers.wait_for_complete()
        await pilot.pause()
        plot = app.query_one("#figures-plot", FigurePlot)
        assert plot.name_of_figure == "weights" and {"weights", "mlp_random"} <= set(pane.available())
        report = plot.usable_inputs()[0].weights
        assert len(report["W_OV_frobenius"]) == tiny_llama.n_layers  # the weight report of the live model
