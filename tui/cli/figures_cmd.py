"""`horizon figures`: every figure the inputs allow, as publication figures plus an index.html.

Inputs are results directories (read as `report` reads them: no model, no torch) and/or a live
model run (``--model`` with ``--prompt``/``--file``: the norms and weight analyses of
`horizon norms --weights`, which give the figures a results directory cannot: the weights').
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from horizon.core.errors import HorizonError
from horizon.tui.cli.app import app
from horizon.tui.cli.common import (
    BosOpt,
    BosTokenOpt,
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    PromptOpt,
    TruncateToOpt,
    UnverifiedOpt,
    console,
    warn,
)
from horizon.tui.cli.compare_cmd import FormatOpt, XOpt, build_figures, figures_module


def _live_input(model: str, device: str, dtype: str, prompt: str | None, file: str | None, bos: bool,
                bos_token: str | None, truncate_to: int | None) -> Any:
    from horizon.core.sources.compare import live_figure_input
    from horizon.tui.cli.common import prepare_inputs, runner_for

    inputs = prepare_inputs(model, device, dtype, prompt, file, bos, bos_token, truncate_to)
    runner = runner_for(inputs, None, None)  # the automatic memory budget, as every command's default
    report = runner.norms(inputs.token_ids, inputs.has_bos).result
    weights = runner.weights(inputs.token_ids, inputs.has_bos).result
    return live_figure_input(inputs.model.spec, report, inputs.tokens(), weights)


@app.command("figures")
def figures_command(
    directories: Annotated[list[str] | None, typer.Argument(help="Results directories written by horizon sweep.")]
    = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for the figures and index.html (created).")]
    = "horizon-figures",
    fmt: FormatOpt = "svg",
    x: XOpt = "layer",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also run this model live (norms and weights) "
                                              "on --prompt/--file.")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    prompt: PromptOpt = None,
    file: FileOpt = None,
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    truncate_to: TruncateToOpt = None,
    unverified: UnverifiedOpt = False,
) -> None:
    """Write every figure the inputs allow (svg, png or pdf) and an index.html showing them all."""
    from horizon.core.sources import compare
    from horizon.tui.figures import FORMATS, X_AXES

    if x not in X_AXES:
        raise HorizonError(f"--x {x!r}: choose one of {', '.join(X_AXES)}")
    if fmt not in FORMATS:
        raise HorizonError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not directories and model is None:
        raise HorizonError("give results directories, or --model (with --prompt or --file) for a live run")
    if model is None and (prompt is not None or file is not None):
        raise HorizonError("--prompt and --file need --model (results directories hold their own prompts)")
    export = figures_module()
    loaded = compare.load_all(directories) if directories else []
    lives = []
    if model is not None:
        live = _live_input(model, device, dtype, prompt, file, bos, bos_token, truncate_to)
        if any(item.label == live.label for item in loaded):  # the same model from a directory: keep both apart
            live.label = f"{live.label} (live)"
        lives.append(live)
    figures, skipped = build_figures(export, loaded, lives, x)
    written = export.export(figures, skipped, out, fmt)
    for line in compare.duplicates(loaded):
        warn(line)
    for item in loaded:
        for problem in item.problems:
            warn(f"{item.path}: {problem}")
    for name, reason in skipped:
        warn(f"{name} not drawn: {reason}", "note")
    console.print(f"{len(written) - 1} figure(s) and index.html written to {written[-1].parent}",
                  markup=False, highlight=False)
