"""A worker's message can arrive after the widgets it would redraw are gone.

The background analyses and the patched pass run in thread workers that post ``AnalysisReady`` /
``AnalysisFailed`` when they finish. Under load one arrived after its screen was taken down (the
app closing at the end of a test) and the redraw raised ``NoMatches: StatusLine``. The app's
handlers keep the message's news (what is pending or failed) and drop only the drawing then.
"""

from __future__ import annotations

import pytest
from horizon.core.model.loader import LoadedModel
from horizon.core.sources.queries import Query
from horizon.tui.app import HorizonApp
from horizon.tui.screens.help import HelpScreen
from horizon.tui.state import AnalysisFailed, AnalysisReady
from horizon.tui.widgets.status import StatusLine
from textual.css.query import NoMatches
from textual.widgets import TabbedContent

from tests.test_tui import SIZE, make_session, plain, settle


@pytest.mark.anyio
async def test_late_messages_after_the_widgets_are_gone(tiny_llama: LoadedModel) -> None:
    app = HorizonApp(session=make_session(tiny_llama), background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        # Take the main screen's widgets down, as closing the app does, then let late news arrive.
        await app.query_one(TabbedContent).remove()
        await app.query_one(StatusLine).remove()
        app.pending.update({"norms", "scan"})
        app.post_message(AnalysisReady(Query.norms(), 0.5))
        app.post_message(AnalysisFailed(Query.scan(0), "RuntimeError: late"))
        await pilot.pause()
        assert "norms" not in app.pending and app.failed == {"scan": "RuntimeError: late"}  # the news is kept
    assert app.return_code in (0, None)  # the app was not ended by an exception


@pytest.mark.anyio
async def test_late_messages_while_another_screen_is_shown(tiny_llama: LoadedModel) -> None:
    """A message that arrives under the help screen is drawn on the main screen all the same."""
    app = HorizonApp(session=make_session(tiny_llama), background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        app.post_message(AnalysisFailed(Query.norms(), "RuntimeError: under the help screen"))
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        assert "norms" in plain(app.query_one(StatusLine))  # the failure is named on the main screen


@pytest.mark.anyio
async def test_a_missing_widget_on_a_standing_screen_still_raises(tiny_llama: LoadedModel) -> None:
    """Only a screen that is gone excuses a missing widget: a redraw that misses one of a screen
    still standing is a bug and must not be hidden."""
    app = HorizonApp(session=make_session(tiny_llama), background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await app.query_one(TabbedContent).remove()
        with pytest.raises(NoMatches):
            with app._drawing():
                app.refresh_all()
