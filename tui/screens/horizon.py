"""Screen 3, Horizon: sliders for k and the start layer, toggles for the options, the patched
pass's numbers, its per-token loss increase on the token grid, and the scanned loss-vs-k curve
(a plotext plot: figure 7 for start layer 0, the current k a magenta line, the effective horizon
a green one; its axis ticks are round and never meet).

With the layer x k view on (key x), the curve gives way to the per-layer horizon matrix (the
horizon enforced at one layer N only, every k), and the selected cell (layer slider or < >, k
slider or , ., or a click) is the patched pass whose per-token loss increase the grid shows.
Key a switches zero and mean ablation. The matrix and the mean-ablation scan run in the app's
workers; the pane reads what is ready and asks the app for new settings (``ChangeSettings``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from horizon.core.sources.compare import FigureInput, live_figure_input
from horizon.core.sources.queries import Query
from horizon.core.sources.session import PatchSettings
from horizon.tui.format import fixed, fmt
from horizon.tui.keys import bindings
from horizon.tui.screens import views
from horizon.tui.state import ChangeSettings, SettingsChange, ViewState
from horizon.tui.widgets.charts import Legend
from horizon.tui.widgets.layer_matrix import LayerMatrix, unchanged
from horizon.tui.widgets.plot import FigurePlot
from horizon.tui.widgets.scales import Scale
from horizon.tui.widgets.slider import Slider
from horizon.tui.widgets.token_grid import TokenGrid
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Checkbox, Static


def patch_summary(result: Any, settings: Any) -> Text:
    text = Text()
    text.append(f"k={settings.k} ", style="bold")
    if settings.only_layer is not None:
        text.append(f"at L{settings.only_layer} only ", style="bold")
    if settings.ablation != "zero":
        text.append(f"{settings.ablation} ", style="bold")
    text.append("loss ", style="dim")
    text.append(f"{fixed(result.loss_clean, 3)}→{fixed(result.loss_patched, 3)}")
    text.append("  Δ ", style="dim")
    text.append(fixed(result.delta_loss, 3, sign=True), style="bold")
    text.append("  KL ", style="dim")
    text.append(fmt(result.kl))
    text.append("  top-1 ", style="dim")
    text.append(f"{result.top1_agreement:.0%}")
    return text


class HorizonPane(Vertical):
    DEFAULT_CSS = """
    #matrix-scroll { height: 1fr; min-height: 4; display: none; }
    #layer-slider, #matrix-legend { display: none; }
    #horizon-plot { height: 1fr; min-height: 9; max-height: 24; }
    """
    BINDINGS: ClassVar[list[BindingType]] = bindings("horizon")  # a, x, < > (tui/keys.py)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._matrix_layer: int | None = None  # the layer the matrix view returns to
        self._n_layers = 0
        self._settings = PatchSettings(k=1)  # the app's, as last shown on the controls
        self._plotted: Any = None  # the ScanResult the curve was last given

    def compose(self) -> ComposeResult:
        yield Slider("k    ", 1, 2, 1, id="k-slider")
        yield Slider("start", 0, 1, 0, id="start-slider")
        yield Slider("layer", 0, 1, 0, id="layer-slider")
        with Horizontal(id="horizon-toggles"):
            yield Checkbox("clean source", id="source-toggle")
            yield Checkbox("keep embed", id="embed-toggle")
            yield Checkbox("full final", id="final-toggle")
            yield Checkbox("mean", id="ablation-toggle")
            yield Checkbox("layer×k", id="matrix-toggle")
        yield Static(id="horizon-summary")
        yield Static(id="horizon-curve")
        yield FigurePlot(figure="loss_vs_k", id="horizon-plot")
        with VerticalScroll(id="matrix-scroll"):
            yield LayerMatrix(id="horizon-matrix")
        yield Legend(id="matrix-legend")
        yield Legend(id="horizon-legend")
        with VerticalScroll(id="horizon-scroll"):
            yield TokenGrid(id="horizon-grid")

    def configure(self, n_layers: int, settings: PatchSettings) -> None:
        """Set the sliders' ranges for the model: k in 1..L+1, start layer in 0..L-1, layer N in 0..L."""
        self._n_layers = n_layers
        k_slider = self.query_one("#k-slider", Slider)
        start_slider = self.query_one("#start-slider", Slider)
        with self.prevent(Slider.Changed):
            k_slider.maximum = n_layers + 1
            start_slider.maximum = max(0, n_layers - 1)
            self.query_one("#layer-slider", Slider).maximum = n_layers
        self.sync_controls(settings)

    def sync_controls(self, settings: PatchSettings) -> None:
        """Show the app's settings on the controls without echoing change messages."""
        self._settings = settings
        matrix = settings.only_layer is not None
        with self.prevent(Slider.Changed, Checkbox.Changed):
            self.query_one("#k-slider", Slider).value = settings.k
            self.query_one("#start-slider", Slider).value = settings.start_layer
            if settings.only_layer is not None:
                self.query_one("#layer-slider", Slider).value = settings.only_layer
            self.query_one("#source-toggle", Checkbox).value = settings.source == "clean"
            self.query_one("#embed-toggle", Checkbox).value = settings.keep_embed
            self.query_one("#final-toggle", Checkbox).value = settings.final == "full"
            self.query_one("#ablation-toggle", Checkbox).value = settings.ablation == "mean"
            self.query_one("#matrix-toggle", Checkbox).value = matrix
        self.query_one("#start-slider").display = not matrix
        self.query_one("#horizon-curve").display = not matrix
        self.query_one("#horizon-plot").display = not matrix
        for name in ("#layer-slider", "#matrix-scroll", "#matrix-legend"):
            self.query_one(name).display = matrix

    # -------------------------------------------------------------------- controls

    def _change(self, change: SettingsChange) -> None:
        self.post_message(ChangeSettings(change))

    def action_toggle_ablation(self) -> None:
        self._change(SettingsChange(ablation="mean" if self._settings.ablation == "zero" else "zero"))

    def action_toggle_matrix(self) -> None:
        if not self._n_layers:
            return
        if self._settings.only_layer is None:
            layer = self._matrix_layer if self._matrix_layer is not None else self._n_layers // 2
            self._change(SettingsChange(only_layer=layer))
        else:
            self._matrix_layer = self._settings.only_layer
            self._change(SettingsChange(only_layer=None))

    def action_cell_layer(self, step: int) -> None:
        if self._n_layers and self._settings.only_layer is not None:
            self._change(SettingsChange(only_layer=max(0, min(self._n_layers, self._settings.only_layer + step))))

    @on(LayerMatrix.Selected)
    def _cell(self, event: LayerMatrix.Selected) -> None:
        self._change(SettingsChange(k=event.k, only_layer=event.layer))

    @on(Slider.Changed)
    def _slider(self, event: Slider.Changed) -> None:
        if event.slider.id == "k-slider":
            self._change(SettingsChange(k=event.value))
        elif event.slider.id == "layer-slider":
            if self._settings.only_layer is not None:
                self._change(SettingsChange(only_layer=event.value))
        else:
            self._change(SettingsChange(start_layer=event.value))

    @on(Checkbox.Changed)
    def _toggle(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id == "source-toggle":
            self._change(SettingsChange(source="clean" if event.value else "recursive"))
        elif event.checkbox.id == "embed-toggle":
            self._change(SettingsChange(keep_embed=event.value))
        elif event.checkbox.id == "final-toggle":
            self._change(SettingsChange(final="full" if event.value else "window"))
        elif event.checkbox.id == "ablation-toggle":
            self._change(SettingsChange(ablation="mean" if event.value else "zero"))
        elif event.checkbox.id == "matrix-toggle" and event.value != (self._settings.only_layer is not None):
            self.action_toggle_matrix()

    def refresh_view(self, state: ViewState) -> None:
        source, settings = state.source, state.settings
        result = source.ready(Query.patch(settings, state.prompt))
        summary = self.query_one("#horizon-summary", Static)
        if not source.can_patch:
            summary.update(Text("stored results: no model to rerun (give --model)", style="dim"))
        elif result is None:
            summary.update(Text(f"k={settings.k}  patched pass running…", style="yellow"))
        else:
            summary.update(patch_summary(result, settings))
        values = views.patch_per_token(source, settings, state.prompt, "loss")
        tokens = source.tokens(state.prompt)
        if values is None:
            values = [None] * len(tokens)
        scale = Scale.fit(values, diverging=True)
        self.query_one("#horizon-grid", TokenGrid).set_data(tokens, values, scale)
        legend = self.query_one("#horizon-legend", Legend)
        legend.scale, legend.label = scale, "Δloss"
        if settings.only_layer is None:
            self.query_one("#horizon-curve", Static).update(self._curve(state))
            self._plot_curve(state)
        else:
            self._show_matrix(state)

    def _show_matrix(self, state: ViewState) -> None:
        settings = state.settings
        matrix = self.query_one(LayerMatrix)
        job = Query.by_layer(state.prompt, settings.ablation)
        result = state.source.ready(job)
        legend = self.query_one("#matrix-legend", Legend)
        if result is None:
            failed = state.failure(job)
            matrix.result = None
            if not state.source.can_patch:
                legend.label = "layer × k matrix: the sweep stored none (sweep --by-layer, or give --model)"
            else:
                legend.label = f"layer × k matrix failed: {failed}" if failed else "layer × k matrix: computing…"
            return
        values = [value for layer, row in zip(result.layers, result.delta_loss, strict=True)
                  for k, value in zip(result.ks, row, strict=True) if not unchanged(layer, k)]
        scale = Scale.fit(values, diverging=True)
        selected = None if settings.only_layer is None else (settings.only_layer, settings.k)
        matrix.result, matrix.scale, matrix.selected = result, scale, selected
        legend.scale = scale
        legend.label = "Δloss at N"
        if matrix.region.height:
            row = result.layers.index(settings.only_layer) if settings.only_layer in result.layers else 0
            self.query_one("#matrix-scroll", VerticalScroll).scroll_to(y=max(0, row - 2), animate=False)

    @staticmethod
    def _curve(state: ViewState) -> Text:
        ablation = state.settings.ablation
        job = Query.scan(state.prompt, ablation)
        scan = state.source.ready(job)
        if scan is None:
            failed = state.failure(job)
            return Text(f"scan failed: {failed}" if failed else "loss-vs-k scan: computing…", style="dim")
        horizon = scan.effective_horizon.get(0)
        title = Text("loss vs k ", style="bold")
        shown = getattr(scan, "ablation", ablation)  # stored results: the sweep's own ablation
        title.append(f"(recursive, S=0, {shown})  clean {fixed(scan.loss_clean, 3)}", style="dim")
        title.append(f"  eff. horizon (tol {scan.tol:g}) ", style="dim")
        title.append(f"k={horizon}" if horizon is not None else "none", style="bold green")
        title.append("  k ", style="dim")
        title.append(str(state.settings.k), style="bold magenta")
        return title

    def _plot_curve(self, state: ViewState) -> None:
        ablation = state.settings.ablation
        scan = state.source.ready(Query.scan(state.prompt, ablation))
        plot = self.query_one("#horizon-plot", FigurePlot)
        plot.display = scan is not None
        if scan is None:
            return
        if self._plotted is not scan:  # the figure's input copies the scan: once per scan
            self._plotted = scan
            plot.inputs = [start_zero_input(state.source.label, scan, getattr(scan, "ablation", ablation))]
        plot.options = {"current_k": state.settings.k}


def start_zero_input(label: str, scan: Any, ablation: str) -> FigureInput:
    """Figure 7's input for start layer 0 only (the curve the sliders' recursive horizon follows)."""
    figure = live_figure_input(label, scan=scan, ablation=ablation)
    figure.scan = {**(figure.scan or {}), "rows": [row for row in scan.rows if row["start_layer"] == 0],
                   "effective_horizon": {0: scan.effective_horizon.get(0)}}
    return figure
