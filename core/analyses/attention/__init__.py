"""The attention analysis in the store: per prompt, layer and head, mean distance and mass buckets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.analyses.base import Analysis, column
from horizon.core.errors import HorizonError
from horizon.core.memory import budget

if TYPE_CHECKING:
    from horizon.core.results.store import Results

BUCKETS: tuple[str, ...] = ("0", "1-5", "6-10", ">10")
# AttentionReport bucket name -> table column.
MASSES = {"0": "mass_0", "1-5": "mass_1_5", "6-10": "mass_6_10", ">10": "mass_gt10"}
SCHEMA = {"prompt": pa.int32(), "n_queries": pa.int32(), "layer": pa.int16(), "head": pa.int16(),
          **{name + suffix: pa.float64() for suffix in ("", "_no_bos")
             for name in ("mean_distance", *MASSES.values())}}


@dataclass
class AttentionReport:
    """Per layer and head: mean attention distance and bucket masses, with and without BOS."""

    model: str
    token_ids: list[list[int]]
    n_layers: int
    n_heads: int
    has_bos: bool
    n_queries: int
    mean_distance: np.ndarray  # [layer, head]
    mean_distance_no_bos: np.ndarray
    mass: dict[str, np.ndarray]  # bucket -> [layer, head]
    mass_no_bos: dict[str, np.ndarray]
    # Per layer: the sliding-window size of a local-attention layer, None for a global one
    # (Gemma 3: 15 windowed layers, 3 global); empty when unknown (a stored sweep).
    windows: list[int | None] = field(default_factory=list)

    def layer_label(self, layer: int) -> str:
        """``layer``, marked ``global`` or ``w<size>`` when the model mixes windowed and global layers."""
        if len(set(self.windows)) < 2:
            return str(layer)
        window = self.windows[layer]
        return f"{layer} {'global' if window is None else f'w{window}'}"

    def ranked(self, no_bos: bool = True) -> list[tuple[int, int, float]]:
        """(layer, head, mean distance) from the most local head to the most long-range one."""
        values = self.mean_distance_no_bos if no_bos else self.mean_distance
        flat = [(layer, head, float(values[layer, head]))
                for layer in range(self.n_layers) for head in range(self.n_heads)]
        return sorted(flat, key=lambda item: (np.nan_to_num(item[2], nan=np.inf), item[0], item[1]))

    def to_json(self) -> dict[str, Any]:
        """The issue's JSON keys except ``model`` and ``token_ids`` (the command adds those)."""
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "mean_distance": self.mean_distance.tolist(),
            "mean_distance_no_bos": self.mean_distance_no_bos.tolist(),
            "mass": {bucket: values.tolist() for bucket, values in self.mass.items()},
            "mass_no_bos": {bucket: values.tolist() for bucket, values in self.mass_no_bos.items()},
            "sliding_window": list(self.windows),
        }

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


def cost_parts(dims: budget.ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
               held_tokens: int, position_chunk: int) -> dict[str, int]:
    parts = budget.forward_parts(dims, batch, n_tokens, logits=False)
    # the reducer, QUERY_CHUNK query rows at a time: the einsum's copies of the rows, the distance weights
    query_rows = min(n_tokens, budget.QUERY_CHUNK)
    parts["pattern statistics"] = (batch * dims.n_heads * query_rows * n_tokens * 4 * 3
                                   + 10 * query_rows * n_tokens * 4)
    return parts


# Every pattern reduced to five statistics, with and without BOS, per head: 12 more work per key and head.
COST = budget.Cost(parts=cost_parts, pattern_work_per_head=12, cpu_batch_tokens=1024)

ANALYSIS = Analysis(
    name="attention", table="attention", schema=SCHEMA, rows=rows, view=view,
    settings=lambda settings, n_layers: {"buckets": list(MASSES)},
    expected_rows=expected_rows, render="horizon.tui.cli.report_render:render_attention", pane="attention",
    cost=COST,
)


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
