"""`horizon patch` and `horizon scan`: the effective layer horizon (seed 000, docs/SCIENCE.md section 3)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from horizon.core import options
from horizon.core.analyses.scan.engine import ByLayerResult, ScanResult, default_ks
from horizon.core.errors import HorizonError
from horizon.core.model.loader import DEFAULT_MODEL
from horizon.core.patching.horizon import DEFAULT_TOL, HorizonConfig, PatchResult, horizon_sublayers
from horizon.core.run.payloads import patch_payload, scan_payload
from horizon.core.untrusted import markup_safe
from horizon.tui.cli.app import app
from horizon.tui.cli.common import (
    BatchSizeOpt,
    BosOpt,
    BosTokenOpt,
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    JsonOpt,
    MaxMemoryOpt,
    ModelOpt,
    PromptOpt,
    TruncateToOpt,
    UnverifiedOpt,
    check_memory_options,
    console,
    emit,
    number,
    parse_int_list,
    prepare_inputs,
    progress_bar,
    runner_for,
)
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 30

KOpt = Annotated[int, typer.Option("--k", help="Horizon in layers (K = 2k sublayers); sublayers with --unit sublayer.")]
UnitOpt = Annotated[str, typer.Option("--unit", help="What --k counts: layer (K = 2k) | sublayer (K = k).")]
SourceOpt = Annotated[
    str, typer.Option("--source", help="recursive: windows sum this patched pass's outputs; clean: the clean run's.")
]
KeepEmbedOpt = Annotated[bool, typer.Option("--keep-embed", help="Always add the embedding s_0 to the window.")]
FinalOpt = Annotated[str, typer.Option("--final", help="Unembedding reads the window or the full residual.")]
StartLayerOpt = Annotated[
    int | None,
    typer.Option("--start-layer", help="Enforce only on readers in layers >= S (final readout = layer L; default 0)."),
]
AblationOpt = Annotated[
    str, typer.Option("--ablation", help="Outputs outside the window count as zero, or as their clean means (mean).")
]
OnlyLayerOpt = Annotated[
    str | None,
    typer.Option("--only-layer", help="Enforce the horizon at this layer's readers only: N in 0..L, or final."),
]
ByLayerOpt = Annotated[
    bool, typer.Option("--by-layer", help="Also the layer x k matrix: the horizon enforced at each layer N alone.")
]
KsOpt = Annotated[str | None, typer.Option("--ks", help="Horizons k to scan (default 1..L+1; 1..2L+1 in sublayers).")]
StartLayersOpt = Annotated[
    str | None, typer.Option("--start-layers", help="Start layers S, e.g. 0,5,10 (the seed's confounder control).")
]
TolOpt = Annotated[float, typer.Option("--tol", help="Effective horizon: smallest k with loss increase <= tol (nats).")]


def _bar(value: float, scale: float) -> Text:
    """A bar proportional to a loss increase (negative increases get an empty bar)."""
    filled = 0 if scale <= 0 else round(BAR_WIDTH * max(0.0, min(value, scale)) / scale)
    return Text("█" * filled + "·" * (BAR_WIDTH - filled), style="red" if filled else "dim")


@app.command("patch")
def patch_command(
    k: KOpt,
    unit: UnitOpt = "layer",
    source: SourceOpt = "recursive",
    keep_embed: KeepEmbedOpt = False,
    final: FinalOpt = "window",
    start_layer: StartLayerOpt = None,
    only_layer: OnlyLayerOpt = None,
    ablation: AblationOpt = "zero",
    model: ModelOpt = DEFAULT_MODEL,
    prompt: PromptOpt = None,
    file: FileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    truncate_to: TruncateToOpt = None,
    batch_size: BatchSizeOpt = "auto",
    max_memory: MaxMemoryOpt = "auto",
    unverified: UnverifiedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """One forward pass with an enforced horizon: loss, its increase, KL and top-1 agreement vs the clean run."""
    options.check_horizon_choices(unit, source, final)
    options.check_ablation(ablation)
    options.check_only_layer(only_layer, start_layer_given=start_layer is not None)
    start = start_layer or 0
    HorizonConfig.from_unit(k, unit, source=source, keep_embed=keep_embed, final=final, start_layer=start,
                            ablation=ablation)
    memory, requested_batch = check_memory_options(max_memory, batch_size)
    inputs = prepare_inputs(model, device, dtype, prompt, file, bos, bos_token, truncate_to, quiet=as_json)
    options.check_k(k, inputs.model.n_layers, unit)
    options.check_start_layer(start, inputs.model.n_layers)
    layer = options.check_only_layer(only_layer, inputs.model.n_layers)
    config = HorizonConfig.from_unit(k, unit, source=source, keep_embed=keep_embed, final=final, start_layer=start,
                                     ablation=ablation, only_layer=layer)
    runner = runner_for(inputs, memory, requested_batch)
    plan = runner.plan("patch", inputs.token_ids)
    result = runner.patch(inputs.token_ids, config, has_bos=bos, plan=plan).result
    payload = patch_payload(inputs.model, inputs.token_ids, k, unit, result, plan)
    emit(as_json, payload, lambda: _render_patch(inputs, result, k, unit), device=inputs.model.device)


def _render_patch(inputs: Any, result: PatchResult, k: int, unit: str) -> None:
    config = result.config
    n_layers = inputs.model.n_layers
    where = f"start layer {config.start_layer}" if config.only_layer is None else _where(config.only_layer, n_layers)
    console.print(
        f"[bold]horizon patch[/] {markup_safe(inputs.model.spec)} ({n_layers} layers): k = {k} {unit}(s), K = "
        f"{config.horizon_sublayers} sublayers, source {config.source}, final {config.final}, {where}"
        f", {config.ablation} ablation{', embedding kept' if config.keep_embed else ''}"
    )
    if config.first_patched_reader(n_layers) is None:
        console.print("[dim]the window never bites here (K >= 2L+1, a start layer > L, or a window that still "
                      "reaches the embedding at the only layer): this is the clean model[/]")
    table = Table(show_header=True, header_style="bold")
    for column in ("loss clean", "loss patched", "Δ loss", "KL(clean‖patched)", "top-1 agreement"):
        table.add_column(column, justify="right")
    table.add_row(number(result.loss_clean), number(result.loss_patched), f"{result.delta_loss:+.3f}",
                  number(result.kl, 4), f"{result.top1_agreement:.1%}")
    console.print(table)
    if len(inputs.token_ids) == 1:
        tokens = inputs.tokens()[0]
        worst = sorted(range(len(result.per_token_kl[0])), key=lambda t: -result.per_token_kl[0][t])[:8]
        detail = Table(title="largest KL predictions", title_justify="left", header_style="bold")
        for column in ("pos", "context → next", "loss clean", "loss patched", "KL"):
            detail.add_column(column, justify="right" if column != "context → next" else "left")
        for t in worst:
            context = "".join(tokens[max(0, t - 5) : t + 1]).replace("\n", "⏎")
            detail.add_row(str(t), markup_safe(f"{context!r} → {tokens[t + 1]!r}"),
                           number(result.per_token_loss_clean[0][t]), number(result.per_token_loss_patched[0][t]),
                           number(result.per_token_kl[0][t], 4))
        console.print(detail)
    console.print(f"[dim]{result.n_tokens} next-token predictions (positions 0..T-2) over "
                  f"{len(inputs.token_ids)} prompt(s)[/]")


def _where(layer: int, n_layers: int) -> str:
    return "the final readout only" if layer == n_layers else f"layer {layer} only"


@app.command("scan")
def scan_command(
    ks: KsOpt = None,
    start_layers: StartLayersOpt = None,
    tol: TolOpt = DEFAULT_TOL,
    unit: UnitOpt = "layer",
    source: SourceOpt = "recursive",
    keep_embed: KeepEmbedOpt = False,
    final: FinalOpt = "window",
    ablation: AblationOpt = "zero",
    by_layer: ByLayerOpt = False,
    model: ModelOpt = DEFAULT_MODEL,
    prompt: PromptOpt = None,
    file: FileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    truncate_to: TruncateToOpt = None,
    batch_size: BatchSizeOpt = "auto",
    max_memory: MaxMemoryOpt = "auto",
    unverified: UnverifiedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Loss increase, KL and top-1 for every enforced horizon k, and the effective layer horizon at --tol."""
    options.check_horizon_choices(unit, source, final)
    options.check_ablation(ablation)
    if by_layer and start_layers is not None:
        raise HorizonError("--by-layer and --start-layers are exclusive: the matrix enforces the horizon at one "
                           "layer at a time")
    k_list = parse_int_list(ks, "--ks", minimum=1) if ks is not None else None
    layer_list = parse_int_list(start_layers or "0", "--start-layers", minimum=0)
    tol = options.check_tol(tol)
    memory, requested_batch = check_memory_options(max_memory, batch_size)
    inputs = prepare_inputs(model, device, dtype, prompt, file, bos, bos_token, truncate_to, quiet=as_json)
    n_layers = inputs.model.n_layers
    options.check_ks(k_list, n_layers, unit)
    options.check_start_layers(layer_list, n_layers)
    n_ks = len(dict.fromkeys(k_list or default_ks(n_layers, unit)))
    n_rows = n_ks * len(dict.fromkeys(layer_list)) + (n_ks * (n_layers + 1) if by_layer else 0)
    runner = runner_for(inputs, memory, requested_batch)
    plan = runner.plan("scan", inputs.token_ids)
    # One set of clean runs for the curve and the matrix (and the prompts' own means for --ablation mean),
    # kept when the budget has room for them all, else made batch by batch as each pass needs them (and
    # position chunk by position chunk when even one prompt's whole run would not fit).
    cleans = runner.clean_runs(inputs.token_ids, has_bos=bos, plan=plan)
    settings = {"unit": unit, "source": source, "keep_embed": keep_embed, "final": final, "ablation": ablation}
    common = {"ks": k_list, "tol": tol, **settings, "plan": plan, "cleans": cleans}
    matrix: ByLayerResult | None = None
    with progress_bar("scan", n_rows, quiet=as_json) as advance:
        result = runner.scan(inputs.token_ids, start_layers=layer_list, progress=advance, **common).result
        if by_layer:
            matrix = runner.by_layer(inputs.token_ids, progress=advance, **common).result
    payload = scan_payload(inputs.model, inputs.token_ids, result, settings, plan, matrix)

    def render() -> None:
        _render_scan(inputs, result, source, keep_embed, final, ablation)
        if matrix is not None:
            render_by_layer(matrix)

    emit(as_json, payload, render, device=inputs.model.device)


