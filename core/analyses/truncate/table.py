"""The truncate table: its columns, the rows a shard writes (engine.py computes them), the corpus view
of those rows, the settings it records and checks, and the TruncationReport rebuilt from the rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core import options
from horizon.core.analyses.base import column
from horizon.core.analyses.truncate.result import PromptTokenIds, TruncationReport, find_outliers, summarise

if TYPE_CHECKING:
    from horizon.core.results.store import Results
    from horizon.core.sweep.sweep_settings import SweepSettings

SCHEMA = {"prompt": pa.int32(), "position": pa.int32(), "token": pa.string(), "category": pa.string(),
          "length": pa.int16(), "layer": pa.int16(), "cos": pa.float32(), "cos_raw": pa.float32()}
N_OUTLIERS = 20  # the lowest-cosine records a corpus view keeps


def rows(worker: Any, indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    from horizon.core.analyses.truncate.engine import analyse_truncation

    mu = worker.corpus_inputs.get("truncate")
    if mu is None:
        raise RuntimeError("the corpus mean residual must be set before truncation shards run")
    plan = worker.plan("truncate", token_ids)  # full prompts per pass, truncated prompts per pass
    report = analyse_truncation(worker.model, token_ids, lengths=worker.settings.lengths, mu=mu,
                                n_outliers=0, full_batch_size=plan.batch_size,
                                batch_size=plan.tiling.get("windows", 32))
    return report_table(report, indices)


def report_table(report: TruncationReport, indices: list[int]) -> pa.Table:
    """A TruncationReport as the table's long rows: one per record and layer (prompts numbered by ``indices``)."""
    n_records, n_rows = report.cos.shape
    prompt_map = np.asarray(indices)
    return pa.table({
        "prompt": pa.array(np.repeat(prompt_map[report.record_prompt], n_rows), pa.int32()),
        "position": pa.array(np.repeat(report.record_pos, n_rows), pa.int32()),
        "token": pa.array(np.repeat(np.asarray(report.record_token, dtype=object), n_rows), pa.string()),
        "category": pa.array(np.repeat(np.asarray(report.record_category, dtype=object), n_rows), pa.string()),
        "length": pa.array(np.repeat(report.record_length, n_rows), pa.int16()),
        "layer": pa.array(np.tile(np.arange(n_rows), n_records), pa.int16()),
        "cos": pa.array(report.cos.reshape(-1), pa.float32()),
        "cos_raw": pa.array(report.cos_raw.reshape(-1), pa.float32()),
    })


def report_from_rows(table: pa.Table, token_ids: PromptTokenIds,
                     model: str = "?", prompt_row: dict[int, int] | None = None) -> TruncationReport:
    """The TruncationReport the rows were written from (records in (prompt, length, position) order).

    ``prompt_row`` maps stored prompt numbers to the report's prompt indices (default: the same).
    """
    layer = column(table, "layer")
    n_rows = int(layer.max()) + 1
    prompt, position, length = column(table, "prompt"), column(table, "position"), column(table, "length")
    if len(layer) % n_rows == 0 and np.array_equal(layer.reshape(-1, n_rows), np.broadcast_to(
            np.arange(n_rows), (len(layer) // n_rows, n_rows))):
        order = np.arange(len(layer))  # as written: each record's L+1 layers in a row
    else:
        order = np.lexsort((layer, position, length, prompt))
    records = order[layer[order] == 0]  # one record per (prompt, position, length), at its layer-0 row
    record_prompt = prompt[records]
    if prompt_row is not None:
        record_prompt = np.array([prompt_row.get(int(p), -1) for p in record_prompt], dtype=np.int64)
    return TruncationReport(
        model=model, token_ids=token_ids, lengths=sorted(int(c) for c in np.unique(length)), n_layers=n_rows - 1,
        record_prompt=record_prompt, record_pos=position[records], record_length=length[records],
        record_token=table.column("token").take(pa.array(records)).to_pylist(),
        record_category=table.column("category").take(pa.array(records)).to_pylist(),
        cos=column(table, "cos")[order].reshape(-1, n_rows).astype(np.float64),
        cos_raw=column(table, "cos_raw")[order].reshape(-1, n_rows).astype(np.float64),
    )


def view(results: Results, table: pa.Table, manifest: dict[str, Any], has_bos: bool) -> dict[str, Any]:
    token_ids, tokens = results.prompt_tokens()
    report = report_from_rows(table, token_ids, manifest.get("model", {}).get("spec", "?"))
    summarise(report)
    if token_ids:
        report.outliers = find_outliers(report, tokens, N_OUTLIERS)
    view = report.to_json()
    view.pop("per_token")  # every record is in the table itself
    view["n_records"] = len(report.record_token)
    return view


def expected_rows(lengths: list[int], settings: dict[str, Any], model: dict[str, Any]) -> int:
    return (int(model["n_layers"]) + 1) * sum(max(0, t - 1 - int(c)) for t in lengths for c in settings["lengths"])


def fits(data: pa.Table, settings: dict[str, Any]) -> bool:
    return set(data.column("length").to_pylist()) <= set(settings["lengths"])



def recorded_settings(settings: Any, n_layers: int) -> dict[str, Any]:
    """The settings that define its numbers (recorded in the manifest, checked on resume)."""
    return {"lengths": sorted(set(settings.lengths)), "centring": "corpus mean"}


def index_bounds(n_layers: int, n_heads: int, n_ctx: int) -> dict[str, tuple[int, int]]:
    """A kept length lies within the context."""
    return {"length": (1, n_ctx)}


def check_settings(settings: SweepSettings, n_layers: int, n_ctx: int) -> None:
    """Every kept length must leave room for BOS and one earlier token within the prompts' length."""
    limit = n_ctx if settings.max_tokens is None else min(settings.max_tokens, n_ctx)
    options.check_lengths(settings.lengths, limit)
