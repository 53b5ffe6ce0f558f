"""Snapshot tests of every screen (pytest-textual-snapshot), stored in the top-level snapshots/.

The pictures are made with the deterministic tiny-llama (random weights, seed 0) and a fixed
prompt, at 80x24, with timings hidden, after every worker has finished; one Tokens picture uses
the bundled model. Update them with ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from horizon.core.loader import LoadedModel
from horizon.core.prompts import tokenize
from horizon.core.session import PatchSettings, Session
from horizon.tui.app import HorizonApp
from pytest_textual_snapshot import SVGImageExtension
from syrupy.assertion import SnapshotAssertion

SNAPSHOT_DIR = Path(__file__).resolve().parent.parent / "snapshots"
PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."
SMOL_PROMPT = "The Eiffel Tower is in Paris.\nIt opened in 1889."


class TopLevelSVGExtension(SVGImageExtension):
    """SVG snapshots under snapshots/<test module>/ instead of tests/__snapshots__/."""

    @classmethod
    def dirname(cls, *, test_location) -> str:  # type: ignore[no-untyped-def, override]
        return str(SNAPSHOT_DIR / test_location.basename)


class TopLevelSnapshotAssertion(SnapshotAssertion):
    # snap_compare asks for the plugin's SVG extension; hand it ours, which only moves the files.
    def use_extension(self, extension_class=None):  # type: ignore[no-untyped-def]
        if extension_class is SVGImageExtension:
            extension_class = TopLevelSVGExtension
        return super().use_extension(extension_class)


@pytest.fixture
def snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return TopLevelSnapshotAssertion(
        update_snapshots=snapshot.update_snapshots,
        extension_class=snapshot.extension_class,
        test_location=snapshot.test_location,
        session=snapshot.session,
    )


@pytest.fixture(scope="module")
def tiny_session(tiny_llama: LoadedModel) -> Session:
    """One session for every picture: its engine results are computed once and cached."""
    return Session(tiny_llama, [PROMPT], tokenize(tiny_llama, [PROMPT]))


def tiny_app(session: Session) -> HorizonApp:
    return HorizonApp(session=session, show_timings=False)


def settle_then(*keys: str):  # type: ignore[no-untyped-def]
    """A run_before: wait for the workers, press ``keys``, wait again (debounce included)."""

    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.pause(0.2)
        await pilot.app.workers.wait_for_complete()
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.2)
            await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    return run_before


def test_snapshot_dir_is_top_level(snapshot: SnapshotAssertion) -> None:
    location = snapshot.use_extension(SVGImageExtension).extension.dirname(test_location=snapshot.test_location)
    assert Path(location) == SNAPSHOT_DIR / "test_tui_snapshots"


def test_tokens_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then())


def test_tokens_detail_pane(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then("right", "right", "right", "right", "right",
                                                                      "right", "right", "right"))


def test_tokens_norm_metric(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then("m", "left_square_bracket"))


def test_norms_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then("2"))


def test_horizon_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then("3"))


def test_horizon_moved_slider(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then("3", "right", "right"))


def test_outliers_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then("4"))


def test_attention_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then("5"))


def test_help_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then("question_mark"))


@pytest.mark.slow
def test_tokens_screen_bundled_model(snap_compare, smol: LoadedModel) -> None:  # type: ignore[no-untyped-def]
    session = Session(smol, [SMOL_PROMPT], tokenize(smol, [SMOL_PROMPT]))
    session.truncation()  # the Tokens screen's default metric; the other analyses are not shown
    session.patch(PatchSettings(k=smol.n_layers // 2))
    app = HorizonApp(session=session, show_timings=False, background=False)
    assert snap_compare(app, run_before=settle_then())


def test_a_changed_screen_fails_the_comparison(tiny_session: Session, snapshot: SnapshotAssertion) -> None:
    """The stored Tokens picture matches the same screen and not a changed one (metric switched)."""
    from pytest_textual_snapshot import normalize_svg
    from textual._doc import take_svg_screenshot

    same = take_svg_screenshot(app=tiny_app(tiny_session), terminal_size=(80, 24), run_before=settle_then())
    changed = take_svg_screenshot(app=tiny_app(tiny_session), terminal_size=(80, 24), run_before=settle_then("m"))
    assert normalize_svg(same) != normalize_svg(changed)
    reference = SNAPSHOT_DIR / "test_tui_snapshots" / "test_tokens_screen.svg"
    if not snapshot.update_snapshots:  # with --snapshot-update the picture is being rewritten
        stored = normalize_svg(reference.read_text())
        assert normalize_svg(same) == stored
        assert normalize_svg(changed) != stored