def _render_scan(inputs: Any, result: ScanResult, source: str, keep_embed: bool, final: str, ablation: str) -> None:
    n_layers = inputs.model.n_layers
    console.print(
        f"[bold]horizon scan[/] {markup_safe(inputs.model.spec)} ({n_layers} layers): loss vs enforced horizon, "
        f"k in {result.unit}s, source {source}, final {final}, {ablation} ablation"
        f"{', embedding kept' if keep_embed else ''}"
    )
    console.print(f"clean loss [bold]{result.loss_clean:.3f}[/] nats over {result.n_tokens} next-token predictions "
                  f"({len(inputs.token_ids)} prompt(s))")
    scale = max([row["delta_loss"] for row in result.rows] + [result.tol])
    for start_layer, horizon in result.effective_horizon.items():
        rows = [row for row in result.rows if row["start_layer"] == start_layer]
        table = Table(title=f"start layer {start_layer}", title_justify="left", header_style="bold")
        for column in ("k", "K", "loss", "Δ loss", "", "KL", "top-1"):
            table.add_column(column, justify="left" if column == "" else "right")
        for row in rows:
            marker = " ◀" if row["k"] == horizon else ""
            style = "bold green" if row["k"] == horizon else None
            table.add_row(str(row["k"]), str(row["K"]), number(row["loss"]), f"{row['delta_loss']:+.3f}{marker}",
                          _bar(row["delta_loss"], scale), number(row["kl"], 4), f"{row['top1_agreement']:.0%}",
                          style=style)
        console.print(table)
    for start_layer, horizon in result.effective_horizon.items():
        where = f"start layer {start_layer}"
        if horizon is None:
            console.print(f"effective horizon ({where}): [red]none[/] of the scanned k keeps the loss increase "
                          f"<= {result.tol:g} nats")
        else:
            sublayers = horizon_sublayers(horizon, result.unit)
            console.print(f"effective horizon ({where}): [bold green]k = {horizon}[/] {result.unit}(s) "
                          f"(K = {sublayers} sublayers) at tol {result.tol:g} nats")
    console.print("[dim]readers in layers below the start layer always see the full residual stream; "
                  "for start layer 0, layers < k are unaffected by horizon k (the seed's confounder)[/]")


