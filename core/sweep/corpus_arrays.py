"""The analyses' corpus-wide arrays (truncation's mean residual, mean ablation's means), computed once per sweep.

Each analysis whose registry entry declares a ``corpus`` input gets its array from the whole corpus,
before any shard: ``ensure_corpus_array`` loads the stored one when it is intact (this model's shape,
finite values, the sha256 the manifest recorded) or computes and stores it under the lock, so every
shard, worker and resumed run uses the same array. Part of the sweep driver, whose public face is
core/sweep/sweep.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.results import store

if TYPE_CHECKING:
    from horizon.core.analyses import CorpusInput


def _corpus_input(analysis: str) -> CorpusInput:
    """The corpus-wide array ``analysis``'s shards need (its registry entry's ``corpus``)."""
    corpus = registry.REGISTRY[analysis].corpus
    if corpus is None:
        raise ValueError(f"the {analysis} analysis takes no corpus-wide input")
    return corpus


def corpus_array_shape(analysis: str, model: dict[str, Any]) -> tuple[int, int]:
    """The shape of an analysis's corpus-wide array for this model (e.g. [L+1, d] mean residual, [2L+1, d] means)."""
    return _corpus_input(analysis).shape(model["n_layers"], model["d_model"])


def corpus_array_damaged(root: Path, manifest: dict[str, Any], analysis: str) -> bool:
    """Whether the stored corpus-wide array the manifest records a checksum of is missing or differs from it."""
    corpus = _corpus_input(analysis)
    recorded: str | None = manifest.get("analyses", {}).get(analysis, {}).get(corpus.checksum_key)
    if not recorded:
        return False
    try:
        array = store.load_array(root, root / corpus.file, corpus_array_shape(analysis, manifest["model"]))
        return store.array_sha256(array) != recorded
    except (OSError, ValueError, HorizonError):
        return True


def ensure_corpus_array(root: Path, manifest: dict[str, Any], analysis: str,
                         compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load an analysis's stored corpus-wide array, or compute and store it once (under the lock: one worker does it).

    Every shard, worker and resumed run uses the same stored array, so the numbers do not depend
    on how the corpus was split. A stored file is used only when it has this model's shape, only
    finite values and the sha256 the manifest recorded; anything else (missing, damaged, NaN or
    inf, a crafted file with a recomputed checksum of another shape) is computed again. A computed
    array with NaN or inf (a model that overflows) is refused: it would turn every row into NaN.
    """
    corpus = _corpus_input(analysis)
    name, key, dtype = corpus.file, corpus.checksum_key, corpus.dtype
    shape = corpus_array_shape(analysis, manifest["model"])
    with store.locked(root):
        current = store.read_manifest(root)
        recorded = current["analyses"].get(analysis, {}).get(key)
        path = root / name
        if recorded:
            try:
                array = store.load_array(root, path, shape)
                if store.array_sha256(array) == recorded:
                    return np.array(array, dtype=dtype)
            except (OSError, ValueError):
                pass
        array = np.ascontiguousarray(compute().astype(dtype))
        if array.shape != shape or not np.isfinite(array).all():
            raise HorizonError(f"{corpus.description} of this model over the corpus has "
                               f"{'NaN or infinite values' if array.shape == shape else f'shape {array.shape}'}: "
                               "the model overflows (try --dtype float32) or is damaged; nothing was written")
        store.write_array_atomic(path, array)
        digest = store.array_sha256(array)
        current["analyses"][analysis][key] = digest
        current["updated"] = store.now_iso()
        store.write_json_atomic(root / store.MANIFEST, current)
        manifest["analyses"][analysis][key] = digest
        return array
