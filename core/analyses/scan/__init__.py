"""The scan analysis in the store: per prompt, start layer and k, the horizon metrics (core/patching/horizon.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.analyses.base import Analysis, CorpusInput, column, weighted_mean
from horizon.core.errors import HorizonError
from horizon.core.memory import budget

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel
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


# The result types (core/analyses/scan/engine.py computes them; report_from_view rebuilds the corpus scan).


@dataclass
class ScanResult:
    """The loss-vs-enforced-horizon curve, one row per (k, start layer)."""

    rows: list[dict[str, Any]]
    effective_horizon: dict[int, int | None]
    loss_clean: float
    tol: float
    n_tokens: int
    unit: str = "layer"


def effective_horizon(rows: Sequence[dict[str, Any]], start_layer: int, tol: float) -> int | None:
    """The smallest k whose loss increase is <= tol, at one start layer (None: no k qualifies)."""
    qualifying = [row["k"] for row in rows if row["start_layer"] == start_layer and row["delta_loss"] <= tol]
    return min(qualifying) if qualifying else None


@dataclass
class ByLayerResult:
    """The per-layer horizon matrix: row N = the horizon enforced at layer N only (N = L: the final readout).

    Every matrix is [L+1][len(ks)]; ``effective_horizon[N]`` is the smallest k of row N whose loss
    increase is <= tol (None: none of the ks).
    """

    layers: list[int]
    ks: list[int]
    loss: list[list[float]]
    delta_loss: list[list[float]]
    kl: list[list[float]]
    top1_agreement: list[list[float]]
    effective_horizon: list[int | None]
    loss_clean: float
    tol: float
    n_tokens: int
    unit: str = "layer"
    ablation: str = "zero"

    def payload(self) -> dict[str, Any]:
        """The ``by_layer`` JSON object of ``horizon scan --by-layer``."""
        return {"layers": self.layers, "ks": self.ks, "delta_loss": self.delta_loss, "kl": self.kl,
                "loss": self.loss, "top1_agreement": self.top1_agreement,
                "effective_horizon": self.effective_horizon, "tol": self.tol}


BY_LAYER_METRICS = ("loss", "delta_loss", "kl", "top1_agreement")


def row_horizons(ks: Sequence[int], delta_loss: Sequence[Sequence[float]], tol: float) -> list[int | None]:
    """Per row of the matrix, the smallest k whose loss increase is <= tol (None: none)."""
    horizons: list[int | None] = []
    for row in delta_loss:
        qualifying = [k for k, value in zip(ks, row, strict=True) if value <= tol]
        horizons.append(min(qualifying) if qualifying else None)
    return horizons


def join_by_layer(parts: Sequence[ByLayerResult]) -> ByLayerResult:
    """One matrix from parts over disjoint ks of the same prompts (columns side by side, ks in order)."""
    first = parts[0]
    columns = sorted((k, index, column) for index, part in enumerate(parts) for column, k in enumerate(part.ks))
    ks = [k for k, _, _ in columns]
    if len(set(ks)) != len(ks):
        raise HorizonError("the parts of a by-layer matrix overlap in k")
    rows = range(len(first.layers))
    matrices = {
        name: [[getattr(parts[index], name)[row][column] for _, index, column in columns] for row in rows]
        for name in BY_LAYER_METRICS
    }
    horizons = row_horizons(ks, matrices["delta_loss"], first.tol)
    return ByLayerResult(layers=first.layers, ks=ks, effective_horizon=horizons, loss_clean=first.loss_clean,
                         tol=first.tol, n_tokens=first.n_tokens, unit=first.unit, ablation=first.ablation, **matrices)

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


def cost_parts(dims: budget.ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
               held_tokens: int, position_chunk: int) -> dict[str, int]:
    """The clean run, then staircase passes of ``rows`` configs with a tiled readout (in position chunks
    when ``position_chunk`` is shorter than the prompt)."""
    if 0 < position_chunk < n_tokens:
        return budget.chunked_scan_parts(dims, batch, n_tokens, rows, vocab_tile, position_chunk)
    return budget.staircase_parts(dims, batch, n_tokens, rows, vocab_tile, held_tokens, whole_logits=False)


def staircase_rows(dims: budget.ModelDims, batch: int, n_tokens: int, limit: budget.Budget, held_tokens: int = 0,
                   most: int | None = None, position_chunk: int = 0) -> int:
    """Configs per staircase pass: as many as fit, at least 1."""
    most = most or 2 * dims.n_layers + 2
    width = budget.readout_tile(batch, min(n_tokens, position_chunk or n_tokens))
    return budget.largest(lambda rows: budget.fits("scan", dims, batch, n_tokens, limit, rows=rows, vocab_tile=width,
                                                   held_tokens=held_tokens, position_chunk=position_chunk),
                          1, most)


def cost_tiles(dims: budget.ModelDims, batch: int, n_tokens: int, limit: budget.Budget, tiling: dict[str, int],
               requested: int | None) -> dict[str, int]:
    chunk = tiling.get("position_chunk", 0)
    return {"vocab_tile": budget.readout_tile(batch, chunk or n_tokens),
            "rows": staircase_rows(dims, batch, n_tokens, limit, tiling.get("held_tokens", 0), position_chunk=chunk)}


def relative_work(settings: Any, n_layers: int) -> float:
    """About half a forward plus a readout per horizon row."""
    rows = len(settings.ks or range(n_layers + 1)) * (len(settings.start_layers) + (n_layers + 1) * settings.by_layer)
    return float(1.0 + 0.7 * rows)  # settings is untyped


# 256 padded tokens per auto CPU batch (core/sweep/worker.py: its clean run and float64 prefix sums leave the caches).
COST = budget.Cost(parts=cost_parts, keeps_clean_runs=True, memory_chunks=True, speed_chunks=True, tiles=cost_tiles,
                   relative_work=relative_work, cpu_batch_tokens=256)

def corpus_means(model: LoadedModel, token_ids: list[list[int]], bos: bool) -> np.ndarray:
    """Mean ablation's corpus-wide means of every sublayer output [2L+1, d_model] (float64)."""
    from horizon.core.patching.horizon import corpus_ablation_means

    return corpus_ablation_means(model, token_ids, bos).mean.cpu().numpy()


def means_on_device(means: np.ndarray, model: LoadedModel, settings: SweepSettings) -> Any:
    import torch
    from horizon.core.patching.horizon import AblationMeans

    return AblationMeans(torch.as_tensor(means, dtype=torch.float64, device=model.device), has_bos=settings.bos)


MEANS = CorpusInput(file="ablation_means.npy", checksum_key="_means_sha256", dtype=np.float64,
                    shape=lambda n_layers, d_model: (2 * n_layers + 1, d_model), description="the mean-ablation means",
                    compute=corpus_means, receive=means_on_device, needed=lambda settings: settings.ablation == "mean")

ANALYSIS = Analysis(
    name="scan", table="scan", schema=SCHEMA, rows=rows, view=view, settings=scan_settings,
    expected_rows=expected_rows, fits=fits, render="horizon.tui.cli.report_render:render_scan", pane="horizon",
    cost=COST, corpus=MEANS,
)


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
