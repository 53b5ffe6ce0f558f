"""The status line: model, device, prompt length, what is pending and the last run's time."""

from __future__ import annotations

from collections.abc import Collection

from horizon.core.sources.session import PatchSettings, Source
from horizon.core.untrusted import visible
from rich.text import Text
from textual.widgets import Static


class StatusLine(Static):
    """One line at the bottom, above the footer."""

    def show(
        self, source: Source | None, prompt: int, settings: PatchSettings, *, loading_label: str,
        pending: Collection[str], failed: Collection[str], last_run: tuple[str, float] | None,
        show_timings: bool,
    ) -> None:
        text = Text()
        if source is None:
            text.append(f"loading {visible(loading_label)}…", style="bold yellow")
            self.update(text)
            return
        text.append(visible(source.label), style="bold")
        text.append(f" L={source.n_layers}", style="dim")
        text.append(f"  T={len(source.token_ids[prompt])}")
        if len(source.prompts) > 1:
            text.append(f" prompt {prompt + 1}/{len(source.prompts)}")
        s = settings
        text.append(f"  k={s.k}", style="bold")
        if s.start_layer or s.source != "recursive" or s.keep_embed or s.final != "window":
            text.append(f" S={s.start_layer} {s.source}{' +emb' if s.keep_embed else ''} {s.final}", style="dim")
        if pending:
            text.append("  ⏳ " + ",".join(sorted(pending)), style="yellow")
        elif last_run is not None:
            name, seconds = last_run
            shown = f"{seconds:.2f}s" if show_timings else "done"
            text.append(f"  {name} {shown}", style="green")
        if failed:
            text.append("  ✗ " + ",".join(sorted(failed)), style="red")
        self.update(text)
