"""The status line: model, device, prompt length, what is pending and the last run's time."""

from __future__ import annotations

from typing import Any

from horizon.core.untrusted import visible
from rich.text import Text
from textual.widgets import Static


class StatusLine(Static):
    """One line at the bottom, above the footer."""

    def show(self, app: Any) -> None:
        text = Text()
        session = app.session
        if session is None:
            text.append(f"loading {visible(app.loading_label)}…", style="bold yellow")
            self.update(text)
            return
        text.append(visible(session.label), style="bold")
        text.append(f" L={session.n_layers}", style="dim")
        text.append(f"  T={len(session.token_ids[app.prompt_index])}")
        if len(session.prompts) > 1:
            text.append(f" prompt {app.prompt_index + 1}/{len(session.prompts)}")
        s = app.settings
        text.append(f"  k={s.k}", style="bold")
        if s.start_layer or s.source != "recursive" or s.keep_embed or s.final != "window":
            text.append(f" S={s.start_layer} {s.source}{' +emb' if s.keep_embed else ''} {s.final}", style="dim")
        if app.pending:
            text.append("  ⏳ " + ",".join(sorted(app.pending)), style="yellow")
        elif app.last_run is not None:
            name, seconds = app.last_run
            shown = f"{seconds:.2f}s" if app.show_timings else "done"
            text.append(f"  {name} {shown}", style="green")
        if app.failed:
            text.append("  ✗ " + ",".join(sorted(app.failed)), style="red")
        self.update(text)
