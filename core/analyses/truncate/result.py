"""The truncate analysis's result type (TruncationReport, its records and outliers) and its torch-free
summaries (engine.py computes a report; table.py rebuilds one from the rows)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import numpy as np
from horizon.core.analyses.truncate.categories import CATEGORIES
from horizon.core.analyses.truncate.outliers import rank_outliers, token_context

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
