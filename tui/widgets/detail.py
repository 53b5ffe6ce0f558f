"""The detail pane of one selected token: category, context and its per-layer curves."""

from __future__ import annotations

from dataclasses import dataclass, field

from horizon.core.untrusted import visible
from horizon.tui.format import fmt, sparkline
from horizon.tui.widgets.token_grid import visible_token
from rich.text import Text
from textual.widgets import Static


@dataclass
class TokenDetail:
    """What the pane shows; every number comes from an engine report."""

    index: int
    token: str
    category: str
    before: str
    after: str
    cos_by_length: dict[int, list[float | None]] = field(default_factory=dict)
    norms: list[float | None] = field(default_factory=list)
    loss_increase: float | None = None
    kl: float | None = None
    k: int | None = None
    layer: int | None = None


class DetailPane(Static):
    """Shows a TokenDetail; empty until a token is selected."""

    detail: TokenDetail | None = None

    def show(self, detail: TokenDetail | None) -> None:
        self.detail = detail
        self.update(self.describe(detail))

    @staticmethod
    def describe(detail: TokenDetail | None) -> Text:
        if detail is None:
            return Text("select a token\n(arrows or click)", style="dim")
        text = Text()
        text.append(f"#{detail.index} ", style="dim")
        text.append(visible_token(detail.token), style="bold reverse")
        text.append(f"  {detail.category}\n", style="italic")
        context = Text("…" + visible(detail.before[-40:].replace("\n", "↵")), style="dim")
        context.append(visible(detail.token.replace("\n", "↵")), style="bold underline")
        context.append(visible(detail.after[:24].replace("\n", "↵")) + "…", style="dim")
        text.append_text(context)
        text.append("\n\n")
        text.append("cosine by layer", style="bold")
        if detail.layer is not None:
            text.append(f" (at layer {detail.layer})", style="dim")
        text.append("\n")
        for length, values in detail.cos_by_length.items():
            here = values[detail.layer] if detail.layer is not None and detail.layer < len(values) else None
            text.append(f"c={length:<3}", style="dim")
            if all(value is None for value in values):
                text.append("n/a (t-c < 1)\n", style="dim")
                continue
            text.append(sparkline(values, 0.0, 1.0), style="cyan")
            text.append(f" {fmt(here, 2)}\n")
        text.append("norm  ", style="dim")
        if detail.norms:
            here = detail.norms[detail.layer] if detail.layer is not None and detail.layer < len(detail.norms) else None
            text.append(sparkline(detail.norms), style="green")
            text.append(f" {fmt(here)}\n")
        else:
            text.append("pending\n", style="dim")
        label = f"k={detail.k}" if detail.k is not None else "horizon"
        text.append(f"{label} Δloss ", style="dim")
        text.append(fmt(detail.loss_increase))
        text.append("  KL ", style="dim")
        text.append(fmt(detail.kl))
        return text
