"""`horizon inspect`: the Textual app.

The app owns the user's selections (metric, layer, length, horizon settings, prompt, token) as
reactive attributes and a ``Source`` (core/sources/session.py: a live ``Session`` or a ``ResultsSession``)
whose results the panes read once they are ready. All model work runs in thread workers started
here: one queue for the background analyses, an exclusive group for the patched pass, whose stale
runs are cancelled and never shown (a generation counter guards the redraw), and one for what the
Horizon screen's view needs (the layer x k matrix, the mean-ablation scan). Each job is a typed
query (core/sources/queries.py) the worker asks the source for (``source.get``); workers post
``AnalysisReady`` / ``AnalysisFailed`` with their query (tui/state.py), which the app routes by
job: it redraws each pane from a ``ViewState``. Keys, palette, help and each screen's footer come
from one table (tui/keys.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path, PurePath
from typing import Any, ClassVar

from horizon.core.errors import HorizonError
from horizon.core.options import DEFAULT_LENGTHS
from horizon.core.sources.queries import Query
from horizon.core.sources.results_session import ComparedResults
from horizon.core.sources.session import PatchSettings, Source
from horizon.core.untrusted import visible
from horizon.tui.hangup import HangupGuard
from horizon.tui.keys import added_keys, added_panes, bindings, palette
from horizon.tui.screens.attention import AttentionPane
from horizon.tui.screens.compare import ComparePane
from horizon.tui.screens.figures import FiguresPane, save_figure
from horizon.tui.screens.help import HelpScreen
from horizon.tui.screens.horizon import HorizonPane
from horizon.tui.screens.norms import NormsPane
from horizon.tui.screens.outliers import OutliersPane
from horizon.tui.screens.prompts import PromptPicker
from horizon.tui.screens.tokens import TokensPane
from horizon.tui.state import AnalysisFailed, AnalysisReady, ChangeSettings, JumpToToken, ViewState, job_name
from horizon.tui.widgets.footer import ScreenFooter
from horizon.tui.widgets.status import StatusLine
from horizon.tui.widgets.token_grid import TokenGrid
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import BindingType
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import TabbedContent, TabPane
from textual.worker import get_current_worker

METRICS = ("cosine", "norm", "loss", "kl")
DEBOUNCE_S = 0.12  # read at each step: a test lengthens it, since a loaded machine spaces keys widely


def background_jobs(prompt: int) -> list[Query[Any]]:
    """What the background queue computes, in order: the corpus-wide analyses, then the prompt's, then the results
    of the analyses that bring their own pane (tui/keys.py's ``added_panes``)."""
    return [Query.truncate(), Query.norms(), Query.attention(prompt), Query.scan(prompt),
            *(Query.of(name) for _, name in added_panes())]


class HorizonApp(App[None]):
    """The inspector. Give it a ready ``session``, or a ``load`` callable run in a worker."""

    # Absolute: subclasses elsewhere still find them.
    CSS_PATH: ClassVar[list[str | PurePath]] = [Path(__file__).with_name("app.tcss"),
                                            Path(__file__).parent / "screens" / "compare.tcss"]
    TITLE = "horizon"
    BINDINGS: ClassVar[list[BindingType]] = bindings("app")  # the one key table: tui/keys.py

    metric: reactive[str] = reactive("cosine")
    layer: reactive[int] = reactive(0)
    length: reactive[int] = reactive(1)
    settings: reactive[PatchSettings] = reactive(PatchSettings(k=1))
    prompt_index: reactive[int] = reactive(0)
    selected: reactive[int | None] = reactive(None)
    attention_no_bos: reactive[bool] = reactive(True)

    def __init__(
        self,
        session: Source | None = None,
        load: Callable[[], Source] | None = None,
        loading_label: str = "model",
        compare: list[str] | None = None,
        background: bool = True,
        show_timings: bool = True,
    ) -> None:
        super().__init__()
        if session is None and load is None:
            raise ValueError("give a session or a load callable")
        self.session: Source | None = session
        self._load = load
        self.loading_label = loading_label
        # Two or more results directories: the Compare screen (6) reads them all in its own worker.
        self.compared = ComparedResults(compare) if compare else None
        self.background = background
        self.show_timings = show_timings  # off in snapshot tests, whose pictures must not vary
        self.pending: set[str] = set()
        self.failed: dict[str, str] = {}
        self.last_run: tuple[str, float] | None = None
        self._patch_generation = 0
        self._debounce: Any = None
        self._extra_started: set[Query[Any]] = set()  # the Horizon view's jobs started (layer x k, scan mean)
        # The analyses' own panes (tui/keys.py): (key, name) as the app was made, their widgets once composed.
        self._added_panes = added_panes()
        self._added_widgets: list[Any] = []  # Textual widgets with refresh_view(state): the registry's contract
        for key in added_keys():  # BINDINGS is the built-in table's: the added tabs' keys are this app's own
            if key.keys:
                self.bind(key.keys, key.action, description=key.description, show=False)

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with TabbedContent(id="tabs", initial="tokens"):
            with TabPane("1 Tokens", id="tokens"):
                yield TokensPane()
            with TabPane("2 Norms", id="norms"):
                yield NormsPane()
            with TabPane("3 Horizon", id="horizon"):
                yield HorizonPane()
            with TabPane("4 Outliers", id="outliers"):
                yield OutliersPane()
            with TabPane("5 Attention", id="attention"):
                yield AttentionPane()
            if self.compared is not None:  # before 7: the tabs in key order
                with TabPane("6 Compare", id="compare"):
                    yield ComparePane(self.compared)
            with TabPane("7 Figures", id="figures"):
                yield FiguresPane()
            yield from self._compose_added_panes()
        yield StatusLine(id="status")
        yield ScreenFooter()  # the keys of the screen in view (tui/keys.py)

    def _compose_added_panes(self) -> ComposeResult:
        """A tab after the built-in ones for each analysis that brings its own pane, in registry order."""
        from horizon.core.analyses import REGISTRY

        for key, name in self._added_panes:
            widget = REGISTRY[name].pane_class()()
            self._added_widgets.append(widget)
            with TabPane(f"{key} {name.capitalize()}".strip(), id=name):
                yield widget

    def on_mount(self) -> None:
        HangupGuard(self).install(asyncio.get_running_loop())
        self.query_one("#tokens-grid").focus()
        if self.session is not None:
            self._session_ready(self.session)
        else:
            self.pending.add(f"loading {self.loading_label}")
            self.refresh_status()
            self._load_session()

    @work(thread=True, group="load", exit_on_error=False)
    def _load_session(self) -> None:
        assert self._load is not None
        start = time.perf_counter()
        try:
            session = self._load()
        except Exception as exc:
            self.call_from_thread(self._fatal, _describe(exc))
            return
        self.last_run = ("load", time.perf_counter() - start)
        self.call_from_thread(self._session_ready, session)

    def _fatal(self, message: str) -> None:
        self.pending.clear()
        self.notify(visible(message), title="cannot start", severity="error", timeout=30, markup=False)
        with self._drawing():
            self.refresh_status()

    def _session_ready(self, session: Source) -> None:
        self.session = session
        self.pending = {name for name in self.pending if not name.startswith("loading")}
        n = session.n_layers
        self.set_reactive(HorizonApp.layer, n)  # the final residual: where truncation differs most
        self.set_reactive(HorizonApp.settings, PatchSettings(k=max(1, n // 2)))
        with self._drawing():
            self.query_one(HorizonPane).configure(n, self.settings)
            self.start_patch()
            if self.background:
                self.pending.update(job_name(job) for job in background_jobs(self.prompt_index))
                self._run_background(self.prompt_index)
            self.refresh_all()

    def _widgets_gone(self) -> bool:
        """Whether the main screen's widgets are gone (the app closing, its screen taken down)."""
        try:
            return self.default_screen.query_one_optional(StatusLine) is None
        except Exception:  # no default screen left at all
            return True

    @contextlib.contextmanager
    def _drawing(self) -> Iterator[None]:
        """Draw, or drop the drawing when the widgets are gone.

        A worker's message can arrive after the screen it would redraw was taken down (under load,
        the app closing at the end of a test); the message's news is kept and only the drawing is
        dropped. A widget missing from a screen that still stands is a bug, and raises.
        """
        try:
            yield
        except NoMatches:
            if not self._widgets_gone():
                raise

    # ------------------------------------------------------------------ workers

    @work(thread=True, group="background", exclusive=True, exit_on_error=False)
    def _run_background(self, prompt: int) -> None:
        worker = get_current_worker()
        assert self.session is not None
        for job in background_jobs(prompt):
            if worker.is_cancelled:
                return
            start = time.perf_counter()
            try:
                self.session.get(job)
            except Exception as exc:
                self.post_message(AnalysisFailed(job, _describe(exc)))
                continue
            if not worker.is_cancelled:
                self.post_message(AnalysisReady(job, time.perf_counter() - start))

    @property
    def patch_scheduled(self) -> bool:
        """Whether a debounced patched pass waits for its timer (a test settles only once it has started)."""
        return self._debounce is not None

    def start_patch(self) -> None:
        """Run the patched pass for the current settings now (no debounce)."""
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None
        if self.session is None:
            return
        if not self.session.can_patch:  # stored results, no model: draw the new settings from what is stored
            self.refresh_all()
            return
        self._patch_generation += 1
        job = Query.patch(self.settings, self.prompt_index)
        if self.session.ready(job) is not None:
            self.workers.cancel_group(self, "patch")
            self.pending.discard("patch")
            self.refresh_all()
            return
        self.pending.add("patch")
        self.refresh_status()
        self._run_patch(job, self._patch_generation)

    @work(thread=True, group="patch", exclusive=True, exit_on_error=False)
    def _run_patch(self, job: Query[Any], generation: int) -> None:
        worker = get_current_worker()
        assert self.session is not None
        start = time.perf_counter()
        try:
            self.session.get(job)
        except Exception as exc:
            if generation == self._patch_generation:
                self.post_message(AnalysisFailed(job, _describe(exc)))
            return
        # A newer setting was asked for while this ran: its result is cached but never shown.
        if worker.is_cancelled or generation != self._patch_generation:
            return
        self.post_message(AnalysisReady(job, time.perf_counter() - start))

    def _start_extra(self) -> None:
        """Start (once) the worker for what the Horizon view shows and no result holds yet."""
        source = self.session
        if source is None or not source.can_patch:
            return
        settings, prompt = self.settings, self.prompt_index
        wanted: list[Query[Any]] = []
        if settings.only_layer is not None:  # the layer x k matrix
            wanted.append(Query.by_layer(prompt, settings.ablation))
        if settings.ablation != "zero":  # the loss-vs-k curve under that ablation
            wanted.append(Query.scan(prompt, settings.ablation))
        for job in wanted:
            if source.ready(job) is None and job not in self._extra_started:
                self._extra_started.add(job)
                self.pending.add(job_name(job))
                self.refresh_status()
                self._run_extra(job)

    @work(thread=True, group="horizon-extra", exit_on_error=False)
    def _run_extra(self, job: Query[Any]) -> None:
        assert self.session is not None
        try:
            self.session.get(job)
        except Exception as exc:
            self._extra_started.discard(job)
            self.post_message(AnalysisFailed(job, _describe(exc)))
            return
        # Not the app's "last run": the status line keeps naming the patched pass, whichever ends last.
        self.post_message(AnalysisReady(job))

    @on(AnalysisReady)
    def _job_done(self, message: AnalysisReady) -> None:
        self.pending.discard(message.name)
        self.failed.pop(message.name, None)
        if message.seconds is not None:
            self.last_run = (message.name, message.seconds)
        with self._drawing():
            self.refresh_all()

    @on(AnalysisFailed)
    def _job_failed(self, message: AnalysisFailed) -> None:
        self.pending.discard(message.name)
        self.failed[message.name] = message.error
        with self._drawing():
            self.notify(visible(message.error), title=f"{message.name} failed", severity="error", timeout=10,
                        markup=False)
            self.refresh_all()

    # ------------------------------------------------------------------ drawing

    def view_state(self) -> ViewState | None:
        """The source and the selections, as the panes draw them (None until the source is ready)."""
        if self.session is None:
            return None
        return ViewState(
            source=self.session, metric=self.metric, layer=self.layer, length=self.length,
            settings=self.settings, prompt=self.prompt_index, selected=self.selected,
            no_bos=self.attention_no_bos, failed=dict(self.failed),
        )

    def refresh_all(self) -> None:
        self._start_extra()
        state = self.view_state()
        if state is not None:
            panes: tuple[type[TokensPane | NormsPane | HorizonPane | OutliersPane | AttentionPane | FiguresPane],
                         ...] = (TokensPane, NormsPane, HorizonPane, OutliersPane, AttentionPane, FiguresPane)
            for pane in panes:
                self.query_one(pane).refresh_view(state)
            for added in self._added_widgets:
                added.refresh_view(state)
        self.refresh_status()

    def _refresh(self, pane: type[TokensPane | AttentionPane | OutliersPane]) -> None:
        state = self.view_state()
        if state is not None:
            self.query_one(pane).refresh_view(state)

    def refresh_status(self) -> None:
        self.query_one(StatusLine).show(
            self.session, self.prompt_index, self.settings, loading_label=self.loading_label,
            pending=self.pending, failed=self.failed, last_run=self.last_run, show_timings=self.show_timings,
        )

    watch_metric = watch_layer = watch_length = refresh_all  # a new selection redraws every pane

    def watch_selected(self) -> None:
        self._refresh(TokensPane)

    def watch_attention_no_bos(self) -> None:
        self._refresh(AttentionPane)

    def watch_settings(self, old: PatchSettings, new: PatchSettings) -> None:
        if old == new or self.session is None:
            return
        self.query_one(HorizonPane).sync_controls(new)
        self._start_extra()
        self.refresh_status()
        # Debounced: a burst of slider steps runs one patched pass, for the last value.
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(DEBOUNCE_S, self.start_patch)

    def watch_prompt_index(self, old: int, new: int) -> None:
        if old == new or self.session is None:
            return
        self.selected = None
        self.start_patch()
        self.pending.update(job_name(job) for job in background_jobs(new) if job.prompt is not None)
        self._run_background(new)
        self.refresh_all()

    # ------------------------------------------------------------------ actions

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_show_tab(self, tab: str) -> None:
        # A widget keeping focus inside the old pane pulls TabbedContent back to that pane, so
        # let go of focus first; _tab_changed then focuses the new screen's own widget, if any.
        self.set_focus(None)
        self.query_one(TabbedContent).active = tab

    def action_show_compare(self) -> None:
        if self._compare_pane() is not None:
            self.action_show_tab("compare")

    def action_compare_figure(self, step: int = 1) -> None:
        pane = self._compare_pane()
        if pane is not None:
            pane.next_figure(step)

    def action_compare_x(self) -> None:
        pane = self._compare_pane()
        if pane is not None:
            pane.toggle_x()

    def _compare_pane(self) -> ComparePane | None:
        """The Compare screen, or None (and a note) when the app was opened on one source."""
        if self.compared is None:
            self.notify("Compare needs two or more results directories: inspect --results A --results B",
                        severity="warning", timeout=5, markup=False)
            return None
        return self.query_one(ComparePane)

    def action_save_figure(self) -> None:
        save_figure(self)  # the figure shown, written in a thread worker (tui/screens/figures.py)

    def action_cycle_metric(self) -> None:
        self.metric = METRICS[(METRICS.index(self.metric) + 1) % len(METRICS)]

    def action_layer(self, step: int) -> None:
        if self.session is not None:
            self.layer = max(0, min(self.session.n_layers, self.layer + step))

    def action_cycle_length(self) -> None:
        lengths = self.session.lengths if self.session is not None else DEFAULT_LENGTHS
        self.length = lengths[(lengths.index(self.length) + 1) % len(lengths)] if self.length in lengths else lengths[0]

    def action_k(self, step: int) -> None:
        if self.session is not None:
            k = max(1, min(self.session.n_layers + 1, self.settings.k + step))
            self.settings = replace(self.settings, k=k)

    def action_start_layer(self, step: int) -> None:
        if self.session is not None:
            start = max(0, min(self.session.n_layers - 1, self.settings.start_layer + step))
            self.settings = replace(self.settings, start_layer=start)

    def action_toggle_source(self) -> None:
        self.settings = replace(self.settings, source="clean" if self.settings.source == "recursive" else "recursive")

    def action_toggle_keep_embed(self) -> None:
        self.settings = replace(self.settings, keep_embed=not self.settings.keep_embed)

    def action_toggle_final(self) -> None:
        self.settings = replace(self.settings, final="full" if self.settings.final == "window" else "window")

    def action_toggle_bos(self) -> None:
        self.attention_no_bos = not self.attention_no_bos

    def action_cycle_category(self) -> None:
        self.query_one(OutliersPane).cycle_category()
        self._refresh(OutliersPane)

    def action_close_detail(self) -> None:
        self.selected = None

    def action_pick_prompt(self) -> None:
        if self.session is None:
            return

        def chosen(index: int | None) -> None:
            if index is not None:
                self.prompt_index = index

        self.push_screen(PromptPicker(self.session.prompts, self.prompt_index), chosen)

    @on(JumpToToken)
    def jump_to_token(self, message: JumpToToken) -> None:
        """Show a token in the Tokens screen (from the outliers table)."""
        self.prompt_index = message.prompt
        self.action_show_tab("tokens")
        self.selected = message.position
        self.query_one(TokensPane).focus_grid()

    @on(ChangeSettings)
    def _change_settings(self, message: ChangeSettings) -> None:
        self.settings = message.change.applied_to(self.settings)

    @on(TokenGrid.Selected, "#tokens-grid")
    def _token_selected(self, message: TokenGrid.Selected) -> None:
        self.selected = message.index

    @on(TabbedContent.TabActivated)
    def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        # Put the keyboard where the screen's work is: arrows then act at once.
        targets = {"tokens": "#tokens-grid", "horizon": "#k-slider", "outliers": "#outliers-table",
                   "compare": "#compare-table", "figures": "#figures-plot"}
        target = targets.get(str(event.pane.id))
        if target is not None:
            self.query_one(target).focus()
        self.query_one(ScreenFooter).view = str(event.pane.id)
        self.refresh_status()

    def get_system_commands(self, screen: Screen) -> Any:
        yield from super().get_system_commands(screen)
        for title, help_line, callback in palette(self):  # the one key table: tui/keys.py
            yield SystemCommand(title, help_line, callback)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HorizonError) else f"{type(exc).__name__}: {exc}"
