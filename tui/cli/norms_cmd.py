"""`horizon norms`: residual-stream norm growth per layer and site, and the weight-side evidence."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import typer
from horizon.core import options
from horizon.core.analyses.norms.engine import NORM_SITES, QUANTILES, NormsReport
from horizon.core.analyses.norms.weights import check_processing
from horizon.core.errors import HorizonError
from horizon.core.run.payloads import norms_payload
from horizon.core.untrusted import markup_safe, visible
from horizon.tui.cli.app import app
from horizon.tui.cli.common import (
    BatchSizeOpt,
    BosOpt,
    BosTokenOpt,
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    Inputs,
    JsonOpt,
    MaxMemoryOpt,
    ModelOpt,
    PromptOpt,
    TruncateToOpt,
    UnverifiedOpt,
    check_memory_options,
    console,
    emit,
    prepare_inputs,
    progress_bar,
    runner_for,
)
from horizon.tui.format import grouped
from horizon.tui.format import sparkline as block_sparkline
from rich.table import Table
from rich.text import Text

IncludeBosOpt = Annotated[bool, typer.Option("--include-bos", help="Keep position 0 in the statistics.")]
FitOpt = Annotated[str | None, typer.Option(
    "--fit", help="Fit the growth rate over layers A:B (inclusive; L is the final residual). "
    "Default: the longest window whose log-norm is near a straight line.")]
WeightsOpt = Annotated[bool, typer.Option(
    "--weights", help="Add the weight analysis: OV and weight norms, MLP on random inputs, neuron activation rates.")]
ProcessingOpt = Annotated[str, typer.Option(
    "--processing", help="raw (HF weights) | tl (TransformerLens fold_ln + centring, as in the seeds).")]
ShowPromptOpt = Annotated[int, typer.Option("--show-prompt", help="Prompt (from 1) of the per-position heat table.")]

BAR_WIDTH = 16
HEAT_COLUMN_WIDTH = 6


@app.command("norms")
def norms(
    model: ModelOpt = "smollm2-135m",
    prompt: PromptOpt = None,
    file: FileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    truncate_to: TruncateToOpt = None,
    include_bos: IncludeBosOpt = False,
    fit: FitOpt = None,
    weights: WeightsOpt = False,
    processing: ProcessingOpt = "raw",
    batch_size: BatchSizeOpt = "auto",
    max_memory: MaxMemoryOpt = "auto",
    show_prompt: ShowPromptOpt = 1,
    unverified: UnverifiedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Residual-stream norms per layer and site, their growth rate, the BOS curve; --weights for weight norms."""
    # Every flag is checked before the model loads.
    fit_window = options.parse_fit(fit)
    check_processing(processing)
    memory, requested_batch = check_memory_options(max_memory, batch_size)
    options.check_at_least(show_prompt, "--show-prompt", 1)
    inputs = prepare_inputs(model, device, dtype, prompt, file, bos, bos_token, truncate_to, quiet=as_json)
    runner = runner_for(inputs, memory, requested_batch)
    plan = runner.plan("norms", inputs.token_ids)
    if show_prompt > len(inputs.token_ids):
        raise HorizonError(f"--show-prompt {show_prompt}: there are only {len(inputs.token_ids)} prompts")
    options.check_fit(fit, fit_window, inputs.model.n_layers)
    # tl processing applies to the whole run, as in the seeds (their norms are of processed models).
    with progress_bar("norms", len(inputs.token_ids), quiet=as_json) as advance:
        report = runner.norms(inputs.token_ids, inputs.has_bos, include_bos=include_bos, fit=fit_window,
                              processing=processing, plan=plan, progress=advance).result
    weight_section = None
    if weights:
        weight_section = runner.weights(inputs.token_ids, inputs.has_bos, processing, plan=plan).result
    tokens = inputs.tokens()
    payload = norms_payload(inputs.model, processing, inputs.token_ids, tokens, report, plan, weight_section)

    def render() -> None:
        render_norms(inputs, report, tokens, processing, show_prompt - 1)
        if weight_section is not None:
            render_weights(weight_section)

    emit(as_json, payload, render, device=inputs.model.device)


# ----------------------------------------------------------------------------- rich view


