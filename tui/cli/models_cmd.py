"""`horizon models`: what can be loaded, and whether it is available on this machine."""

from __future__ import annotations

from dataclasses import asdict

from horizon.core.model.loader import list_models
from horizon.tui.cli.app import app
from horizon.tui.cli.common import JsonOpt, console, emit
from rich.table import Table


@app.command("models")
def models(as_json: JsonOpt = False) -> None:
    """List model specs: architecture, size, where each loads from, and whether it is available here."""
    infos = list_models()
    payload = {"models": [asdict(info) for info in infos]}

    def render() -> None:
        table = Table(title="models", title_justify="left")
        for column in ("name", "architecture", "layers", "d_model", "available", "source"):
            table.add_column(column)
        for info in infos:
            table.add_row(
                info.name,
                info.architecture,
                str(info.n_layers),
                str(info.d_model),
                "[green]yes[/]" if info.available else "[red]no[/]",
                info.source + (f"\n[dim]{info.note}[/]" if info.note else ""),
            )
        console.print(table)

    emit(as_json, payload, render)
