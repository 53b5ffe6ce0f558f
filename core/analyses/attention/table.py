"""The attention table: its columns, the rows a shard writes (engine.py computes them), the corpus view
of those rows, the settings it records, and the AttentionReport rebuilt from the rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.analyses.attention.result import AttentionReport
from horizon.core.analyses.base import column
from horizon.core.errors import HorizonError

if TYPE_CHECKING:
    from horizon.core.results.store import Results

# AttentionReport bucket name -> table column.
MASSES = {"0": "mass_0", "1-5": "mass_1_5", "6-10": "mass_6_10", ">10": "mass_gt10"}
SCHEMA = {"prompt": pa.int32(), "n_queries": pa.int32(), "layer": pa.int16(), "head": pa.int16(),
          **{name + suffix: pa.float64() for suffix in ("", "_no_bos")
             for name in ("mean_distance", *MASSES.values())}}



def rows(worker: Any, indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    try:
        from horizon.core.analyses.attention.engine import attention_distance_per_prompt
    except ModuleNotFoundError as exc:
        if exc.name != "horizon.core.analyses.attention.engine":
            raise
        raise HorizonError("the attention analysis is not available in this build (its engine.py is "
                           "missing): leave it out of --analyses") from None
    # One report per prompt, so the table keeps prompts apart; corpus views weight by n_queries.
    # The prompts run in padded batches; each report is its own rows of the batch's sums.
    reports = worker.per_prompt("attention", token_ids, lambda ids, plan: attention_distance_per_prompt(
        worker.model, ids, worker.settings.bos, batch_size=plan.batch_size))
    return pa.concat_tables([report_rows(report, prompt) for prompt, report in zip(indices, reports, strict=True)])


def report_rows(report: AttentionReport, prompt: int) -> pa.Table:
    """One prompt's AttentionReport as rows (one per layer and head)."""
    n_layers, n_heads = report.mean_distance.shape
    size = n_layers * n_heads
    columns: dict[str, pa.Array] = {
        "prompt": pa.array(np.full(size, prompt), pa.int32()),
        "n_queries": pa.array(np.full(size, report.n_queries), pa.int32()),
        "layer": pa.array(np.repeat(np.arange(n_layers), n_heads), pa.int16()),
        "head": pa.array(np.tile(np.arange(n_heads), n_layers), pa.int16()),
        "mean_distance": pa.array(report.mean_distance.reshape(-1), pa.float64()),
        "mean_distance_no_bos": pa.array(report.mean_distance_no_bos.reshape(-1), pa.float64()),
    }
    for suffix, masses in (("", report.mass), ("_no_bos", report.mass_no_bos)):
        for bucket, name in MASSES.items():
            columns[name + suffix] = pa.array(np.asarray(masses[bucket]).reshape(-1), pa.float64())
    return pa.table(columns)


def view(results: Results | None, table: pa.Table, manifest: dict[str, Any], has_bos: bool) -> dict[str, Any]:
    """Query-weighted means over the prompts in ``table`` (one prompt's rows give that prompt's report)."""
    layer, head = column(table, "layer"), column(table, "head")
    weight = column(table, "n_queries").astype(np.float64)
    n_layers, n_heads = int(layer.max()) + 1, int(head.max()) + 1
    cell = layer.astype(np.int64) * n_heads + head

    def mean(name: str) -> list[list[float | None]]:
        values = column(table, name).astype(np.float64)
        # Query-weighted over prompts; a prompt whose head has no value (NaN, all mass on BOS) is left out.
        valid = ~np.isnan(values)
        total = np.bincount(cell[valid], weights=values[valid] * weight[valid], minlength=n_layers * n_heads)
        count = np.bincount(cell[valid], weights=weight[valid], minlength=n_layers * n_heads)
        with np.errstate(invalid="ignore", divide="ignore"):
            averaged = np.where(count > 0, total / count, np.nan)
        return averaged.reshape(n_layers, n_heads).tolist()

    return {
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_queries": int(np.unique(np.stack((column(table, "prompt"), weight)), axis=1)[1].sum()),
        "mean_distance": mean("mean_distance"),
        "mean_distance_no_bos": mean("mean_distance_no_bos"),
        "mass": {bucket: mean(name) for bucket, name in MASSES.items()},
        "mass_no_bos": {bucket: mean(name + "_no_bos") for bucket, name in MASSES.items()},
    }


def expected_rows(lengths: list[int], settings: dict[str, Any], model: dict[str, Any]) -> int:
    return len(lengths) * int(model["n_layers"]) * int(model["n_heads"])



def index_bounds(n_layers: int, n_heads: int, n_ctx: int) -> dict[str, tuple[int, int]]:
    """A head of the model; at most n_ctx^2 query-key pairs per prompt."""
    return {"head": (0, n_heads - 1), "n_queries": (0, n_ctx * n_ctx)}


def recorded_settings(settings: Any, n_layers: int) -> dict[str, Any]:
    """The settings that define its numbers (recorded in the manifest)."""
    return {"buckets": list(MASSES)}


def report_from_rows(table: pa.Table, model: str, token_ids: list[list[int]], has_bos: bool) -> AttentionReport:
    """The AttentionReport of the prompt(s) whose rows ``table`` holds (one prompt: that prompt's report)."""
    summary = view(None, table, {}, has_bos)

    def array(matrix: list[list[float | None]]) -> np.ndarray:
        return np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=np.float64)

    return AttentionReport(
        model=model, token_ids=token_ids, n_layers=summary["n_layers"], n_heads=summary["n_heads"],
        has_bos=has_bos, n_queries=summary["n_queries"],
        mean_distance=array(summary["mean_distance"]), mean_distance_no_bos=array(summary["mean_distance_no_bos"]),
        mass={k: array(v) for k, v in summary["mass"].items()},
        mass_no_bos={k: array(v) for k, v in summary["mass_no_bos"].items()},
    )
