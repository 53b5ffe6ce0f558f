"""Screen 7, Figures: the seeds' eleven figures as terminal plots, one at a time (n / N switch).

The figures are drawn from the session's ready results (a live model or a results directory),
turned into a ``core.compare.FigureInput`` as ``horizon figures`` does (``live_figure_input``),
so a figure here and its exported file show the same numbers; the header lists every figure and
marks those the session cannot draw yet. Key w saves the figure shown (``save_figure`` below,
the app's action): through tui/figures/plots.py (matplotlib, the ``figures`` extra) into
``horizon-figures/`` (or ``$HORIZON_FIGURES_DIR``), in a thread worker.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, ClassVar

from horizon.core.sources.compare import FigureInput, live_figure_input
from horizon.core.sources.queries import Query
from horizon.core.sources.session import Source
from horizon.core.untrusted import visible
from horizon.tui.figures import FIGURES, terminal
from horizon.tui.keys import bindings, key_of
from horizon.tui.state import AnalysisFailed, AnalysisReady, ViewState
from horizon.tui.widgets.plot import FigurePlot
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.widgets import Static

# plots.PLOTS's order: figure n is NAMES[n - 1]; the figures over models are the Compare screen's.
NAMES = [name for name in terminal.NEEDS if name not in terminal.ACROSS]
FIGURES_DIR = "horizon-figures"  # under the working directory; $HORIZON_FIGURES_DIR overrides it
WHAT_IS_MISSING = {
    "norms": "norms", "samples": "norms", "prompt": "this prompt's stored norms", "weights":
    "a model's weights (computed when shown with a model; results mode: --model)", "scan": "the loss-vs-k scan",
    "by_layer": "the layer x k matrix (Horizon screen, key x)", "truncate": "truncation",
    "attention": "attention",
}


def figure_jobs(prompt: int) -> list[Query[Any]]:
    """The results the figures of one prompt are drawn from (zero ablation; the weights aside)."""
    return [Query.norms(), Query.truncate(), Query.attention(prompt), Query.scan(prompt), Query.by_layer(prompt)]


def by_layer_view(result: Any) -> dict[str, Any]:
    """A ``ByLayerResult`` in the corpus view's shape (what figure 8 reads from ``scan["by_layer"]``)."""
    return {"layers": list(result.layers), "ks": list(result.ks), "delta_loss": result.delta_loss}


def source_figure_input(state: ViewState, weights: dict[str, Any] | None = None) -> FigureInput:
    """The figure input of what the session has ready for the selected prompt (zero ablation)."""
    source, prompt = state.source, state.prompt
    scan = source.ready(Query.scan(prompt))
    by_layer = source.ready(Query.by_layer(prompt))
    figure = live_figure_input(
        source.label, report=source.ready(Query.norms()), tokens=[source.tokens(prompt)], scan=scan,
        truncation=source.ready(Query.truncate()), attention=source.ready(Query.attention(prompt)),
        ablation=getattr(scan, "ablation", "zero"), weights=weights)
    if by_layer is not None:
        figure.scan = {**(figure.scan or {}), "by_layer": by_layer_view(by_layer)}
    figure.n_layers = figure.n_layers or state.n_layers
    return figure