def _cell(value: float) -> str:
    """A loss increase in at most 4 characters: 0, .31, -.02, 2.1, 12."""
    if abs(value) < 0.005:
        return "0"
    if abs(value) < 1:
        return f"{value:.2f}".replace("0.", ".", 1)
    return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"


def _heat(value: float, scale: float) -> str:
    """Background for a loss increase: white to red up to ``scale``, blue below zero."""
    if abs(value) < 0.005 or scale <= 0:
        return "dim"
    share = min(1.0, abs(value) / scale) ** 0.5
    level = round(60 + 150 * share)
    colour = f"rgb({level},40,40)" if value > 0 else f"rgb(40,60,{level})"
    return f"white on {colour}"


def render_by_layer(matrix: ByLayerResult) -> None:
    n_layers = matrix.layers[-1]
    console.print(
        f"[bold]the horizon at one layer[/]: loss increase (nats) with the horizon enforced at layer N only "
        f"(rows; N = {n_layers} is the final readout), k in {matrix.unit}s (columns), {matrix.ablation} ablation"
    )
    table = Table(header_style="bold", box=None, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("N", justify="right")
    for k in matrix.ks:
        table.add_column(str(k), justify="right", min_width=3)
    table.add_column("eff. k", justify="right", style="bold green")
    scale = max([cell for row in matrix.delta_loss for cell in row] + [matrix.tol])
    for layer, row, horizon in zip(matrix.layers, matrix.delta_loss, matrix.effective_horizon, strict=True):
        cells = []
        for k, value in zip(matrix.ks, row, strict=True):
            unchanged = matrix.unit == "layer" and k > layer  # the windows still reach the embedding
            text = Text("·" if unchanged else _cell(value), style="dim" if unchanged else _heat(value, scale))
            if k == horizon:
                text.stylize("bold underline")
            cells.append(text)
        label = "final" if layer == n_layers else str(layer)
        table.add_row(label, *cells, "-" if horizon is None else str(horizon))
    console.print(table)
    console.print(f"[dim]eff. k: the smallest k of the row with loss increase <= {matrix.tol:g} nats (underlined); "
                  "· : k > N, the window still reaches the embedding, so the cell is the clean run[/]")
