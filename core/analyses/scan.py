"""The scan analysis in the store: per prompt, start layer and k, the horizon metrics (core/horizon.py)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.analyses import Analysis, column, weighted_mean

if TYPE_CHECKING:
    from horizon.core.store import Results

METRICS = ("loss", "delta_loss", "kl", "top1_agreement")
SCHEMA = {"prompt": pa.int32(), "n_tokens": pa.int32(), "k": pa.int16(), "K": pa.int16(), "start_layer": pa.int16(),
          "loss_clean": pa.float64(), "loss": pa.float64(), "delta_loss": pa.float64(), "kl": pa.float64(),
          "top1": pa.float64()}
# Written too, not required: -1 on the scan's rows, N on the rows of the layer x k matrix (stores
# from before the matrix have no such column).
WRITTEN = {**SCHEMA, "only_layer": pa.int16()}
# The table's column for each row key of a scan (the table predates the row key's name).
COLUMN_OF = {"top1_agreement": "top1"}


def rows(worker: Any, indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    from horizon.core.horizon import clean_runs, scan, scan_by_layer

    settings = worker.settings
    records: list[dict[str, Any]] = []
    # One scan per prompt: each prompt's curve is its own row set, and corpus aggregates are
    # the token-weighted means of them (every metric is a mean over next-token predictions).
    # With by_layer, the layer x k matrix adds rows with only_layer = N (-1 marks the scan's rows).
    for prompt, ids in zip(indices, token_ids, strict=True):
        common = {"ks": settings.ks, "tol": settings.tol, "source": settings.source, "keep_embed": settings.keep_embed,
                  "final": settings.final, "ablation": settings.ablation,
                  "means": getattr(worker, "ablation_means", None),
                  "cleans": clean_runs(worker.model, [ids], has_bos=settings.bos)}
        result = scan(worker.model, [ids], start_layers=settings.start_layers, **common)
        for row in result.rows:
            records.append({"prompt": prompt, "n_tokens": result.n_tokens, "k": row["k"], "K": row["K"],
                            "start_layer": row["start_layer"], "loss_clean": result.loss_clean,
                            **{COLUMN_OF.get(name, name): row[name] for name in METRICS}, "only_layer": -1})
        if settings.by_layer:
            matrix = scan_by_layer(worker.model, [ids], **common)
            for i, layer in enumerate(matrix.layers):
                for j, k in enumerate(matrix.ks):
                    records.append({"prompt": prompt, "n_tokens": matrix.n_tokens, "k": k, "K": 2 * k,
                                    "start_layer": 0, "loss_clean": matrix.loss_clean, "only_layer": layer,
                                    **{COLUMN_OF.get(name, name): getattr(matrix, name)[i][j] for name in METRICS}})
    return pa.Table.from_pylist(records, schema=pa.schema(list(WRITTEN.items())))


def view(results: Results, table: pa.Table, manifest: dict[str, Any], has_bos: bool) -> dict[str, Any]:
    from horizon.core.horizon import effective_horizon

    settings = manifest.get("analyses", {}).get("scan", {})
    tol = float(settings.get("tol", 0.1))
    k = column(table, "k")
    only = column(table, "only_layer") if "only_layer" in table.column_names else np.full(len(k), -1)
    by_layer = _by_layer_view(table, only, tol) if (only >= 0).any() else None
    keep = only < 0
    prompt, weight = column(table, "prompt")[keep], column(table, "n_tokens").astype(np.float64)[keep]
    k, big_k, start = k[keep], column(table, "K")[keep], column(table, "start_layer")[keep]
    values = {name: column(table, COLUMN_OF.get(name, name))[keep] for name in METRICS}
    out_rows = []
    # Every metric is a mean over next-token predictions, so the corpus value is the
    # prediction-weighted mean of the per-prompt values (what one scan over all prompts gives).
    for start_layer in sorted(np.unique(start).tolist()):
        for k_value in sorted(np.unique(k[start == start_layer]).tolist()):
            selected = (start == start_layer) & (k == k_value)
            row = {"k": int(k_value), "K": int(big_k[selected][0]), "start_layer": int(start_layer)}
            row.update({name: weighted_mean(values[name][selected], weight[selected]) for name in METRICS})
            out_rows.append(row)
    first = np.unique(prompt, return_index=True)[1]
    return {
        "rows": out_rows,
        "effective_horizon": {str(layer): effective_horizon(out_rows, layer, tol)
                              for layer in sorted(set(start.tolist()))},
        "loss_clean": weighted_mean(column(table, "loss_clean")[keep][first], weight[first]),
        "tol": tol,
        "n_tokens": int(weight[first].sum()),
        "n_prompts": len(first),
        "unit": settings.get("unit", "layer"),
        "ablation": settings.get("ablation", "zero"),
        **({"by_layer": by_layer} if by_layer is not None else {}),
    }


def _by_layer_view(table: pa.Table, only: np.ndarray, tol: float) -> dict[str, Any]:
    """The corpus layer x k matrix: per cell the prediction-weighted mean over prompts, as ``scan --by-layer``."""
    from horizon.core.horizon import row_horizons

    k, weight = column(table, "k"), column(table, "n_tokens").astype(np.float64)
    layers = sorted(np.unique(only[only >= 0]).tolist())
    ks = sorted(np.unique(k[only >= 0]).tolist())
    matrices: dict[str, list[list[float | None]]] = {name: [] for name in METRICS}
    for name in METRICS:
        values = column(table, COLUMN_OF.get(name, name))
        for layer in layers:
            cells: list[float | None] = []
            for k_value in ks:
                selected = (only == layer) & (k == k_value)
                cells.append(weighted_mean(values[selected], weight[selected]) if weight[selected].sum() > 0
                             else None)
            matrices[name].append(cells)
    delta = [[math.inf if value is None else value for value in row] for row in matrices["delta_loss"]]
    return {"layers": layers, "ks": ks, **matrices, "effective_horizon": row_horizons(ks, delta, tol), "tol": tol}


def scan_settings(settings: Any, n_layers: int) -> dict[str, Any]:
    return {
        "ks": settings.ks if settings.ks is not None else list(range(1, n_layers + 2)),
        "start_layers": settings.start_layers, "tol": settings.tol, "source": settings.source,
        "keep_embed": settings.keep_embed, "final": settings.final, "unit": "layer",
        # Recorded only when mean, so sweeps from before the option still resume.
        **({"ablation": "mean", "means": "corpus mean"} if settings.ablation == "mean" else {}),
        **({"by_layer": True} if settings.by_layer else {}),
    }


def expected_rows(lengths: list[int], settings: dict[str, Any], model: dict[str, Any]) -> int:
    matrix_rows = model["n_layers"] + 1 if settings.get("by_layer") else 0
    return len(lengths) * len(set(settings["ks"])) * (len(set(settings["start_layers"])) + matrix_rows)


def fits(data: pa.Table, settings: dict[str, Any]) -> bool:
    starts = settings["start_layers"] + ([0] if settings.get("by_layer") else [])
    return (set(data.column("k").to_pylist()) == set(settings["ks"])
            and set(data.column("start_layer").to_pylist()) == set(starts))


ANALYSIS = Analysis(
    name="scan", table="scan", schema=SCHEMA, rows=rows, view=view, settings=scan_settings,
    expected_rows=expected_rows, fits=fits, render="horizon.tui.cli.report_render:render_scan", pane="horizon",
)
