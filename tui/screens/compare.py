"""Screen 6, Compare (``inspect --results A --results B ...``): several results directories side by side.

One row per directory in a table (``horizon compare``'s numbers: model, layers, d_model, growth
rate with its fit window and r^2, BOS norm ratio, effective horizon per start layer and ablation,
median cosine at the early/middle/final rows per truncation length, the most local and most
long-range heads, corpus and what differs from the first directory), the warnings when corpora or
settings differ, and one overlaid figure at a time ((1) norm growth, (4) sublayer norms, (7) loss
vs k, (9) cosine; keys n / N next / previous, as on the Figures screen), x as layer or relative
depth (key d), then the figures over the models, one point per model ((12) effective horizon vs
depth, (13) vs norm growth with Spearman's rho, (14) the relative depth where the median cosine
at c = 5 falls below the level, vs depth; x is the depth there).
The directories are read in a thread worker (``ComparedResults.load``) behind a progress bar;
every number is core/sources/compare.py's, printed through tui/format.py (whose roundings the snapshot
tests check against float noise).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any, ClassVar

from horizon.core.errors import HorizonError
from horizon.core.sources.results_session import ComparedResults, Comparison
from horizon.core.untrusted import visible
from horizon.tui.figures import TABLE, terminal
from horizon.tui.format import fixed, fmt
from horizon.tui.keys import bindings, key_of
from horizon.tui.state import AnalysisFailed, AnalysisReady, ReadComparison
from horizon.tui.widgets.plot import FigurePlot
from horizon.tui.widgets.scales import note_margin
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widgets import DataTable, ProgressBar, Static

# The overlaid figures (the figure table's, tui/figures/__init__.py), by name, with the screen's title for each.
FIGURES: dict[str, str] = {figure.name: figure.label for figure in TABLE if figure.overlaid}
X_AXES = ("layer", "depth")
WHERE = ("early", "middle", "final")


# ----------------------------------------------------------------------------- the table's cells


def _shown(value: float | None, show: Callable[[float], str]) -> str:
    return "-" if value is None else show(value)


def horizon_cell(horizons: dict[str, dict[str, Any]] | None) -> str:
    """``zero: S0=2, S1=>`` (``>``: no k within the tolerance), one group per ablation."""
    if not horizons:
        return "-"
    return "; ".join(f"{ablation}: " + ", ".join(f"S{start}={'>' if k is None else k}" for start, k in by_start.items())
                     for ablation, by_start in horizons.items())


def cosine_cell(values: dict[str, float | None] | None) -> str:
    """The early / middle / final medians, two decimals each."""
    if not values:
        return "-"
    return " ".join(_shown(values.get(where), lambda value: fixed(value, 2)) for where in WHERE)


def heads_cell(entries: list[dict[str, Any]] | None) -> str:
    """``L1.H0 0.52, ...``: layer, head and mean attention distance (BOS removed), in core's order.

    The order is a display choice too: each neighbour's gap is noted as its margin (half of it:
    both values may move), so a snapshot test fails where two heads are too close to call."""
    if not entries:
        return "-"
    for this, following in pairwise(entries):
        note_margin("order", this["mean_distance"], (following["mean_distance"] - this["mean_distance"]) / 2)
    return ", ".join(f"L{entry['layer']}.H{entry['head']} {fmt(entry['mean_distance'], 2)}" for entry in entries)


def cosine_lengths(rows: list[dict[str, Any]]) -> list[str]:
    """Every truncation length c any directory stored, in increasing order."""
    return sorted({c for row in rows for c in (row["median_cosine"] or {})}, key=int)


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    return ["model", "L", "d_model", "rate/layer", "fit", "r²", "BOS/mean", "eff. horizon",
            *(f"cos c={c} e/m/f" for c in cosine_lengths(rows)), "most local heads", "most long-range heads",
            "corpus", "differs from first"]


def table_row(row: dict[str, Any], lengths: list[str]) -> list[Text]:
    """One directory's cells (plain Text: no markup is parsed from stored strings)."""
    window = row["fit_window"]
    ratio = row["bos_norm_ratio"]
    corpus = row["corpus"] or {}
    cells = [
        row["label"], str(row["n_layers"]), str(row["d_model"]),
        _shown(row["growth_rate"], lambda value: fmt(value, 3)),
        "-" if not window else f"{window[0]}-{window[1]}",
        _shown(row["r2"], lambda value: fixed(value, 2)),
        "-" if ratio is None else f"{fmt(ratio, 3)} @{row['bos_norm_ratio_layer']}",
        horizon_cell(row["effective_horizon"]),
        *(cosine_cell((row["median_cosine"] or {}).get(c)) for c in lengths),
        heads_cell(row["most_local_heads"]), heads_cell(row["most_long_range_heads"]),
        f"{corpus.get('name')} ({corpus.get('n_prompts')} prompts)",
        ", ".join(row["settings_differ"]) if row["settings_differ"] else "-",
    ]
    return [Text(visible(cell), style="bold" if index == 0 else "") for index, cell in enumerate(cells)]


