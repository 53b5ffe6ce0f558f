"""``FigurePlot``: one of the seeds' figures as a real plot (plotext, through textual-plotext).

Set ``figure`` (a name from tui/figures/plots.py, ``norm_growth``, or its file stem,
``fig01-norm-growth``), ``inputs`` (``core.compare.FigureInput``; figures 1, 4, 7 and 9 overlay
them all, one colour per model) and ``x`` (``layer`` or ``depth``); it redraws when any changes.
``options`` passes figure-specific marks (``current_k`` for the loss-vs-k curve). The drawing
is tui/figures/terminal.py's: quantised values, round axes, labels that never meet.
"""

from __future__ import annotations

from typing import Any

from horizon.core.sources.compare import FigureInput
from horizon.tui.figures import terminal
from textual.app import RenderResult
from textual.reactive import reactive
from textual_plotext import PlotextPlot


class FigurePlot(PlotextPlot):
    """A figure of the seeds, drawn from ``inputs`` at the widget's size."""

    DEFAULT_CSS = """
    FigurePlot {
        width: 1fr;
        height: 1fr;
        min-height: 8;
    }
    """

    can_focus = True  # the save key (w) saves the focused figure
    figure: reactive[str] = reactive("norm_growth")
    # Never compared (FigureInput holds arrays): every assignment redraws.
    inputs: reactive[list[FigureInput]] = reactive(list, always_update=True)
    x: reactive[str] = reactive("layer")
    options: reactive[dict[str, Any]] = reactive(dict, always_update=True)

    def __init__(self, figure: str = "norm_growth", inputs: list[FigureInput] | None = None, x: str = "layer", *,
                 name: str | None = None, id: str | None = None,
                 classes: str | None = None, disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        terminal.figure_name(figure)  # an unknown figure fails here, not at the first draw
        self.set_reactive(FigurePlot.figure, figure)
        self.set_reactive(FigurePlot.inputs, list(inputs or []))
        self.set_reactive(FigurePlot.x, x)

    @property
    def name_of_figure(self) -> str:
        """plots.py's function name of the figure shown (``norm_growth``)."""
        return terminal.figure_name(self.figure)

    @property
    def stem(self) -> str:
        """The figure's file stem (``fig01-norm-growth``), as ``horizon figures`` names its file."""
        return terminal.STEMS[self.name_of_figure]

    def usable_inputs(self) -> list[FigureInput]:
        """The inputs this figure draws (those holding its data; one for a one-model figure)."""
        name = self.name_of_figure
        usable = [item for item in self.inputs if terminal.has_data(item, name)]
        return usable if name in terminal.OVERLAID else usable[:1]

    def render(self) -> RenderResult:
        self.plt.clear_figure()
        # The theme first: text drawn on the canvas (a heat map's scale) takes the canvas colour then.
        self.plt.theme(self._get_plotext_theme_name(self.app.theme))
        width, height = self.size.width, self.size.height
        if width > 0 and height > 0:
            terminal.draw(self.plt, self.figure, list(self.inputs), width, height, x=self.x, **self.options)
        return super().render()