class FiguresPane(Vertical):
    """The figure list (header) and one ``FigurePlot``."""

    DEFAULT_CSS = """
    FiguresPane { height: 1fr; }
    #figures-header { height: auto; }
    #figures-plot { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = bindings("figures")  # n, N (tui/keys.py)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key: tuple[int, ...] | None = None  # the results the input was built from (by identity)
        self._input: FigureInput | None = None
        self._weights: dict[str, Any] | None = None  # figures 5 and 6: weight_report, asked for once
        self._weights_asked = False
        self._state: ViewState | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="figures-header")
        yield FigurePlot(figure=NAMES[0], id="figures-plot")

    @property
    def plot(self) -> FigurePlot:
        return self.query_one("#figures-plot", FigurePlot)

    def refresh_view(self, state: ViewState) -> None:
        source, prompt = state.source, state.prompt
        self._state = state
        ready = (*(source.ready(job) for job in figure_jobs(prompt)), self._weights)
        key = (prompt, *(id(result) for result in ready))
        if key != self._key:  # building the input copies every result: only when one changed
            self._key, self._input = key, source_figure_input(state, self._weights)
            self.plot.inputs = [self._input]
        if self.plot.options != {"length": state.length}:
            self.plot.options = {"length": state.length}  # figure 9's quartiles: the selected length
        self._show_header()

    def available(self) -> list[str]:
        """The figures the current input can draw."""
        return [name for name in NAMES if self._input is not None and terminal.has_data(self._input, name)]

    def action_next_figure(self, step: int) -> None:
        current = NAMES.index(self.plot.name_of_figure)
        self.plot.figure = NAMES[(current + step) % len(NAMES)]
        if terminal.NEEDS[self.plot.name_of_figure] == "weights":
            self._ask_for_weights()
        self._show_header()

    def _ask_for_weights(self) -> None:
        """Figures 5 and 6 read the weights: computed once, when first shown, if there is a model."""
        state = self._state
        if self._weights_asked or state is None or not state.source.can_weigh:
            return
        self._weights_asked = True
        self._compute_weights(state.source)

    @work(thread=True, group="figures-weights", exit_on_error=False)
    def _compute_weights(self, source: Source) -> None:
        # A worker of the pane's own: only this screen shows the weights, and only once asked. The source
        # runs them through its runner, under the lock every other pass on the model holds.
        try:
            weights = source.get(Query.weights())
        except Exception as exc:  # the app shows it and names the job
            self.post_message(AnalysisFailed(Query.weights(), f"{type(exc).__name__}: {exc}"))
            return
        self.app.call_from_thread(setattr, self, "_weights", weights)
        self.post_message(AnalysisReady(Query.weights()))  # not the status line's last run (as the app's extras)

    def _show_header(self) -> None:
        shown, available = self.plot.name_of_figure, self.available()
        text = Text("figure ", style="bold")
        for number, name in enumerate(NAMES, start=1):
            style = "reverse bold" if name == shown else ("" if name in available else "dim strike")
            text.append(f"{number}", style=style)
            text.append(" ")
        keys = f"{key_of('next_figure(1)')}/{key_of('next_figure(-1)')} next/previous  {key_of('save_figure')} save"
        text.append(f" {keys}", style="dim")
        stem = terminal.STEMS[shown]
        text.append(f"\n{FIGURES[stem][0]}", style="bold")
        if shown not in available:
            text.append(f": needs {WHAT_IS_MISSING[terminal.NEEDS[shown]]}", style="yellow")
        self.query_one("#figures-header", Static).update(text)


# ----------------------------------------------------------------------------- the save key


def figures_dir() -> Path:
    return Path(os.environ.get("HORIZON_FIGURES_DIR") or FIGURES_DIR)


def current_plot(app: App[Any]) -> FigurePlot | None:
    """The FigurePlot that has focus, else the first one shown on the active screen."""
    if isinstance(app.focused, FigurePlot):
        return app.focused
    shown = [plot for plot in app.screen.query(FigurePlot) if plot.display and plot.is_on_screen]
    return shown[0] if shown else None


def file_name(plot: FigurePlot, inputs: list[FigureInput]) -> str:
    """``<stem>-<label>[+<label>...].svg``, as ``horizon figures`` names a figure per input."""
    from horizon.tui.figures.plots import gid_part

    return f"{plot.stem}-{'+'.join(gid_part(item.label) for item in inputs)}.svg"


def write_figure(plot_name: str, inputs: list[FigureInput], x: str, path: Path) -> Path:
    """Draw ``plot_name`` with tui/figures/plots.py and write it (worker thread)."""
    from horizon.tui.figures import export, plots

    function = getattr(plots, plot_name)
    figure = function(inputs, x=x) if plot_name in terminal.OVERLAID else function(inputs[0])
    return export.save_figure(figure, path)


def save_figure(app: App[Any]) -> None:
    """Save the current figure to a file (the app's save action), in a thread worker."""
    plot = current_plot(app)
    if plot is None:
        app.notify("no figure on this screen to save", severity="warning", timeout=4, markup=False)
        return
    inputs = plot.usable_inputs()
    if not inputs:
        app.notify("this figure has no data yet", severity="warning", timeout=4, markup=False)
        return
    if importlib.util.find_spec("matplotlib") is None:
        app.notify("saving figures needs matplotlib: pip install 'horizon-inspector[figures]'",
                   severity="warning", timeout=8, markup=False)
        return
    path = figures_dir() / file_name(plot, inputs)
    name, x = plot.name_of_figure, plot.x

    def work() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            written = write_figure(name, inputs, x, path)
        except Exception as exc:  # shown to the user; the app keeps running
            app.call_from_thread(app.notify, visible(f"{type(exc).__name__}: {exc}"), title="figure not saved",
                                 severity="error", timeout=10, markup=False)
            return
        app.call_from_thread(app.notify, visible(f"saved {written}"), timeout=6, markup=False)

    app.run_worker(work, thread=True, group="save-figure", exit_on_error=False)
