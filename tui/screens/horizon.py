"""Screen 3, Horizon: sliders for k and the start layer, toggles for the options, the patched
pass's numbers, its per-token loss increase on the token grid, and the scanned loss-vs-k curve."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from horizon.tui.screens import views
from horizon.tui.widgets.charts import Legend, curve_text
from horizon.tui.widgets.scales import Scale, fmt
from horizon.tui.widgets.slider import Slider
from horizon.tui.widgets.token_grid import TokenGrid
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Checkbox, Static


def patch_summary(result: Any, settings: Any) -> Text:
    text = Text()
    text.append(f"k={settings.k} ", style="bold")
    text.append("loss ", style="dim")
    text.append(f"{result.loss_clean:.3f}→{result.loss_patched:.3f}")
    text.append("  Δ ", style="dim")
    text.append(f"{result.delta_loss:+.3f}", style="bold")
    text.append("  KL ", style="dim")
    text.append(fmt(result.kl))
    text.append("  top-1 ", style="dim")
    text.append(f"{result.top1_agreement:.0%}")
    return text


class HorizonPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Slider("k    ", 1, 2, 1, id="k-slider")
        yield Slider("start", 0, 1, 0, id="start-slider")
        with Horizontal(id="horizon-toggles"):
            yield Checkbox("clean source", id="source-toggle")
            yield Checkbox("keep embed", id="embed-toggle")
            yield Checkbox("full final", id="final-toggle")
        yield Static(id="horizon-summary")
        yield Static(id="horizon-curve")
        yield Legend(id="horizon-legend")
        with VerticalScroll(id="horizon-scroll"):
            yield TokenGrid(id="horizon-grid")

    def configure(self, n_layers: int) -> None:
        """Set the sliders' ranges for the model: k in 1..L+1, start layer in 0..L-1."""
        k_slider = self.query_one("#k-slider", Slider)
        start_slider = self.query_one("#start-slider", Slider)
        with self.prevent(Slider.Changed):
            k_slider.maximum = n_layers + 1
            start_slider.maximum = max(0, n_layers - 1)
        self.sync_controls()

    def sync_controls(self) -> None:
        """Show the app's settings on the controls without echoing change messages."""
        settings = self.app.settings  # type: ignore[attr-defined]
        with self.prevent(Slider.Changed, Checkbox.Changed):
            self.query_one("#k-slider", Slider).value = settings.k
            self.query_one("#start-slider", Slider).value = settings.start_layer
            self.query_one("#source-toggle", Checkbox).value = settings.source == "clean"
            self.query_one("#embed-toggle", Checkbox).value = settings.keep_embed
            self.query_one("#final-toggle", Checkbox).value = settings.final == "full"

    @on(Slider.Changed)
    def _slider(self, event: Slider.Changed) -> None:
        app: Any = self.app
        if event.slider.id == "k-slider":
            app.settings = replace(app.settings, k=event.value)
        else:
            app.settings = replace(app.settings, start_layer=event.value)

    @on(Checkbox.Changed)
    def _toggle(self, event: Checkbox.Changed) -> None:
        app: Any = self.app
        if event.checkbox.id == "source-toggle":
            app.settings = replace(app.settings, source="clean" if event.value else "recursive")
        elif event.checkbox.id == "embed-toggle":
            app.settings = replace(app.settings, keep_embed=event.value)
        elif event.checkbox.id == "final-toggle":
            app.settings = replace(app.settings, final="full" if event.value else "window")

    def refresh_view(self) -> None:
        app: Any = self.app
        if app.session is None:
            return
        session = app.session
        settings = app.settings
        result = session.cached_patch(settings, app.prompt_index)
        summary = self.query_one("#horizon-summary", Static)
        if not session.can_patch:
            summary.update(Text("stored results: no model to rerun (give --model)", style="dim"))
        elif result is None:
            summary.update(Text(f"k={settings.k}  patched pass running…", style="yellow"))
        else:
            summary.update(patch_summary(result, settings))
        values = views.patch_per_token(session, settings, app.prompt_index, "loss")
        tokens = session.tokens(app.prompt_index)
        if values is None:
            values = [None] * len(tokens)
        scale = Scale.fit(values, diverging=True)
        self.query_one("#horizon-grid", TokenGrid).set_data(tokens, values, scale)
        legend = self.query_one(Legend)
        legend.scale, legend.label = scale, "Δloss"
        self.query_one("#horizon-curve", Static).update(self._curve(app))

    @staticmethod
    def _curve(app: Any) -> Text:
        scan = app.session.cached(("scan", app.prompt_index))
        if scan is None:
            failed = app.failed.get("scan")
            return Text(f"scan failed: {failed}" if failed else "loss-vs-k scan: computing…", style="dim")
        rows = [row for row in scan.rows if row["start_layer"] == 0]
        horizon = scan.effective_horizon.get(0)
        title = Text("loss vs k ", style="bold")
        title.append(f"(recursive, S=0)  clean {scan.loss_clean:.3f} ", style="dim")
        title.append("╌╌", style="yellow")
        title.append(f"  eff. horizon (tol {scan.tol:g}) ", style="dim")
        title.append(f"k={horizon}" if horizon is not None else "none", style="bold green")
        chart = curve_text(
            [row["k"] for row in rows], [row["loss"] for row in rows], scan.loss_clean, horizon, app.settings.k,
            height=4,
        )
        return Text("\n").join([title, chart])