def sparkline(values: Sequence[float], log: bool = True) -> str:
    """The app's sparkline (tui/format.py), on a log scale by default (exponential growth reads as a ramp)."""
    return block_sparkline([math.log(v) if log and v > 0 else v for v in values])


def bar(value: float, largest: float, width: int = BAR_WIDTH) -> Text:
    filled = 0 if largest <= 0 else value / largest * width
    whole = int(filled)
    return Text("█" * whole + ("▌" if filled - whole >= 0.5 else ""), style="cyan")


def layer_label(site: str, row: int, n_layers: int) -> str:
    return "final" if site == "resid_pre" and row == n_layers else str(row)


def site_table(report: NormsReport, site: str) -> Table:
    stats = report.stats[site]
    n_rows = len(stats.mean_norm)
    largest = float(np.max(stats.mean_norm))
    title = f"{site}  {sparkline(stats.mean_norm.tolist())}"
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("layer", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("median", justify="right")
    for q in (QUANTILES[0], QUANTILES[-1]):
        table.add_column(f"p{q}", justify="right", style="dim")
    table.add_column("std", justify="right")
    if site == "resid_pre":
        table.add_column("ratio", justify="right")
        table.add_column("BOS", justify="right", style="magenta")
        table.add_column("app.1", justify="center")
    table.add_column("mean norm")
    for row in range(n_rows):
        cells = [
            layer_label(site, row, report.n_layers),
            grouped(float(stats.mean_norm[row])),
            grouped(float(stats.median_norm[row])),
            grouped(float(stats.quantiles[QUANTILES[0]][row])),
            grouped(float(stats.quantiles[QUANTILES[-1]][row])),
            grouped(float(stats.std[row])),
        ]
        if site == "resid_pre":
            start, stop = report.growth.fit_layers
            in_fit = start <= row <= stop
            ratio = report.growth.ratios[row - 1] if row > 0 else None
            cells.append("-" if ratio is None else f"[{'bold' if in_fit else 'dim'}]{ratio:.3f}[/]")
            cells.append(grouped(float(report.bos_mean_norm[row])) if report.bos_mean_norm is not None else "-")
            if row < report.n_layers:
                cells.append("[green]ok[/]" if report.appendix1["holds"][row] else "[red]FAIL[/]")
            else:
                cells.append("")
        table.add_row(*cells, bar(float(stats.mean_norm[row]), largest))
    return table


def heat_table(report: NormsReport, tokens: list[str], prompt: int) -> Table:
    """resid_pre norms of one prompt, layers x positions, coloured by log norm per table."""
    matrix = report.norms["resid_pre"][prompt]  # [L+1, T]
    n_positions = matrix.shape[1]
    fits = max(4, (console.width - 8) // (HEAT_COLUMN_WIDTH + 1))
    shown = min(n_positions, fits)
    logs = np.log(np.maximum(matrix[:, :shown], 1e-12))
    # The colour range comes from the real tokens: BOS norms can be 100x larger and would flatten it.
    first = 1 if report.has_bos and shown > 1 else 0
    low, high = float(logs[:, first:].min()), float(logs[:, first:].max())
    span = high - low or 1.0
    caption = f"positions 0-{shown - 1} of {n_positions}"
    if shown < n_positions:
        caption += " (widen the terminal for more)"
    table = Table(title=f"resid_pre norm per position, prompt {prompt + 1}", title_justify="left", caption=caption,
                  caption_justify="left", show_edge=False, pad_edge=False, padding=(0, 0), collapse_padding=True)
    table.add_column("layer", justify="right")
    for position in range(shown):
        label = visible(tokens[position].replace("\n", "\\n")).strip() or repr(tokens[position])
        table.add_column(Text(label[:HEAT_COLUMN_WIDTH], style="bold"), justify="right", width=HEAT_COLUMN_WIDTH)
    for row in range(matrix.shape[0]):
        cells: list[str | Text] = [layer_label("resid_pre", row, report.n_layers)]
        for position in range(shown):
            level = min(1.0, max(0.0, (logs[row, position] - low) / span))
            # Blue (small) through yellow to red (large): a perceptual ramp on a log scale.
            red = int(40 + 215 * min(1.0, 2 * level))
            green = int(80 + 150 * (1 - abs(2 * level - 1)))
            blue = int(220 * max(0.0, 1 - 2 * level))
            cells.append(Text(grouped(float(matrix[row, position])), style=f"black on rgb({red},{green},{blue})"))
        table.add_row(*cells)
    return table


def render_norms(inputs: Inputs, report: NormsReport, tokens: list[list[str]], processing: str, prompt: int) -> None:
    model = inputs.model
    console.print(
        f"[bold]{markup_safe(model.spec)}[/]  {model.n_layers} layers, d_model {model.d_model}, weights {processing}; "
        f"{len(inputs.token_ids)} prompt(s), {report.n_positions} positions in the statistics "
        f"({'BOS included' if report.include_bos or not report.has_bos else 'BOS excluded'})"
    )
    growth = report.growth
    how = "your --fit" if growth.chosen == "user" else "longest near-straight log-norm window"
    console.print(f"growth: [bold green]{growth.describe()}[/]  [dim]({how}; rms log deviation "
                  f"{growth.rms_residual:.3f})[/]")
    if report.bos_mean_norm is not None:
        console.print(f"BOS position resid_pre norm: {sparkline(report.bos_mean_norm.tolist())}  "
                      f"[dim](layer 0 to final; excluded from the statistics)[/]")
    failures = [index for index, holds in enumerate(report.appendix1["holds"]) if not holds]
    console.print(
        "appendix 1 (||attn_out|| + ||mlp_out|| >= (g-1) ||resid_pre||): "
        + ("[green]holds at every layer[/]" if not failures else f"[red]fails at layers {failures}[/]")
    )
    console.print()
    for site in NORM_SITES:
        if site in report.absent:  # said, not drawn: no number stands in for a site the model lacks
            console.print(f"[bold]{site}[/]  [yellow]none in this model[/] [dim]({report.absent[site]})[/]")
        else:
            console.print(site_table(report, site))
        console.print()
    console.print(heat_table(report, tokens[prompt], prompt))


def render_weights(section: dict[str, Any]) -> None:
    ov = np.asarray(section["W_OV_frobenius"])
    n_layers = ov.shape[0]
    console.print()
    attention = Table(title=f"attention weights ({section['processing']}): Frobenius norms", title_justify="left",
                      show_edge=False, pad_edge=False)
    attention.add_column("layer", justify="right")
    attention.add_column("W_OV mean", justify="right")
    attention.add_column("min", justify="right", style="dim")
    attention.add_column("max", justify="right", style="dim")
    attention.add_column("heads")
    present = [name for name in ("W_Q", "W_K", "W_V", "W_O", "b_O") if section.get(name) is not None]
    for name in present:
        attention.add_column(name, justify="right")
    for layer in range(n_layers):
        heads = ov[layer]
        attention.add_row(str(layer), grouped(float(heads.mean())), grouped(float(heads.min())),
                          grouped(float(heads.max())),
                          sparkline(heads.tolist(), log=False), *[grouped(section[name][layer]) for name in present])
    console.print(attention)
    console.print()
    mlp = Table(title=f"MLP weights ({section['processing']}) and neuron activation rate ({section['kind']} > 0)",
                title_justify="left", show_edge=False, pad_edge=False)
    mlp.add_column("layer", justify="right")
    present = [name for name in ("W_in", "W_gate", "W_out") if section.get(name) is not None]
    for name in present:
        mlp.add_column(name, justify="right")
    mlp.add_column("MLP(random)", justify="right")
    rate_keys = {"real": "neuron_rate_real", "random": "neuron_rate_random", "resampled": "neuron_rate_resampled"}
    for label in rate_keys:
        mlp.add_column(label, justify="right")
    for layer in range(n_layers):
        rates = [section[key][layer] if section[key] is not None else None for key in rate_keys.values()]
        mlp.add_row(str(layer), *[grouped(section[name][layer]) for name in present],
                    grouped(section["mlp_out_random"][layer]),
                    *["-" if rate is None else f"{rate:.3f}" for rate in rates])
    console.print(mlp)
    console.print(f"mean W_OV per layer {sparkline(ov.mean(axis=1).tolist())}   "
                  f"MLP on random inputs {sparkline(section['mlp_out_random'])}   "
                  f"[dim](log scale; {section['n_random']} standardised N(0,1) inputs)[/]")
