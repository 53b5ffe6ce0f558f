"""`horizon verify`: the checks that make every other number trustworthy, on one model."""

from __future__ import annotations

from typing import Annotated

import typer
from horizon.tui.cli.app import app
from horizon.tui.cli.common import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, console, emit, load_with_status
from rich.table import Table

# The versions the table's footer names (the JSON records them all: common.emit).
STACK = (("horizon", "horizon-inspector"), ("torch", "torch"), ("transformers", "transformers"),
         ("TransformerLens", "transformer-lens"))

ReferenceOpt = Annotated[
    str,
    typer.Option(
        "--reference",
        help="fresh: compare logits with a second, independently loaded HF model (default); "
        "loaded: with the bridge's own HF modules (half the memory, a weaker check).",
    ),
]


@app.command("verify")
def verify_command(
    model: ModelOpt = "smollm2-135m",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    reference: ReferenceOpt = "fresh",
    as_json: JsonOpt = False,
) -> None:
    """Check hook sites, final norm, decomposition, logits, readout, full horizon, chunks and attention (fixed prompt).

    Exit code 1 when a check fails; the verdict is stored, and the analyses refuse a model
    whose stored verdict failed (--unverified overrides).
    """
    from horizon.core.errors import HorizonError
    from horizon.core.run.payloads import verify_payload
    from horizon.core.run.runner import Runner
    from horizon.core.sweep.sweep_settings import package_versions

    if reference not in ("fresh", "loaded"):
        raise HorizonError(f"--reference must be fresh or loaded, got {reference!r}")
    loaded = load_with_status(model, device, dtype, quiet=as_json, unverified=True)
    result = Runner(loaded).verify(reference)
    payload = verify_payload(result)

    def render() -> None:
        title = f"{result.spec} ({result.architecture}, {result.dtype}, {result.attn_implementation} attention): " + (
            "[green]verified[/]" if result.passed else "[red]FAILED[/]"
        )
        table = Table(title=title, title_justify="left")
        for column in ("check", "result", "measured", "bar", "detail"):
            table.add_column(column)
        for check in result.checks:
            verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]n/a[/]"}[check.passed]
            table.add_row(
                check.name,
                verdict,
                "-" if check.measured is None else f"{check.measured:.2e}",
                "-" if check.bar is None else f"{check.bar:g}",
                check.detail,
            )
        console.print(table)
        versions = package_versions()
        stack = ", ".join(f"{label} {versions.get(name) or 'unknown'}" for label, name in STACK)
        console.print(f"[dim]{stack}; device {loaded.device}[/]", highlight=False)

    emit(as_json, payload, render, device=loaded.device)
    if not result.passed:
        raise typer.Exit(1)
