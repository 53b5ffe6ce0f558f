"""`horizon truncate`: do early layers specialise in local processing? (seed 003; `horizon attention` is beside it)"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import typer
from horizon.core import options
from horizon.core.analyses.truncate.categories import CATEGORIES
from horizon.core.analyses.truncate.engine import TruncationReport, layer_labels, n_truncations
from horizon.core.errors import HorizonError
from horizon.core.model.loader import DEFAULT_MODEL
from horizon.core.run.payloads import report_payload
from horizon.core.untrusted import markup_safe, visible
from horizon.tui.cli.app import app
from horizon.tui.cli.common import (
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

LENGTH_COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta")
BAR_WIDTH = 32

LengthsOpt = Annotated[str, typer.Option("--lengths", help="Truncation lengths c (tokens kept, current one included).")]
BatchOpt = Annotated[str, typer.Option(
    "--batch-size", help="Truncated prompts per forward pass: auto (as many as fit --max-memory) or N.")]
OutliersOpt = Annotated[int, typer.Option("--outliers", help="How many lowest-cosine tokens to list.")]
OutlierLayerOpt = Annotated[
    int | None,
    typer.Option("--outlier-layer", help="Rank outliers by their cosine at this row (0..L, L = final); "
                                          "default: each token's lowest cosine over all rows."),
]
CategoryLengthOpt = Annotated[
    int | None, typer.Option("--category-length", help="Length shown in the per-category table (default: the longest).")
]


def _dot_bar(values: list[float], low: float) -> Text:
    """One row of a dot plot on [low, 1]: a coloured marker per length, where its median sits."""
    cells = ["·"] * BAR_WIDTH
    styles = ["dim"] * BAR_WIDTH
    for index, value in enumerate(values):
        if value is None or not np.isfinite(value):
            continue
        where = round((min(max(value, low), 1.0) - low) / (1.0 - low) * (BAR_WIDTH - 1))
        cells[where] = "●"
        styles[where] = LENGTH_COLOURS[index % len(LENGTH_COLOURS)]
    text = Text()
    for cell, style in zip(cells, styles, strict=True):
        text.append(cell, style=style)
    return text


def _visible(text: str) -> str:
    return visible(text.replace("\n", "⏎").replace("\t", "⇥"))


def render_truncation(report: TruncationReport, n_prompts: int, n_tokens: int, category_length: int) -> None:
    labels = layer_labels(report.n_layers)
    lengths = report.lengths
    console.print(
        f"[bold]context truncation[/] · {markup_safe(report.model)} · {n_prompts} prompt(s), {n_tokens} tokens · "
        f"{len(report.record_token)} truncated prompts · lengths {', '.join(map(str, lengths))}"
    )
    finite = [v for c in lengths for v in report.median_cos[c] if v is not None and np.isfinite(v)]
    low = min(0.0, np.floor(min(finite) * 10) / 10) if finite else 0.0
    table = Table(title="median mean-centred cosine, truncated vs full context", title_justify="left")
    table.add_column("layer")
    for index, c in enumerate(lengths):
        colour = LENGTH_COLOURS[index % len(LENGTH_COLOURS)]
        table.add_column(f"[{colour}]c={c}[/]", justify="right")
    table.add_column(f"{low:.1f} {'─' * (BAR_WIDTH - 8)} 1.0")
    for row, label in enumerate(labels):
        values = [report.median_cos[c][row] for c in lengths]
        table.add_row(label, *[number(v) for v in values], _dot_bar(values, low))
    console.print(table)

    n_rows = report.n_layers + 1
    shown_rows = sorted({0, 1, n_rows // 4, n_rows // 2, (3 * n_rows) // 4, n_rows - 1} & set(range(n_rows)))
    per_category = report.categories.get(category_length, {})
    cat_table = Table(title=f"median cosine per token category, c={category_length}", title_justify="left")
    cat_table.add_column("category")
    cat_table.add_column("count", justify="right")
    for row in shown_rows:
        # Short headers (L<i> = resid_pre_i) keep the table inside an 80-column terminal.
        cat_table.add_column("final" if row == report.n_layers else f"L{row}", justify="right")
    for category in CATEGORIES:
        count = per_category.get("count", {}).get(category, 0)
        medians = per_category.get(category, [float("nan")] * n_rows)
        cat_table.add_row(category, str(count), *[number(medians[row]) for row in shown_rows])
    console.print(cat_table)

    if report.outliers:
        out_table = Table(title="lowest-cosine tokens (token highlighted in its context)", title_justify="left")
        for column in ("cos", "row", "c", "category", "context"):
            out_table.add_column(column, justify="right" if column in {"cos", "c"} else "left")
        for outlier in report.outliers:
            context = Text()
            context.append("…" + _visible(outlier.context_before), style="dim")
            context.append(_visible(outlier.token), style="bold reverse")
            context.append(_visible(outlier.context_after) + "…", style="dim")
            out_table.add_row(f"{outlier.cos:.3f}", labels[outlier.layer], str(outlier.length), outlier.category,
                              context)
        console.print(out_table)


@app.command("truncate")
def truncate(
    model: ModelOpt = DEFAULT_MODEL,
    prompt: PromptOpt = None,
    file: FileOpt = None,
    lengths: LengthsOpt = "1,5,10",
    batch_size: BatchOpt = "auto",
    max_memory: MaxMemoryOpt = "auto",
    outliers: OutliersOpt = 20,
    outlier_layer: OutlierLayerOpt = None,
    category_length: CategoryLengthOpt = None,
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    truncate_to: TruncateToOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    unverified: UnverifiedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Truncate the context to the last c tokens: how similar is each layer's residual to the full-context one?"""
    length_list = list(dict.fromkeys(parse_int_list(lengths, "--lengths", minimum=1)))
    memory, requested_batch = check_memory_options(max_memory, batch_size)
    options.check_count(outliers, "--outliers")
    options.check_layer_row(outlier_layer, None, "--outlier-layer")
    if category_length is not None and category_length not in length_list:
        raise HorizonError(f"--category-length {category_length} is not one of --lengths {lengths}")
    if not bos:
        raise HorizonError("truncated prompts start with BOS ([BOS] + the last c tokens): drop --no-bos")
    inputs = prepare_inputs(model, device, dtype, prompt, file, bos, bos_token, truncate_to, quiet=as_json)
    options.check_layer_row(outlier_layer, inputs.model.n_layers, "--outlier-layer")
    options.check_lengths(length_list, inputs.model.n_ctx if truncate_to is None else min(truncate_to,
                                                                                           inputs.model.n_ctx))
    total = n_truncations(inputs.token_ids, length_list)
    if total == 0:
        longest = max(len(ids) for ids in inputs.token_ids)
        raise HorizonError(
            f"no position can be truncated: the longest prompt has {longest} tokens with BOS, and c = "
            f"{min(length_list)} needs at least {min(length_list) + 2}"
        )
    runner = runner_for(inputs, memory, requested_batch)
    plan = runner.plan("truncate", inputs.token_ids)
    with progress_bar("truncating", total, quiet=as_json) as advance:
        report = runner.truncate(inputs.token_ids, length_list, n_outliers=outliers, outlier_layer=outlier_layer,
                                 plan=plan, progress=advance).result
    payload = report_payload(inputs.model, inputs.token_ids, report, plan)
    n_tokens = sum(len(ids) for ids in inputs.token_ids)
    shown_length = category_length if category_length is not None else max(length_list)
    emit(as_json, payload, lambda: render_truncation(report, len(inputs.token_ids), n_tokens, shown_length),
         device=inputs.model.device)
