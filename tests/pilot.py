"""Waiting for the app under a Textual pilot: the one ``settle`` every app test uses.

A fixed pause is not enough on a loaded machine: the slider's debounce timer may not have fired
yet when the pause ends, and then no worker is running to wait for. So wait until no debounced
pass is scheduled, then for every worker, then for the redraw.
"""

from __future__ import annotations

from typing import Any

from horizon.tui.app import HorizonApp


async def settle(app: HorizonApp, pilot: Any) -> None:
    await pilot.pause()
    while app.patch_scheduled:
        await pilot.pause(0.05)
    await app.workers.wait_for_complete()
    await pilot.pause()
