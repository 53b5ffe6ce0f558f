"""`horizon attention`: how far back does each head look? (seed 003, beside `horizon truncate`)"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import typer
from horizon.core import options
from horizon.core.analyses.attention.engine import BUCKETS, AttentionReport
from horizon.core.model.loader import DEFAULT_MODEL
from horizon.core.run.payloads import report_payload
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
    prepare_inputs,
    progress_bar,
    runner_for,
)
from rich.table import Table
from rich.text import Text


def _heat_style(value: float, high: float) -> str:
    """Local heads cool (blue), long-range heads warm (red), on a log scale up to ``high``."""
    if value is None or not np.isfinite(value):
        return "dim"
    share = float(np.clip(np.log1p(value) / np.log1p(max(high, 1e-9)), 0.0, 1.0))
    red, blue = int(40 + 200 * share), int(40 + 200 * (1 - share))
    return f"white on rgb({red},40,{blue})"


def render_attention(report: AttentionReport, top: int) -> None:
    console.print(
        f"[bold]attention distance[/] · {markup_safe(report.model)} · {report.n_layers} layers × "
        f"{report.n_heads} query heads · "
        f"{report.n_queries} query positions (t >= 1)"
    )
    values = report.mean_distance_no_bos
    high = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    title = "mean attention distance per head" + (", BOS column removed" if report.has_bos else "")
    heat = Table(title=title, title_justify="left")
    heat.add_column("layer", justify="right")
    for head in range(report.n_heads):
        heat.add_column(f"h{head}", justify="right")
    heat.add_column("mean", justify="right")
    for layer in range(report.n_layers):
        cells = [Text(number(values[layer, head], 1), style=_heat_style(values[layer, head], high))
                 for head in range(report.n_heads)]
        heat.add_row(report.layer_label(layer), *cells, number(float(np.nanmean(values[layer])), 1))
    console.print(heat)

    ranked = report.ranked(no_bos=True)
    for title, heads in (("most local heads", ranked[:top]), ("most long-range heads", ranked[::-1][:top])):
        table = Table(title=f"{title} (BOS removed)", title_justify="left")
        for column in ("layer", "head", "mean dist", *(f"mass {b}" for b in BUCKETS), "dist with BOS"):
            table.add_column(column, justify="right")
        for layer, head, distance in heads:
            table.add_row(report.layer_label(layer), str(head), number(distance, 1),
                          *[number(report.mass_no_bos[b][layer, head]) for b in BUCKETS],
                          number(report.mean_distance[layer, head], 1))
        console.print(table)


@app.command("attention")
def attention(
    model: ModelOpt = DEFAULT_MODEL,
    prompt: PromptOpt = None,
    file: FileOpt = None,
    batch_size: BatchSizeOpt = "auto",
    max_memory: MaxMemoryOpt = "auto",
    top: Annotated[int, typer.Option("--top", help="Heads listed in the most-local / most-long-range views.")] = 8,
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    truncate_to: TruncateToOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    unverified: UnverifiedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Per head: how far back does attention look? Mean distance and mass at 0, 1-5, 6-10, >10 tokens."""
    memory, requested_batch = check_memory_options(max_memory, batch_size)
    options.check_count(top, "--top")
    inputs = prepare_inputs(model, device, dtype, prompt, file, bos, bos_token, truncate_to, quiet=as_json)
    runner = runner_for(inputs, memory, requested_batch)
    plan = runner.plan("attention", inputs.token_ids)
    with progress_bar("attention", len(inputs.token_ids), quiet=as_json) as advance:
        report = runner.attention(inputs.token_ids, inputs.has_bos, plan=plan, progress=advance).result
    payload = report_payload(inputs.model, inputs.token_ids, report, plan)
    emit(as_json, payload, lambda: render_attention(report, top), device=inputs.model.device)
