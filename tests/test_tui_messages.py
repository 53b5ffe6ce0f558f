"""The app's messages and their typed payloads (tui/state.py): the job a worker ran is a query (or
the Compare screen's read), named as the status line always named it; a settings change carries
only the fields it changes."""

from __future__ import annotations

from dataclasses import fields

import pytest
from horizon.core.model.loader import LoadedModel
from horizon.core.sources.queries import PatchSettings, Query
from horizon.tui.app import HorizonApp, background_jobs
from horizon.tui.state import (
    KEEP,
    AnalysisFailed,
    AnalysisReady,
    ChangeSettings,
    JumpToToken,
    ReadComparison,
    SettingsChange,
    job_name,
)

from tests.test_tui import SIZE, make_session, settle


def test_jobs_keep_the_names_the_status_line_shows() -> None:
    named = {
        Query.truncate(): "truncate", Query.norms(): "norms", Query.attention(3): "attention",
        Query.scan(3): "scan", Query.scan(0, "mean"): "scan mean", Query.by_layer(1): "layer × k",
        Query.by_layer(1, "mean"): "layer × k mean", Query.patch(PatchSettings(k=2, ablation="mean"), 0): "patch",
        Query.weights(): "weights", ReadComparison(): "compare",
    }
    assert {job: job_name(job) for job in named} == named
    assert [job_name(job) for job in background_jobs(2)] == ["truncate", "norms", "attention", "scan"]
    assert [job.prompt for job in background_jobs(2)] == [None, None, 2, 2]


def test_messages_carry_the_job() -> None:
    ready, failed = AnalysisReady(Query.scan(1), 0.5), AnalysisFailed(Query.by_layer(0, "mean"), "boom")
    assert (ready.job, ready.seconds, ready.name) == (Query.scan(1), 0.5, "scan")
    assert AnalysisReady(Query.norms()).seconds is None
    assert (failed.job, failed.error, failed.name) == (Query.by_layer(0, "mean"), "boom", "layer × k mean")
    jump = JumpToToken(2, 7)
    assert (jump.prompt, jump.position) == (2, 7)
    assert ready.handler_name == "on_analysis_ready" and jump.handler_name == "on_jump_to_token"


def test_a_settings_change_keeps_what_it_does_not_name() -> None:
    settings = PatchSettings(k=4, start_layer=1, source="clean", keep_embed=True, final="full", ablation="mean",
                             only_layer=2)
    assert SettingsChange().applied_to(settings) == settings
    assert all(getattr(SettingsChange(), item.name) is KEEP for item in fields(SettingsChange))
    assert SettingsChange(k=7).applied_to(settings) == PatchSettings(7, 1, "clean", True, "full", "mean", 2)
    # None is a value, not "keep": it turns the single-layer horizon off.
    assert SettingsChange(only_layer=None).applied_to(settings).only_layer is None
    both = SettingsChange(k=1, only_layer=0).applied_to(settings)
    assert (both.k, both.only_layer, both.start_layer) == (1, 0, 1)


@pytest.mark.anyio
async def test_the_app_routes_a_settings_change_and_a_failure_by_job(tiny_llama: LoadedModel) -> None:
    app = HorizonApp(session=make_session(tiny_llama), background=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        before = app.settings
        app.post_message(ChangeSettings(SettingsChange(keep_embed=True)))
        await pilot.pause()
        assert app.settings == PatchSettings(before.k, keep_embed=True)
        app.pending.add("layer × k mean")
        app.post_message(AnalysisFailed(Query.by_layer(0, "mean"), "RuntimeError: no"))
        await pilot.pause()
        assert "layer × k mean" not in app.pending and app.failed == {"layer × k mean": "RuntimeError: no"}
        app.post_message(AnalysisReady(Query.by_layer(1, "mean")))  # the same analysis ended: no longer failed
        await pilot.pause()
        assert app.failed == {} and app.last_run is not None and app.last_run[0] == "patch"