# ----------------------------------------------------------------------------- the pane


class ComparePane(VerticalScroll):
    """The Compare screen: reads its directories in a worker, then draws the table and one overlay."""

    BINDINGS: ClassVar[list[BindingType]] = bindings("compare")  # n, N, d (tui/keys.py)

    figure: reactive[str] = reactive("norm_growth")
    x: reactive[str] = reactive("layer")

    def __init__(self, source: ComparedResults, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(f"reading {len(self.source.paths)} results directories…", style="yellow"),
                     id="compare-status")
        yield ProgressBar(total=2 * len(self.source.paths), show_eta=False, id="compare-progress")
        yield Static(id="compare-warnings")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="compare-figure-title")
        yield FigurePlot(id="compare-plot")

    def on_mount(self) -> None:
        self.load_directories()

    # ------------------------------------------------------------------ loading (worker)

    @work(thread=True, group="compare", exit_on_error=False)
    def load_directories(self) -> None:
        try:
            self.source.load(progress=lambda done, total: self.app.call_from_thread(self._progress, done, total))
        except Exception as exc:
            error = str(exc) if isinstance(exc, HorizonError) else f"{type(exc).__name__}: {exc}"
            self.post_message(AnalysisFailed(ReadComparison(), error))
            return
        self.post_message(AnalysisReady(ReadComparison()))

    def _progress(self, done: int, total: int) -> None:
        self.query_one(ProgressBar).update(progress=done, total=total)

    @on(AnalysisReady)
    def _loaded(self, message: AnalysisReady) -> None:
        if isinstance(message.job, ReadComparison):
            self.refresh_view()

    @on(AnalysisFailed)
    def _failed(self, message: AnalysisFailed) -> None:
        if isinstance(message.job, ReadComparison):  # bubbles on to the app, which notifies
            self.error = message.error
            self.refresh_view()

    # ------------------------------------------------------------------ drawing

    def refresh_view(self) -> None:
        """Draw what is loaded: the status line, warnings, table and the current overlay."""
        status = self.query_one("#compare-status", Static)
        comparison = self.source.ready()
        if comparison is None:
            if self.error is not None:
                self.query_one(ProgressBar).display = False
                status.update(Text(f"cannot compare: {visible(self.error)}", style="bold red"))
            return
        self.query_one(ProgressBar).display = False
        status.display = False  # the table says it all from here on
        self._draw_warnings(comparison)
        self._draw_table(comparison)
        self._draw_overlay(comparison)

    def _draw_warnings(self, comparison: Comparison) -> None:
        warnings = self.query_one("#compare-warnings", Static)
        lines = comparison.warnings()
        warnings.display = bool(lines)
        warnings.update(Text("\n".join(f"⚠ {visible(line)}" for line in lines), style="yellow"))

    def _draw_table(self, comparison: Comparison) -> None:
        table = self.query_one(DataTable)
        rows = comparison.rows
        lengths = cosine_lengths(rows)
        table.clear(columns=True)
        table.add_columns(*table_columns(rows))
        for index, row in enumerate(rows):
            table.add_row(*table_row(row, lengths), key=str(index))

    def _draw_overlay(self, comparison: Comparison) -> None:
        plot = self.query_one("#compare-plot", FigurePlot)
        plot.inputs = list(comparison.inputs)
        plot.x = self.x
        plot.figure = self.figure
        names = list(FIGURES)
        title = Text(f"{names.index(self.figure) + 1}/{len(names)} {FIGURES[self.figure]}", style="bold")
        if self.figure in terminal.ACROSS:  # one point per model: x is the model's depth
            title.append(" ", style="bold")
        else:
            title.append(f", x: {'layer / L' if self.x == 'depth' else 'layer'} ", style="bold")
        # The models' colours, as the plot gives them (its legend may not fit a small plot).
        usable = plot.usable_inputs()
        for item, rgb in zip(usable, terminal.colours(len(usable)), strict=True):
            title.append(" ━ ", style=f"bold rgb({rgb[0]},{rgb[1]},{rgb[2]})")
            title.append(visible(item.label))
        keys = f"   {key_of('app.compare_figure(1)')}/{key_of('app.compare_figure(-1)')} figure"
        if self.figure not in terminal.ACROSS:
            keys += f" · {key_of('app.compare_x')} x axis"
        title.append(keys, style="dim")
        self.query_one("#compare-figure-title", Static).update(title)

    def watch_figure(self) -> None:
        comparison = self.source.ready()
        if comparison is not None:
            self._draw_overlay(comparison)

    watch_x = watch_figure

    def next_figure(self, step: int = 1) -> None:
        """The next (``step`` 1) or previous (-1) overlaid figure, round the list."""
        names = list(FIGURES)
        self.figure = names[(names.index(self.figure) + step) % len(names)]

    def toggle_x(self) -> None:
        self.x = X_AXES[(X_AXES.index(self.x) + 1) % len(X_AXES)]
