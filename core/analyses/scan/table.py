"""The scan table: its columns, the rows a shard writes (engine.py computes them), the corpus view of
those rows, the settings it records and checks, and the ScanResult / ByLayerResult rebuilt from them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core import options
from horizon.core.analyses.base import column, weighted_mean
from horizon.core.analyses.scan.result import (
    BY_LAYER_METRICS,
    ByLayerResult,
    ScanResult,
    effective_horizon,
    row_horizons,
)

if TYPE_CHECKING:
    from horizon.core.results.store import Results
    from horizon.core.sweep.sweep_settings import SweepSettings

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
    # Each prompt's curve is its own row set (corpus aggregates are the token-weighted means of
    # them: every metric is a mean over next-token predictions). The prompts run in padded
    # batches; each prompt's metrics are its own rows' sums, so the rows equal one scan per prompt.
    # With by_layer, the layer x k matrix adds rows with only_layer = N (-1 marks the scan's rows).
    results = worker.per_prompt("scan", token_ids, lambda ids, plan: scan_batches(worker, ids, plan))
    return result_table(indices, results)


def result_table(indices: list[int], results: Sequence[tuple[ScanResult, ByLayerResult | None]]) -> pa.Table:
    """Per-prompt scans (and their layer x k matrices) as the table's long rows, prompts numbered by ``indices``."""
    records: list[dict[str, Any]] = []
    for prompt, (result, matrix) in zip(indices, results, strict=True):
        for row in result.rows:
            records.append({"prompt": prompt, "n_tokens": result.n_tokens, "k": row["k"], "K": row["K"],
                            "start_layer": row["start_layer"], "loss_clean": result.loss_clean,
                            **{COLUMN_OF.get(name, name): row[name] for name in METRICS}, "only_layer": -1})
        if matrix is not None:
            for i, layer in enumerate(matrix.layers):
                for j, k in enumerate(matrix.ks):
                    records.append({"prompt": prompt, "n_tokens": matrix.n_tokens, "k": k, "K": 2 * k,
                                    "start_layer": 0, "loss_clean": matrix.loss_clean, "only_layer": layer,
                                    **{COLUMN_OF.get(name, name): getattr(matrix, name)[i][j] for name in METRICS}})
    return pa.Table.from_pylist(records, schema=pa.schema(list(WRITTEN.items())))


def scan_batches(worker: Any, token_ids: list[list[int]], plan: Any) -> list[tuple[ScanResult, ByLayerResult | None]]:
    """Per prompt (in order): its scan and, with by_layer, its layer x k matrix, one padded batch at a time
    (the batch's clean run serves both, then is dropped)."""
    from horizon.core.analyses.scan.engine import scan_by_layer_per_prompt, scan_per_prompt
    from horizon.core.patching.horizon import clean_runs
    from horizon.core.sweep.worker import chunks

    settings = worker.settings
    out: list[tuple[ScanResult, ByLayerResult | None]] = []
    for batch in chunks(token_ids, plan.batch_size):
        batch = list(batch)
        common = {"ks": settings.ks, "tol": settings.tol, "source": settings.source, "keep_embed": settings.keep_embed,
                  "final": settings.final, "ablation": settings.ablation,
                  "means": worker.corpus_inputs.get("scan"), "batch_size": len(batch),
                  "max_pass_bytes": worker.pass_bytes(plan),
                  "cleans": clean_runs(worker.model, batch, len(batch), has_bos=settings.bos,
                                       position_chunk=plan.position_chunk)}
        scans = scan_per_prompt(worker.model, batch, start_layers=settings.start_layers, **common)
        matrices = (scan_by_layer_per_prompt(worker.model, batch, **common) if settings.by_layer
                    else [None] * len(batch))
        out.extend(zip(scans, matrices, strict=True))
    return out


def view(results: Results, table: pa.Table, manifest: dict[str, Any], has_bos: bool) -> dict[str, Any]:
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
            row: dict[str, Any] = {"k": int(k_value), "K": int(big_k[selected][0]), "start_layer": int(start_layer)}
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


def recorded_settings(settings: Any, n_layers: int) -> dict[str, Any]:
    """The settings that define its numbers (recorded in the manifest, checked on resume)."""
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


def index_bounds(n_layers: int, n_heads: int, n_ctx: int) -> dict[str, tuple[int, int]]:
    """k runs to L+1 (K = 2k), start layers and the matrix's layers (-1: a scan row) within the model."""
    return {"k": (0, n_layers + 1), "K": (0, 2 * n_layers + 2), "start_layer": (0, n_layers),
            "only_layer": (-1, n_layers)}


def check_settings(settings: SweepSettings, n_layers: int, n_ctx: int) -> None:
    """The ks and start layers must lie within this model's layers."""
    options.check_ks(settings.ks, n_layers)
    options.check_start_layers(settings.start_layers, n_layers)


def report_from_view(view: dict[str, Any]) -> ScanResult:
    """The corpus ScanResult of a scan view (what ``report`` shows; the app's results mode draws it)."""
    horizons = {int(layer): k for layer, k in view["effective_horizon"].items()}
    return ScanResult(rows=view["rows"], effective_horizon=horizons, loss_clean=view["loss_clean"],
                      tol=view["tol"], n_tokens=view["n_tokens"], unit=view.get("unit", "layer"))


def by_layer_from_rows(table: pa.Table, tol: float, ablation: str = "zero") -> dict[int, ByLayerResult]:
    """Each prompt's layer x k matrix (the rows ``--by-layer`` wrote, only_layer >= 0), by prompt number.

    The ByLayerResult the engine gave that prompt in the sweep: the same cells, its own clean loss and
    prediction count, each row's horizon from the sweep's tol (what the app's results mode draws). A
    cell the table lacks is NaN and no horizon counts it. Empty when the sweep stored no matrix.
    """
    if "only_layer" not in table.column_names:
        return {}
    only = column(table, "only_layer")
    stored = only >= 0
    if not stored.any():
        return {}
    prompt, layer, k = column(table, "prompt")[stored], only[stored], column(table, "k")[stored]
    n_tokens, loss_clean = column(table, "n_tokens")[stored], column(table, "loss_clean")[stored]
    values = {name: column(table, COLUMN_OF.get(name, name))[stored] for name in BY_LAYER_METRICS}
    out: dict[int, ByLayerResult] = {}
    for number in np.unique(prompt).tolist():
        rows = np.flatnonzero(prompt == number)
        layers, ks = sorted(np.unique(layer[rows]).tolist()), sorted(np.unique(k[rows]).tolist())
        cell = {(int(layer[row]), int(k[row])): row for row in rows}
        matrices = {name: [[float(values[name][cell[(n, k_value)]]) if (n, k_value) in cell else math.nan
                            for k_value in ks] for n in layers]
                    for name in BY_LAYER_METRICS}
        delta = [[math.inf if math.isnan(value) else value for value in row] for row in matrices["delta_loss"]]
        first = rows[0]
        out[int(number)] = ByLayerResult(
            layers=[int(n) for n in layers], ks=[int(k_value) for k_value in ks],
            effective_horizon=row_horizons(ks, delta, tol), loss_clean=float(loss_clean[first]), tol=tol,
            n_tokens=int(n_tokens[first]), ablation=ablation, loss=matrices["loss"],
            delta_loss=matrices["delta_loss"], kl=matrices["kl"], top1_agreement=matrices["top1_agreement"])
    return out
