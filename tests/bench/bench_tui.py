"""Inspector latency through the Textual pilot (issue 7).

- slider: a k-slider step to the redrawn token grid, 64-token prompt, bundled model; the
  engine's patched pass alone is timed in the same run, so the UI's overhead shows.
- start: `horizon inspect`'s first paint and the time until every analysis is ready, in a
  fresh process with a warm weight cache.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time

from horizon.core.model.loader import load_model
from horizon.core.model.prompts import tokenize
from horizon.core.sources.session import PatchSettings, Session
from horizon.tui.cli.common import DEFAULT_PROMPT

N_TOKENS = 64


def _session() -> Session:
    model = load_model("smollm2-135m", device="cpu")
    ids = tokenize(model, [DEFAULT_PROMPT], truncate_to=N_TOKENS)
    return Session(model, [DEFAULT_PROMPT], ids)


async def _slider_steps(session: Session, steps: int) -> tuple[list[float], list[float]]:
    from horizon.tui.app import HorizonApp
    from horizon.tui.widgets.token_grid import TokenGrid

    app = HorizonApp(session=session, background=False)
    seconds, engine = [], []
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        await app.workers.wait_for_complete()
        app.action_show_tab("horizon")
        await pilot.pause()
        grid = app.query_one("#horizon-grid", TokenGrid)
        await pilot.press("home")
        await pilot.pause(0.3)
        await app.workers.wait_for_complete()
        for _ in range(steps):
            before = list(grid.values)
            started = time.perf_counter()
            await pilot.press("right")
            # Done when the grid holds the new k's values and the screen has been repainted.
            while grid.values == before or app.pending:
                await asyncio.sleep(0.005)
            await pilot.pause()
            seconds.append(time.perf_counter() - started)
            # Side by side: the engine alone on a fresh (uncached) setting of the same cost.
            started = time.perf_counter()
            session.patch(PatchSettings(k=app.settings.k, start_layer=1))
            engine.append(time.perf_counter() - started)
    return seconds, engine


def bench_tui_slider_redraw() -> dict:
    session = _session()
    steps = 6
    redraw, engine = asyncio.run(_slider_steps(session, steps))
    median = statistics.median(redraw)
    return {
        "ratio": round(median / 1.0, 3),
        "target": 1.0,
        "redraw_median_s": round(median, 3),
        "redraw_s": [round(value, 3) for value in redraw],
        "engine_patch_median_s": round(statistics.median(engine), 3),
        "ui_overhead_s": round(median - statistics.median(engine), 3),
        "n_tokens": N_TOKENS,
    }


CHILD = r"""
import asyncio, json, sys, time
t0 = float(sys.argv[1])
from horizon.tui.app import HorizonApp
from horizon.tui.cli.inspect_cmd import session_loader
from horizon.tui.cli.common import DEFAULT_PROMPT
marks = {}
class Timed(HorizonApp):
    def on_mount(self):  # Textual also runs HorizonApp.on_mount (handlers run along the MRO)
        self.call_after_refresh(lambda: marks.setdefault("first_paint", time.time() - t0))
async def main():
    app = Timed(load=session_loader("smollm2-135m", "cpu", "float32", [DEFAULT_PROMPT], True, None, None))
    async with app.run_test(size=(120, 40)) as pilot:
        while app.session is None or app.pending:
            await asyncio.sleep(0.05)
        marks["ready"] = time.time() - t0
        marks["analyses"] = dict(app.session.timings)
asyncio.run(main())
print(json.dumps(marks))
"""


def bench_tui_start() -> dict:
    load_model("smollm2-135m", device="cpu")  # warm weight cache
    started = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, str(started)], check=True, capture_output=True, text=True)
    marks = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "ratio": round(max(marks["first_paint"] / 2.0, marks["ready"] / 15.0), 3),
        "target": 1.0,
        "first_paint_s": round(marks["first_paint"], 2),
        "ready_s": round(marks["ready"], 2),
        "analyses_s": {name: round(seconds, 2) for name, seconds in marks["analyses"].items()},
    }
