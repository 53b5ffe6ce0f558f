"""The help screen (?): every metric in one line (docs/SCIENCE.md) and every key."""

from __future__ import annotations

from typing import ClassVar

from horizon.tui.keys import help_rows
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

METRICS = (
    ("cosine", "mean-centred cosine between the residual of [BOS]+last c tokens and the full-prompt residual "
               "at that layer (both minus the mean residual mu_l)"),
    ("norm", "L2 norm over d_model of the residual (resid_pre_l; row L = final residual), BOS excluded from stats"),
    ("growth", "g_i = mean norm(resid_pre_{i+1}) / mean norm(resid_pre_i); rate = exp(slope) of log mean norm"),
    ("Δloss", "cross-entropy increase of next-token prediction when every sublayer reads only the last k "
              "layers' outputs (horizon K = 2k sublayers)"),
    ("KL", "KL(clean || patched) of the next-token distribution, per token and mean"),
    ("top-1", "fraction of positions where the patched and clean top-1 predictions agree"),
    ("eff. horizon", "smallest k whose loss increase is <= tol"),
    ("distance", "attention mean distance sum_s A[t,s](t-s), averaged over queries t>=1; "
                 "'no BOS' drops the BOS column and renormalises"),
)

KEYS = help_rows()  # from the one key table (tui/keys.py)


def help_text() -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    table.add_row(Text("Metrics", style="bold underline"),
                  Text("exact definitions: docs/SCIENCE.md in the repository", style="dim"))
    for name, line in METRICS:
        table.add_row(name, Text(line))
    table.add_row("", "")
    table.add_row(Text("Keys", style="bold underline"), "")
    for key, line in help_rows():  # when drawn: an analysis registered since brings its pane's key
        table.add_row(key, Text(line))
    table.add_row("", "")
    table.add_row("", Text("Token colour for Δloss/KL is that of the predicted token (position t+1). "
                           "Grey cells: no value (BOS, or t-c < 1).", style="dim"))
    return table


class HelpScreen(ModalScreen[None]):
    """Metrics and keys; any of esc, q, ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(Text("horizon inspect: help", style="bold"), id="help-title")
            yield Static(help_text(), id="help-body")
