"""What each screen shows, read out of the engine reports (indexing only, no science).

Every function takes the source (or the ``ViewState``) and the user's selections and returns
plain lists for the widgets, or None while the analysis it needs is still pending. Only what is
ready is read (``Source.ready`` of a ``Query``): nothing here computes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from horizon.core.analyses.truncate.categories import token_category
from horizon.core.sources.queries import Query
from horizon.core.sources.session import PatchSettings, Source
from horizon.tui.format import layer_label
from horizon.tui.state import ViewState
from horizon.tui.widgets.detail import TokenDetail

METRIC_LABELS = {"cosine": "cosine", "norm": "norm", "loss": "Δloss", "kl": "KL"}


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def cosines(source: Source, prompt: int, length: int, layer: int) -> list[float | None] | None:
    """Mean-centred cosine per position (None where t - c < 1 or at BOS)."""
    report = source.ready(Query.truncate())
    if report is None:
        return None
    values: list[float | None] = [None] * len(source.token_ids[prompt])
    rows = np.nonzero((report.record_prompt == prompt) & (report.record_length == length))[0]
    for row in rows:
        values[int(report.record_pos[row])] = _float(report.cos[row, layer])
    return values


def cosine_curves(source: Source, prompt: int, position: int) -> dict[int, list[float | None]]:
    """Per length, the token's cosine at every layer 0..L (all None when it has no record)."""
    report = source.ready(Query.truncate())
    curves: dict[int, list[float | None]] = {}
    for length in source.lengths:
        curves[length] = [None] * (source.n_layers + 1)
        if report is None:
            continue
        match = np.nonzero(
            (report.record_prompt == prompt) & (report.record_length == length) & (report.record_pos == position)
        )[0]
        if len(match):
            curves[length] = [_float(value) for value in report.cos[match[0]]]
    return curves


def norms(source: Source, prompt: int, layer: int) -> list[float | None] | None:
    """Residual norm per position at resid_pre row ``layer`` (row L = final residual)."""
    report = source.ready(Query.norms())
    if report is None or report.norms["resid_pre"][prompt] is None:
        return None
    return [_float(value) for value in report.norms["resid_pre"][prompt][layer]]


def norm_curve(source: Source, prompt: int, position: int) -> list[float | None]:
    report = source.ready(Query.norms())
    if report is None or report.norms["resid_pre"][prompt] is None:
        return []
    return [_float(value) for value in report.norms["resid_pre"][prompt][:, position]]


def patch_per_token(source: Source, settings: PatchSettings, prompt: int, which: str) -> list[float | None] | None:
    """Per-token loss increase or KL, placed on the predicted token (position t+1); BOS gets None."""
    result = source.ready(Query.patch(settings, prompt))
    if result is None:
        return None
    if which == "loss":
        series = [p - c for p, c in zip(result.per_token_loss_patched[0], result.per_token_loss_clean[0], strict=True)]
    else:
        series = result.per_token_kl[0]
    values: list[float | None] = [None] * len(source.token_ids[prompt])
    for t, value in enumerate(series):
        if t + 1 < len(values):
            values[t + 1] = _float(value)
    return values


def token_values(state: ViewState) -> tuple[list[float | None] | None, bool, str]:
    """(values, diverging scale?, label) of the Tokens screen's current metric."""
    source, n = state.source, state.n_layers
    if state.metric == "cosine":
        return cosines(source, state.prompt, state.length, state.layer), True, (
            f"cosine c={state.length} {layer_label(state.layer, n, 'L')}")
    if state.metric == "norm":
        return norms(source, state.prompt, state.layer), False, f"norm {layer_label(state.layer, n, 'L')}"
    values = patch_per_token(source, state.settings, state.prompt, state.metric)
    return values, state.metric == "loss", f"{METRIC_LABELS[state.metric]} k={state.settings.k}"


def token_detail(state: ViewState, position: int) -> TokenDetail:
    source, prompt = state.source, state.prompt
    tokens = source.tokens(prompt)
    loss = patch_per_token(source, state.settings, prompt, "loss")
    kl = patch_per_token(source, state.settings, prompt, "kl")
    return TokenDetail(
        index=position,
        token=tokens[position],
        category="BOS" if position == 0 and source.has_bos else token_category(tokens[position]),
        before="".join(tokens[1 if source.has_bos else 0 : position]),
        after="".join(tokens[position + 1 :]),
        cos_by_length=cosine_curves(source, prompt, position),
        norms=norm_curve(source, prompt, position),
        loss_increase=None if loss is None else loss[position],
        kl=None if kl is None else kl[position],
        k=state.settings.k,
        layer=state.layer,
    )
