"""Pilot tests of the inspector: every number on screen is the engine's number."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from horizon.core.analyses.attention.engine import attention_distance
from horizon.core.analyses.norms.engine import analyse_norms
from horizon.core.analyses.truncate.categories import token_category
from horizon.core.analyses.truncate.engine import analyse_truncation
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import tokenize
from horizon.core.patching.horizon import HorizonConfig, patch
from horizon.core.sources.queries import Query
from horizon.core.sources.session import PatchSettings, Session
from horizon.tui import app as app_module
from horizon.tui.app import HorizonApp
from horizon.tui.screens.outliers import OutliersTable
from horizon.tui.widgets.detail import DetailPane
from horizon.tui.widgets.slider import Slider
from horizon.tui.widgets.token_grid import TokenGrid, layout, visible_token
from rich.console import Console
from textual.widgets import Static, TabbedContent

from tests.pilot import settle

PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."
SIZE = (80, 24)


def make_session(model: LoadedModel, prompts: list[str] | None = None) -> Session:
    prompts = prompts or [PROMPT]
    return Session(model, prompts, tokenize(model, prompts))


def plain(widget: Static) -> str:
    """The text a Static shows (Text or any rich renderable)."""
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


def grid_styles(grid: TokenGrid) -> list[str]:
    return [str(grid.scale.style(value).bgcolor) for value in grid.values]


# ----------------------------------------------------------------------------- pure helpers


def test_layout_wraps_and_never_overflows() -> None:
    cells = ["aaaa", "bb", "cccccc", "d", "eeeeeee"]
    places = layout(cells, 10)
    assert [(p.line, p.start) for p in places] == [(0, 0), (0, 5), (1, 0), (1, 7), (2, 0)]
    assert all(p.end <= 10 for p in places)
    broken = layout(["a", "↵", "b"], 80, [False, True, False])
    assert [(p.line, p.start) for p in broken] == [(0, 0), (0, 2), (1, 0)]


def test_visible_token_shows_whitespace() -> None:
    assert visible_token(" the") == "·the"
    assert visible_token("\n\n") == "↵↵"
    assert visible_token("\t") == "→"
    assert visible_token("x" * 40).endswith("…")


def test_outlier_rows_keep_word_pieces_whole_in_their_context() -> None:
    """The Outliers screen ranks and shows context as core/analyses/truncate/outliers.py does: a word piece such as
    ``ave`` of ``Gustave`` is shown whole and highlighted, BOS never."""
    from types import SimpleNamespace

    from horizon.core.analyses.truncate.outliers import rank_outliers
    from horizon.tui.screens.outliers import outlier_rows

    tokens = ["<s>", *[f" w{i}" for i in range(20)], " the", " engineer", " Gust", "ave", " Eiffel", ","]
    n = len(tokens)
    cos = np.linspace(0.9, -0.5, n - 1)[:, None].repeat(3, axis=1)  # the later, the lower
    report = SimpleNamespace(
        cos=cos, record_length=np.ones(n - 1, dtype=int), record_prompt=np.zeros(n - 1, dtype=int),
        record_pos=np.arange(1, n), record_token=tokens[1:], record_category=["alpha"] * (n - 1),
    )
    rows = outlier_rows(report, lambda prompt: tokens, 1, 2, None)
    records, _, scores = rank_outliers(cos, None, layer=2)
    assert [row[0] for row in rows] == [float(score) for score in scores]
    assert [row[4] for row in rows] == [int(report.record_pos[r]) for r in records]
    by_token = {row[1]: row[5] for row in rows}
    assert "[bold reverse]ave[/]" in by_token["ave"] and "Gust" in by_token["ave"]
    assert "[bold reverse] Gust[/]" in by_token[" Gust"]
    assert "&lt;s" not in by_token[" w0"] and "<s>" not in by_token[" w0"]  # BOS is never context


# ----------------------------------------------------------------------------- the session


def test_session_scan_in_chunks_equals_one_engine_scan(tiny_llama: LoadedModel) -> None:
    from horizon.core.analyses.scan.engine import scan

    session = make_session(tiny_llama)
    chunked = session.scan(chunk=2)
    whole = scan(tiny_llama, session.token_ids)
    assert [row["k"] for row in chunked.rows] == [row["k"] for row in whole.rows] == list(range(1, 6))
    for mine, theirs in zip(chunked.rows, whole.rows, strict=True):
        for name in ("loss", "delta_loss", "kl", "top1_agreement"):
            assert mine[name] == pytest.approx(theirs[name], abs=1e-6)
    assert chunked.effective_horizon == whole.effective_horizon
    assert chunked.loss_clean == pytest.approx(whole.loss_clean)
    assert session.scan() is chunked  # cached


def test_session_caches_patches_by_settings(tiny_llama: LoadedModel) -> None:
    session = make_session(tiny_llama)
    first = session.patch(PatchSettings(k=2))
    assert session.patch(PatchSettings(k=2)) is first
    other = session.patch(PatchSettings(k=2, keep_embed=True))
    assert other is not first and session.ready(Query.patch(PatchSettings(k=3), 0)) is None
    expected = patch(tiny_llama, session.token_ids, HorizonConfig.from_layers(2, keep_embed=True))
    assert other.delta_loss == pytest.approx(expected.delta_loss, abs=1e-6)


# ----------------------------------------------------------------------------- the app


@pytest.mark.anyio
async def test_k_slider_recolours_grid_with_engine_loss(tiny_llama: LoadedModel) -> None:
    session = make_session(tiny_llama)
    app = HorizonApp(session=session, background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.action_show_tab("horizon")
        await pilot.pause()
        slider = app.query_one("#k-slider", Slider)
        assert slider.has_focus
        await pilot.press("home")  # k = 1
        await settle(app, pilot)
        grid = app.query_one("#horizon-grid", TokenGrid)
        colours_k1 = grid_styles(grid)
        values_k1 = list(grid.values)
        await pilot.press("right")  # k = 2
        await settle(app, pilot)
        assert app.settings.k == 2
        expected = patch(tiny_llama, session.token_ids, HorizonConfig.from_layers(2))
        summary = plain(app.query_one("#horizon-summary", Static))
        assert f"{expected.delta_loss:+.3f}" in summary
        assert f"{expected.loss_patched:.3f}" in summary
        per_token = np.array(expected.per_token_loss_patched[0]) - np.array(expected.per_token_loss_clean[0])
        np.testing.assert_allclose(np.array(grid.values[1:], dtype=float), per_token, atol=1e-6)
        assert grid.values[0] is None  # BOS is never predicted
        assert grid_styles(grid) != colours_k1
        assert grid.values != values_k1


@pytest.mark.anyio
async def test_stale_patch_runs_are_never_shown(tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # A debounce long enough that the burst below is one burst however loaded the machine is.
    monkeypatch.setattr(app_module, "DEBOUNCE_S", 2.0)
    session = make_session(tiny_llama)
    app = HorizonApp(session=session, background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.action_show_tab("horizon")
        await pilot.pause()
        await pilot.press("home", "right", "right", "right", "left")  # burst: ends on k = 3
        await settle(app, pilot)
        assert app.settings.k == 3
        shown = session.ready(Query.patch(app.settings, 0))
        assert shown is not None
        summary = plain(app.query_one("#horizon-summary", Static))
        assert summary.startswith("k=3 ") and f"{shown.delta_loss:+.3f}" in summary
        # The debounce ran only the last value of the burst (and the first k on start-up).
        ran = {key.settings.k for key in session._patches}
        assert 4 not in ran and 5 not in ran


@pytest.mark.anyio
async def test_selecting_a_token_fills_the_detail_pane(tiny_llama: LoadedModel) -> None:
    session = make_session(tiny_llama)
    app = HorizonApp(session=session)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("right", "right", "right", "right", "right", "right", "right")  # token 6
        await settle(app, pilot)
        assert app.selected == 6
        detail = app.query_one(DetailPane)
        assert detail.display
        info = detail.detail
        tokens = session.tokens()
        assert info.token == tokens[6] and info.category == token_category(tokens[6])
        ids = session.token_ids
        truncation = analyse_truncation(tiny_llama, ids, lengths=(1, 5, 10))
        for length in (1, 5, 10):
            rows = np.nonzero((truncation.record_length == length) & (truncation.record_pos == 6))[0]
            if length >= 6:  # t - c < 1: no truncation record for this token
                assert all(value is None for value in info.cos_by_length[length])
            else:
                np.testing.assert_allclose(info.cos_by_length[length], truncation.cos[rows[0]], atol=1e-6)
        norms = analyse_norms(tiny_llama, ids, has_bos=True)
        np.testing.assert_allclose(info.norms, norms.norms["resid_pre"][0][:, 6], rtol=1e-5)
        expected = patch(tiny_llama, ids, HorizonConfig.from_layers(app.settings.k))
        assert math.isclose(
            info.loss_increase, expected.per_token_loss_patched[0][5] - expected.per_token_loss_clean[0][5],
            abs_tol=1e-6,
        )
        assert math.isclose(info.kl, expected.per_token_kl[0][5], abs_tol=1e-6)
        await pilot.press("escape")
        await pilot.pause()
        assert not app.query_one(DetailPane).display


@pytest.mark.anyio
async def test_clicking_a_token_selects_it(tiny_llama: LoadedModel) -> None:
    app = HorizonApp(session=make_session(tiny_llama), background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        grid = app.query_one("#tokens-grid", TokenGrid)
        places = layout([visible_token(t) for t in grid.tokens], grid.content_region.width)
        target = places[3]
        await pilot.click(grid, offset=(target.start + grid.content_region.x - grid.region.x, target.line))
        await pilot.pause()
        assert app.selected == 3


@pytest.mark.anyio
async def test_metric_layer_and_length_keys_change_the_grid(tiny_llama: LoadedModel) -> None:
    session = make_session(tiny_llama)
    app = HorizonApp(session=session)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        grid = app.query_one("#tokens-grid", TokenGrid)
        report = session.ready(Query.truncate())
        n = tiny_llama.n_layers
        assert (app.metric, app.layer, app.length) == ("cosine", n, 1)
        rows = report.record_length == 1
        by_pos = dict(zip(report.record_pos[rows].tolist(), report.cos[rows, n].tolist(), strict=True))
        assert [v for v in grid.values if v is not None] == pytest.approx([by_pos[p] for p in sorted(by_pos)])
        await pilot.press("left_square_bracket", "l")  # layer L-1, length 5
        await pilot.pause()
        assert (app.layer, app.length) == (n - 1, 5)
        rows = report.record_length == 5
        assert grid.values[:6] == [None] * 6  # BOS, and positions 1..5 have t - c < 1 at c = 5
        row_at_6 = np.nonzero(rows & (report.record_pos == 6))[0][0]
        assert grid.values[6] == pytest.approx(float(report.cos[row_at_6, n - 1]))
        await pilot.press("m")  # norm
        await pilot.pause()
        norms = session.ready(Query.norms()).norms["resid_pre"][0][n - 1]
        assert grid.values == pytest.approx(norms.tolist())


@pytest.mark.anyio
async def test_outlier_enter_jumps_to_the_token(tiny_llama: LoadedModel) -> None:
    session = make_session(tiny_llama)
    app = HorizonApp(session=session)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("4")
        await pilot.pause()
        table = app.query_one(OutliersTable)
        assert table.has_focus and table.row_count > 0
        report = session.ready(Query.truncate())
        rows = np.nonzero(report.record_length == 1)[0]
        lowest = rows[np.argmin(report.cos[rows, app.layer])]
        first = table.get_row_at(0)
        assert int(first[4]) == int(report.record_pos[lowest])
        await pilot.press("enter")
        await pilot.pause()
        assert app.query_one("#tabs").active == "tokens"
        assert app.selected == int(report.record_pos[lowest])
        assert app.query_one(DetailPane).display


@pytest.mark.anyio
async def test_outlier_category_filter_and_sort(tiny_llama: LoadedModel) -> None:
    session = make_session(tiny_llama)
    app = HorizonApp(session=session)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("4", "c", "c", "c", "c")  # all -> newline -> full_stop -> comma -> common
        await pilot.pause()
        table = app.query_one(OutliersTable)
        report = session.ready(Query.truncate())
        expected = sum(1 for c, n in zip(report.record_category, report.record_length, strict=True)
                       if c == "common" and n == 1)
        assert table.row_count == expected > 0
        assert {table.get_row_at(i)[2] for i in range(table.row_count)} == {"common"}
        cosines = [float(table.get_row_at(i)[0].plain) for i in range(table.row_count)]
        assert cosines == sorted(cosines)
        await pilot.press("o", "o", "o", "o")  # sort by position
        await pilot.pause()
        positions = [table.get_row_at(i)[4] for i in range(table.row_count)]
        assert positions == sorted(positions)


@pytest.mark.anyio
async def test_attention_lists_match_the_engine(tiny_llama: LoadedModel) -> None:
    session = make_session(tiny_llama)
    app = HorizonApp(session=session)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("5")
        await pilot.pause()
        expected = attention_distance(tiny_llama, session.token_ids, True)
        layer, head, distance = expected.ranked(True)[0]
        text = plain(app.query_one("#attention-lists", Static))
        assert f"L{layer}.H{head}  {distance:.2f}" in text
        await pilot.press("b")
        await pilot.pause()
        layer, head, distance = expected.ranked(False)[-1]
        assert f"L{layer}.H{head}  {distance:.2f}" in plain(app.query_one("#attention-lists", Static))


@pytest.mark.anyio
async def test_worker_error_is_a_notification_and_the_app_keeps_running(tiny_llama: LoadedModel) -> None:
    session = make_session(tiny_llama)

    def broken(settings: PatchSettings, prompt: int = 0) -> None:
        raise MemoryError("out of memory")

    session.patch = broken  # type: ignore[method-assign]
    app = HorizonApp(session=session, background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert "patch" in app.failed and "out of memory" in app.failed["patch"]
        assert any("out of memory" in n.message for n in app._notifications)
        await pilot.press("2", "question_mark")
        await pilot.pause()
        assert app.is_running and type(app.screen).__name__ == "HelpScreen"


@pytest.mark.anyio
async def test_live_mode_loads_in_a_worker(tiny_llama: LoadedModel) -> None:
    app = HorizonApp(load=lambda: make_session(tiny_llama), loading_label="tiny-llama", background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.session is not None
        assert app.query_one("#tokens-grid", TokenGrid).tokens == app.session.tokens()


@pytest.mark.anyio
async def test_command_palette_has_every_action(tiny_llama: LoadedModel) -> None:
    app = HorizonApp(session=make_session(tiny_llama), background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        titles = {command.title for command in app.get_system_commands(app.screen)}
        for title in ("Show tokens", "Show attention", "Help", "Horizon k up", "Toggle keep_embed", "Pick prompt"):
            assert title in titles
        before = app.settings.k
        next(c for c in app.get_system_commands(app.screen) if c.title == "Horizon k up").callback()
        assert app.settings.k == before + 1


@pytest.mark.anyio
async def test_one_key_table_makes_bindings_palette_and_help(tiny_llama: LoadedModel) -> None:
    """BINDINGS, the command palette and the help screen's key list are all the key table's."""
    from horizon.tui.keys import KEYS
    from horizon.tui.screens.compare import ComparePane
    from horizon.tui.screens.figures import FiguresPane
    from horizon.tui.screens.help import KEYS as HELP_KEYS
    from horizon.tui.screens.horizon import HorizonPane

    owners = {"app": HorizonApp, "horizon": HorizonPane, "outliers": OutliersTable, "compare": ComparePane,
              "figures": FiguresPane}
    for key in KEYS:
        if key.keys and key.action:
            bound = {(b.key, b.action) for b in owners[key.where].BINDINGS}  # type: ignore[union-attr]
            assert (key.keys, key.action) in bound, key
    for where, owner in owners.items():
        assert len(owner.BINDINGS) == sum(1 for k in KEYS if k.keys and k.action and k.where == where)
    app = HorizonApp(session=make_session(tiny_llama), background=False)
    async with app.run_test(size=SIZE):
        titles = [command.title for command in app.get_system_commands(app.screen) if command.title in
                  {k.title for k in KEYS}]
    assert titles == [k.title for k in KEYS if k.title]
    rows = [label for label, _ in HELP_KEYS]
    assert rows == list(dict.fromkeys(k.row for k in KEYS if k.row))
    assert all(text for _, text in HELP_KEYS)


def footer_shown(app: HorizonApp) -> list[tuple[str, str]]:
    """(key, action) of the footer's keys as drawn, left to right (the palette's key left out)."""
    from horizon.tui.widgets.footer import ScreenFooter
    from textual.widgets._footer import FooterKey

    return [(key.key, key.action) for key in app.query_one(ScreenFooter).query(FooterKey)
            if not key.has_class("-command-palette")]


@pytest.mark.anyio
async def test_the_footer_shows_the_keys_of_the_screen_in_view(tiny_llama: LoadedModel) -> None:
    """Each screen's footer holds exactly the bindings the key table declares for it, in its order."""
    from horizon.tui.keys import KEYS, footer_keys

    app = HorizonApp(session=make_session(tiny_llama), background=False)
    async with app.run_test(size=(200, 24)) as pilot:  # wide: no key is cut off
        await settle(app, pilot)
        shown = {"tokens": footer_shown(app)}
        for number, screen in (("2", "norms"), ("3", "horizon"), ("4", "outliers"), ("5", "attention"),
                               ("7", "figures"), ("1", "tokens")):
            await pilot.press(number)
            await settle(app, pilot)
            shown[screen] = footer_shown(app)
            assert shown[screen] == footer_keys(screen), screen
    # Written out once (not from the table): the footer no longer shows the token grid's keys everywhere.
    assert shown["figures"] == [("n", "next_figure(1)"), ("N", "next_figure(-1)"), ("w", "save_figure"),
                                ("question_mark", "help"), ("q", "quit")]
    assert ("m", "cycle_metric") in shown["tokens"] and ("m", "cycle_metric") not in shown["norms"]
    assert [key for key, _ in shown["outliers"]] == ["question_mark", "left_square_bracket",
                                                     "right_square_bracket", "l", "c", "o", "q"]
    # Every key some footer shows is on a screen that owns its binding (the footer cannot invent keys).
    assert {pair for pairs in shown.values() for pair in pairs} <= {(k.keys, k.action) for k in KEYS}


