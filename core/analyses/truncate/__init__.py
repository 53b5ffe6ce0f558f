"""The truncate analysis in the store: per truncated token, length and layer, the two cosines (engine.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
from horizon.core.analyses.base import Analysis, CorpusInput, column
from horizon.core.analyses.truncate.categories import CATEGORIES
from horizon.core.analyses.truncate.outliers import rank_outliers, token_context
from horizon.core.memory import budget

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel
    from horizon.core.results.store import Results
    from horizon.core.sweep.sweep_settings import SweepSettings

SCHEMA = {"prompt": pa.int32(), "position": pa.int32(), "token": pa.string(), "category": pa.string(),
          "length": pa.int16(), "layer": pa.int16(), "cos": pa.float32(), "cos_raw": pa.float32()}
N_OUTLIERS = 20  # the lowest-cosine records a corpus view keeps


# The result type (core/analyses/truncate/engine.py computes it; report_from_rows rebuilds it from the rows).


# Token ids by prompt: a list, or (read back from a results directory) a prompt -> ids mapping.
PromptTokenIds = Sequence[Sequence[int]] | Mapping[int, Sequence[int]]

@dataclass(frozen=True)
class TokenRecord:
    """One (token, truncation length): its cosines at the L+1 rows."""

    prompt: int
    pos: int
    token: str
    category: str
    length: int
    cos: list[float]
    cos_raw: list[float]


@dataclass(frozen=True)
class Outlier:
    """A low-cosine token with its context (before/after are decoded text around it)."""

    prompt: int
    pos: int
    token: str
    category: str
    length: int
    layer: int  # row 0..L (L = final residual)
    cos: float
    context_before: str
    context_after: str


@dataclass
class TruncationReport:
    """All records plus the summaries of docs/SCIENCE.md section 4.

    Records are held as arrays (row k of ``cos`` belongs to ``record_prompt[k]``, ...);
    ``per_token`` builds the list of TokenRecord on first use.
    """

    model: str
    token_ids: PromptTokenIds  # a list, or the store's prompt -> ids mapping
    lengths: list[int]
    n_layers: int
    record_prompt: np.ndarray  # [N] int
    record_pos: np.ndarray  # [N] int
    record_length: np.ndarray  # [N] int
    record_token: list[str]
    record_category: list[str]
    cos: np.ndarray  # [N, L+1] mean-centred
    cos_raw: np.ndarray  # [N, L+1]
    median_cos: dict[int, list[float]] = field(default_factory=dict)
    quartiles_cos: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)
    median_cos_raw: dict[int, list[float]] = field(default_factory=dict)
    categories: dict[int, dict[str, Any]] = field(default_factory=dict)
    outliers: list[Outlier] = field(default_factory=list)

    @cached_property
    def per_token(self) -> list[TokenRecord]:
        return [
            TokenRecord(
                int(self.record_prompt[k]), int(self.record_pos[k]), self.record_token[k], self.record_category[k],
                int(self.record_length[k]), self.cos[k].tolist(), self.cos_raw[k].tolist(),
            )
            for k in range(len(self.record_token))
        ]

    def to_json(self) -> dict[str, Any]:
        """The issue's JSON keys except ``model`` and ``token_ids`` (the command adds those)."""
        return {
            "lengths": list(self.lengths),
            "n_layers": self.n_layers,
            "median_cos": {str(c): v for c, v in self.median_cos.items()},
            "quartiles_cos": {str(c): [q25, q75] for c, (q25, q75) in self.quartiles_cos.items()},
            "median_cos_raw": {str(c): v for c, v in self.median_cos_raw.items()},
            "categories": {str(c): v for c, v in self.categories.items()},
            "per_token": [
                {"prompt": r.prompt, "pos": r.pos, "token": r.token, "category": r.category, "length": r.length,
                 "cos": r.cos, "cos_raw": r.cos_raw}
                for r in self.per_token
            ],
            "outliers": [vars(outlier).copy() for outlier in self.outliers],
        }


def _median(values: np.ndarray, n_rows: int) -> list[float]:
    if len(values) == 0:
        return [float("nan")] * n_rows
    return cast(list[float], np.median(values, axis=0).astype(float).tolist())


def summarise(report: TruncationReport) -> None:
    """Fill medians, quartiles and per-category medians (per length, per row) in place."""
    n_rows = report.n_layers + 1
    category_array = np.array(report.record_category, dtype=object)
    for c in report.lengths:
        selected = report.record_length == c
        cos, cos_raw = report.cos[selected], report.cos_raw[selected]
        report.median_cos[c] = _median(cos, n_rows)
        report.median_cos_raw[c] = _median(cos_raw, n_rows)
        if len(cos):
            q25, q75 = np.quantile(cos, [0.25, 0.75], axis=0).astype(float).tolist()
        else:
            q25 = q75 = [float("nan")] * n_rows
        report.quartiles_cos[c] = (q25, q75)
        per_category: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for category in CATEGORIES:
            in_category = category_array[selected] == category
            per_category[category] = _median(cos[in_category], n_rows)
            counts[category] = int(in_category.sum())
        per_category["count"] = counts
        report.categories[c] = per_category


