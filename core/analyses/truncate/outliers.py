"""Outliers: the one definition of "the lowest-cosine tokens" (docs/SCIENCE.md section 4), torch-free.

A truncation *record* is one (prompt, position, length c) with its mean-centred cosine at the
L+1 rows. Its **outlier score over a set of rows** is its lowest cosine over those rows, reported
with the row where it is reached; the outliers are the records with the lowest scores, one entry
per record (never one per row). ``horizon truncate`` and ``report`` rank over every row (or the
``--outlier-layer`` row); the app's Outliers screen ranks over the selected layer alone: the
same definition with a one-row set. Every place shows a record in the same context:
:func:`token_context`, ``CONTEXT_BEFORE`` tokens before it and ``CONTEXT_AFTER`` after.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONTEXT_BEFORE = 12  # tokens of context shown before an outlier (BOS never shown)
CONTEXT_AFTER = 4


def rank_outliers(cos: np.ndarray, n: int | None, layer: int | None = None,
                  keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(records, rows, scores) of the ``n`` lowest-scoring records, lowest first (``n`` None: all).

    ``cos`` is [N, L+1]; ``layer`` restricts the rows to that one; ``keep`` (a boolean mask
    over records) filters them first. Ties keep the records' order (a stable sort).
    """
    candidates = np.arange(len(cos)) if keep is None else np.nonzero(keep)[0]
    if len(candidates) == 0 or (n is not None and n <= 0):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    if layer is None:
        rows = np.nanargmin(np.nan_to_num(cos[candidates], nan=np.inf), axis=1)
    else:
        rows = np.full(len(candidates), layer)
    scores = cos[candidates, rows]
    order = np.argsort(scores, kind="stable")[:n]
    return candidates[order], rows[order], scores[order]


def token_context(tokens: Sequence[str], pos: int, has_bos: bool = True) -> tuple[str, str, str]:
    """(before, token, after): the token's text and its context as the texts of the tokens around it.

    The token itself is always whole (a word piece such as ``ave`` in ``Gustave`` is shown as
    ``…Gust`` + ``ave`` + ``…``, never cut); BOS is never part of the context.
    """
    first = 1 if has_bos else 0
    before = "".join(tokens[max(first, pos - CONTEXT_BEFORE) : pos])
    after = "".join(tokens[pos + 1 : pos + 1 + CONTEXT_AFTER])
    return before, tokens[pos], after
