"""The peak view in the terminal (``horizon report``), named by the registry entry's ``render``."""

from __future__ import annotations

from typing import Any

from horizon.tui.cli.common import console, number
from rich.table import Table


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