def find_outliers(
    report: TruncationReport, tokens: Sequence[Sequence[str]] | Mapping[int, Sequence[str]], n_outliers: int,
    outlier_layer: int | None = None,
    has_bos: bool = True,
) -> list[Outlier]:
    """The ``n_outliers`` records with the lowest outlier score (core/analyses/truncate/outliers.py: ``rank_outliers``).

    A record's score is its lowest cosine over the L+1 rows (reported with that row), or its
    cosine at ``outlier_layer`` when given: one entry per (token, length), never one per row.
    ``tokens`` holds each prompt's token texts; the context is ``token_context``'s.
    """
    records, rows, scores = rank_outliers(report.cos, max(n_outliers, 0), outlier_layer)
    outliers = []
    for k, row, score in zip(records.tolist(), rows.tolist(), scores.tolist(), strict=True):
        prompt, pos = int(report.record_prompt[k]), int(report.record_pos[k])
        before, _, after = token_context(tokens[prompt], pos, has_bos)
        outliers.append(Outlier(prompt, pos, report.record_token[k], report.record_category[k],
                                int(report.record_length[k]), int(row), float(score), before, after))
    return outliers

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


def cost_parts(dims: budget.ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
               held_tokens: int, position_chunk: int) -> dict[str, int]:
    rows_bytes = (dims.n_layers + 1) * dims.d_model * 4
    parts = budget.forward_parts(dims, batch, n_tokens, logits=False)
    # the batch's residuals at every position; stacking them doubles them only after the pass's
    # own activations are freed, so the forward's parts cover the copy
    parts["full residuals"] = batch * n_tokens * rows_bytes
    # each pass of truncated prompts: its last positions, the full ones gathered, centred copies
    parts["truncated windows"] = windows * (rows_bytes * 6 + 16 * dims.d_model * 4)
    return parts


def truncation_windows(dims: budget.ModelDims, batch: int, n_tokens: int, limit: budget.Budget) -> int:
    """Truncated prompts per pass: as many as fit, at most MAX_WINDOWS."""
    return budget.largest(lambda n: budget.fits("truncate", dims, batch, n_tokens, limit, windows=n), 1,
                          budget.MAX_WINDOWS)


def cost_tiles(dims: budget.ModelDims, batch: int, n_tokens: int, limit: budget.Budget, tiling: dict[str, int],
               requested: int | None) -> dict[str, int]:
    """--batch-size counts truncated prompts per pass (the full prompts' batch is always chosen)."""
    if requested is not None:  # no more truncated prompts per pass than the batch has positions
        requested = min(requested, max(1, batch * n_tokens))
    if requested is not None and not budget.fits("truncate", dims, batch, n_tokens, limit, windows=requested):
        raise budget.too_big("truncate", dims, n_tokens, limit, batch, windows=requested)
    return {"windows": requested or truncation_windows(dims, batch, n_tokens, limit)}


def relative_work(settings: Any, n_layers: int) -> float:
    """One short forward per position and kept length."""
    return 1.0 + 0.5 * len(settings.lengths)


COST = budget.Cost(parts=cost_parts, batch_requested=False, tiles=cost_tiles, relative_work=relative_work)


def corpus_mean_residual(model: LoadedModel, token_ids: list[list[int]], bos: bool) -> np.ndarray:
    """The corpus-wide mean residual [L+1, d_model] truncation centres with (docs/SCIENCE.md section 4)."""
    from horizon.core.analyses.truncate.engine import mean_residual

    return mean_residual(model, token_ids, bos).float().cpu().numpy()


def mu_on_device(mu: np.ndarray, model: LoadedModel, settings: SweepSettings) -> Any:
    import torch

    return torch.as_tensor(mu, dtype=torch.float32, device=model.device)


MU = CorpusInput(file="truncation_mu.npy", checksum_key="_mu_sha256", dtype=np.float32,
                 shape=lambda n_layers, d_model: (n_layers + 1, d_model), description="the corpus mean residual",
                 compute=corpus_mean_residual, receive=mu_on_device, kept_after_sweep=True)

ANALYSIS = Analysis(
    name="truncate", table="truncate", schema=SCHEMA, rows=rows, view=view,
    settings=lambda settings, n_layers: {"lengths": sorted(set(settings.lengths)), "centring": "corpus mean"},
    expected_rows=expected_rows, fits=fits, render="horizon.tui.cli.report_render:render_truncation",
    pane="outliers", needs_bos=True, cost=COST, corpus=MU,
)
