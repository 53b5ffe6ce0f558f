"""The peak view in the terminal (``horizon report``), named by the registry entry's ``render``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from horizon.tui.cli.common import console, number
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from tests.added_analysis import PeakReport


def render_peak(view: dict[str, Any]) -> None:
    bos = "BOS excluded" if view["bos_excluded"] else "no BOS"
    table = Table(title=f"peak resid_pre norm: {view['n_prompts']} prompts ({bos})", title_justify="left",
                  show_edge=False, pad_edge=False)
    table.add_column("layer", justify="right")
    table.add_column("mean peak", justify="right")
    table.add_column("max peak", justify="right")
    for layer, (mean, highest) in enumerate(zip(view["mean_peak_norm"], view["max_peak_norm"], strict=True)):
        table.add_row(str(layer), number(mean), number(highest))
    console.print(table)


def prompt_table(report: PeakReport, prompt: int, tokens: list[str], title: str) -> Table:
    """One prompt's peaks, a row per layer (peak norm, position, token): the command's view and the pane's."""
    table = Table(title=f"{title} ({'BOS excluded' if report.has_bos else 'no BOS'})", title_justify="left",
                  show_edge=False, pad_edge=False)
    table.add_column("layer", justify="right")
    table.add_column("peak norm", justify="right")
    table.add_column("position", justify="right")
    table.add_column("token")
    for layer in range(report.n_layers):
        position = int(report.position[prompt, layer])
        token = tokens[position] if 0 <= position < len(tokens) else ""
        table.add_row(str(layer), number(float(report.peak[prompt, layer])), str(position), Text(repr(token)))
    return table
