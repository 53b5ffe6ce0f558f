"""Corpus views: each registered analysis's aggregate over the intact shards, and their cache (views.json).

``report``, ``merge`` and the app's results mode read the views; a sweep writes the cache at its
end so that ``report`` needs no torch. Reads only the Parquet tables (no model): each analysis's
own ``view`` (core/analyses) does the statistics, so a sweep and a single-prompt run over the
same prompts agree exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.results import confined, store

VIEWS_FILE = "views.json"


def corpus_views(results: store.Results) -> dict[str, Any]:
    """The aggregate of every analysis over the intact shards, as the single-prompt commands show it."""
    manifest = results.manifest or {}
    has_bos = bool(manifest.get("bos", {}).get("enabled", True))
    views: dict[str, Any] = {}
    for name, analysis in registry.REGISTRY.items():
        table = results.table(analysis.table, columns=analysis.view_columns)
        if table is None or table.num_rows == 0:
            continue
        try:
            views[name] = analysis.view(results, table, manifest, has_bos)
        except Exception as exc:  # damaged data of any shape: name it and show the other analyses
            reason = str(exc).splitlines()[0][:200] if str(exc) else ""
            results.problems.append(f"the {name} table cannot be summarised ({type(exc).__name__}: {reason})")
    return views


def views_fingerprint(results: store.Results) -> str:
    """Identifies the exact set of table files a view was computed from (name, size, mtime)."""
    digest = hashlib.sha256()
    for table in sorted(results.files):
        for file in results.files[table]:
            info = confined.lstat(results.path, file)
            digest.update(f"{table}/{file.name}:{info.st_size}:{info.st_mtime_ns};".encode())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in {VIEWS_FILE}")


def views_sha256(views: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(views, sort_keys=True, default=_plain).encode()).hexdigest()


def write_views(root: str | Path) -> dict[str, Any]:
    """Compute the corpus views and store them beside the tables, so ``report`` needs no torch."""
    results = store.open_results(root)
    views = corpus_views(results)  # may leave out a file whose data turns out damaged: fingerprint after it
    plain = json.loads(json.dumps(views, default=_plain))
    payload = {"fingerprint": views_fingerprint(results), "sha256": views_sha256(plain), "views": plain}
    data = json.dumps(payload).encode("utf-8")
    store.atomic_write(results.path / VIEWS_FILE, lambda handle: handle.write(data), results.path)
    return views


def load_views(results: store.Results) -> dict[str, Any]:
    """The stored views when they match the intact files exactly, else computed now (slower: imports torch).

    The cache is used only when its fingerprint names exactly the intact files and its content
    hashes to the sha256 it records; anything else (damaged, edited, of another shape) is
    named in ``results.problems`` and the views are computed from the tables.
    """
    path = results.path / VIEWS_FILE
    if confined.kind(results.path, path) != "missing":
        try:
            payload = store.read_json_file(results.path, path, "views cache")
            if not isinstance(payload, dict):
                raise ValueError("not an object")
            views = payload.get("views")
            if payload.get("fingerprint") == views_fingerprint(results):
                if (isinstance(views, dict) and set(views) <= set(registry.REGISTRY)
                        and all(isinstance(view, dict) for view in views.values())
                        and payload.get("sha256") == views_sha256(views)):
                    return views
                results.problems.append(f"{path} does not hold what it claims (its content does not match its "
                                        "checksum); the views are computed from the tables")
        except HorizonError as exc:  # a link, a FIFO, too large, nested too deeply: only a cache
            results.problems.append(f"{exc}; the views are computed from the tables")
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            # A damaged cache is only a cache: compute the views again.
            results.problems.append(f"{path} is damaged ({type(exc).__name__}); the views are computed from the "
                                    "tables")
    return corpus_views(results)