@pytest.mark.anyio
async def test_prompt_picker_filters_by_text(tiny_llama: LoadedModel) -> None:
    prompts = [PROMPT, "Rome is the capital of Italy.", "Berlin is in Germany."]
    session = make_session(tiny_llama, prompts)
    app = HorizonApp(session=session, background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("p")
        await pilot.pause()
        await pilot.press(*"berlin", "enter")
        await settle(app, pilot)
        assert app.prompt_index == 2
        # Typing in the search box must not fire the app's single-letter keys (b, e, l).
        assert app.length == 1 and not app.settings.keep_embed and app.attention_no_bos
        assert app.query_one("#tokens-grid", TokenGrid).tokens == session.tokens(2)


def test_inspect_rejects_bad_flags_before_loading(run_cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli("inspect", "--prompt", "x", "--file", "y")
    assert code == 2 and "not both" in err and out == ""
    code, _, err = run_cli("inspect", "--prompt", "   ")
    assert code == 2 and "empty" in err


# ----------------------------------------------------------------------------- results mode


@pytest.fixture(scope="module")
def sweep_dir(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from horizon.core.model.corpus import Corpus
    from horizon.core.sweep.sweep import SweepSettings, run_sweep

    texts = [PROMPT, "Rome is the capital of Italy, and Milan is in the north.", "Berlin is in Germany."]
    out = tmp_path_factory.mktemp("inspect") / "results"
    settings = SweepSettings(analyses=["norms", "truncate", "scan", "attention"], shard_size=2)
    run_sweep(Corpus(name="t", texts=texts, kinds=[""] * len(texts)), out, tiny_llama, settings, device="cpu")
    return out


@pytest.mark.anyio
async def test_results_mode_shows_the_report_numbers(sweep_dir, run_cli) -> None:  # type: ignore[no-untyped-def]
    import json

    from horizon.core.sources.results_session import ResultsSession

    code, out, err = run_cli("report", str(sweep_dir), "--json")
    assert code == 0, err
    report = json.loads(out)
    session = ResultsSession(str(sweep_dir))
    assert not session.can_patch and len(session.prompts) == 3
    app = HorizonApp(session=session)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert not app.failed
        await pilot.press("2")
        await pilot.pause()
        growth = report["norms"]["growth"]
        summary = plain(app.query_one("#norms-summary", Static))
        assert f"{growth['rate']:.3f}/layer over layers {growth['fit_layers'][0]}-{growth['fit_layers'][1]}" in summary
        await pilot.press("3")
        await pilot.pause()
        curve = plain(app.query_one("#horizon-curve", Static))
        scan = report["scan"]
        assert f"clean {scan['loss_clean']:.3f}" in curve
        assert f"k={scan['effective_horizon']['0']}" in curve
        await pilot.press("5")
        await pilot.pause()
        # The Attention screen shows the prompt's own stored rows (the corpus aggregate is report's).
        stored = session.results.table("attention").to_pydict()
        mine = [i for i, p in enumerate(stored["prompt"]) if p == 0]
        distances = np.full((max(stored["layer"]) + 1, max(stored["head"]) + 1), np.nan)
        for i in mine:
            distances[stored["layer"][i], stored["head"][i]] = stored["mean_distance_no_bos"][i]
        layer, head = np.unravel_index(np.nanargmin(distances), distances.shape)
        assert f"L{layer}.H{head}  {distances[layer, head]:.2f}" in plain(app.query_one("#attention-lists", Static))
        # The token grid shows this prompt's stored cosines (length 1, final layer).
        await pilot.press("1")
        await pilot.pause()
        stored = session.results.table("truncate")
        rows = [
            (p, pos, cos) for p, pos, c, lay, cos in zip(
                stored.column("prompt").to_pylist(), stored.column("position").to_pylist(),
                stored.column("length").to_pylist(), stored.column("layer").to_pylist(),
                stored.column("cos").to_pylist(), strict=True,
            ) if p == 0 and c == 1 and lay == app.layer
        ]
        grid = app.query_one("#tokens-grid", TokenGrid)
        assert grid.tokens == session.tokens(0) and len(rows) == len(grid.tokens) - 2
        for _, pos, cos in rows:
            assert grid.values[pos] == pytest.approx(cos)


@pytest.mark.anyio
async def test_results_mode_figures_draw_the_report_views(sweep_dir, run_cli) -> None:  # type: ignore[no-untyped-def]
    """The Figures screen of a results directory draws the stored views (those of report --json),
    lists the weight figures as needing a model, and draws each figure it lists as drawable."""
    import json

    from horizon.core.sources.results_session import ResultsSession
    from horizon.tui.screens.figures import NAMES, FiguresPane
    from horizon.tui.widgets.plot import FigurePlot

    code, out, err = run_cli("report", str(sweep_dir), "--json")
    assert code == 0, err
    report = json.loads(out)
    app = HorizonApp(session=ResultsSession(str(sweep_dir)))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("7")
        await pilot.pause()
        pane = app.query_one(FiguresPane)
        available = pane.available()
        assert {"norm_growth", "sublayer_norms", "loss_vs_k", "cosine", "attention_distance"} <= set(available)
        assert "weights" not in available and "mlp_random" not in available  # no model
        figure = app.query_one("#figures-plot", FigurePlot).inputs[0]
        stored = report["norms"]["sites"]["resid_pre"]["mean_norm"]
        assert figure.norms["sites"]["resid_pre"]["mean_norm"] == pytest.approx(stored)
        assert figure.scan["loss_clean"] == pytest.approx(report["scan"]["loss_clean"])
        for _ in NAMES:  # every figure, drawable or not, draws without an error
            await pilot.press("n")
            await pilot.pause()
        assert not app.failed and app.query_one("#figures-plot", FigurePlot).name_of_figure == NAMES[0]
        header = plain(app.query_one("#figures-header", Static))
        assert "Mean resid_pre norm per layer" in header


def test_results_mode_reads_the_stored_layer_k_matrix(tiny_llama: LoadedModel, tmp_path, run_cli) -> None:  # type: ignore[no-untyped-def]
    """A sweep with --by-layer stores each prompt's layer x k matrix; results mode gives it back, the
    same numbers as a live session's by_layer of that prompt (within float32 rounding: the sweep runs
    the prompts in a padded batch), and needs no model to do so."""
    from horizon.core.errors import HorizonError
    from horizon.core.sources.results_session import ResultsSession

    texts = [PROMPT, "Rome is the capital of Italy, and Milan is in the north.", "Berlin is in Germany."]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(texts) + "\n")
    out = tmp_path / "results"
    code, _, err = run_cli("sweep", str(corpus), "-o", str(out), "-m", "tiny-llama", "--device", "cpu",
                           "-a", "scan", "--by-layer", "--shard-size", "2")
    assert code == 0, err
    stored = ResultsSession(str(out))
    assert stored.prompts == texts and stored.token_ids == tokenize(tiny_llama, texts)
    assert stored.ready(Query.by_layer(0)) is None  # ready never reads the store: built by a worker
    stored.scan(0)  # the app's background scan job reads the stored matrices with the scan
    live = Session(tiny_llama, texts, tokenize(tiny_llama, texts))
    for prompt in range(len(texts)):
        matrix, reference = stored.ready(Query.by_layer(prompt)), live.by_layer(prompt, "zero")
        assert matrix is stored.by_layer(prompt, "zero")
        assert (matrix.layers, matrix.ks) == (reference.layers, reference.ks) == (list(range(5)), list(range(1, 6)))
        for name in ("loss", "delta_loss", "kl", "top1_agreement"):
            np.testing.assert_allclose(getattr(matrix, name), getattr(reference, name), rtol=1e-5, atol=1e-5,
                                       err_msg=f"prompt {prompt}: {name}")
        assert matrix.effective_horizon == reference.effective_horizon
        assert (matrix.n_tokens, matrix.tol, matrix.ablation) == (reference.n_tokens, reference.tol, "zero")
        assert matrix.loss_clean == pytest.approx(reference.loss_clean, rel=1e-5)
    # Another ablation was not swept: no stored matrix for it, and without a model none is computed.
    assert stored.ready(Query.by_layer(0, "mean")) is None
    with pytest.raises(HorizonError, match="--by-layer"):
        stored.by_layer(0, "mean")


def test_inspect_results_flag_is_checked_before_loading(run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run_cli("inspect", "--results", str(tmp_path))
    assert code == 2 and "not a results directory" in err
    code, _, err = run_cli("inspect", "--results", str(tmp_path), "--prompt", "x")
    assert code == 2 and "drop --prompt" in err


@pytest.mark.anyio
@pytest.mark.parametrize("start", ["1", "3", "4", "5"])
async def test_number_keys_switch_screens_from_any_screen(tiny_llama: LoadedModel, start: str) -> None:
    """Regression: with the k slider focused, screens without a focus target (2, 5) did not open."""
    app = HorizonApp(session=make_session(tiny_llama))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press(start)
        for key, tab in [("2", "norms"), ("3", "horizon"), ("5", "attention"), ("3", "horizon"),
                         ("1", "tokens"), ("3", "horizon"), ("4", "outliers"), ("2", "norms")]:
            await pilot.press(key)
            await pilot.pause()
            assert app.query_one(TabbedContent).active == tab, (start, key, app.focused)
