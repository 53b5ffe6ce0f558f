"""Rebuilding a lost or damaged manifest from the shard files that provably belong to the run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.results import confined, store


def missing_tables(manifest: dict[str, Any], shard: dict[str, Any]) -> list[str]:
    """The tables a shard still lacks: the base tables and those of the manifest's analyses."""
    wanted = [*store.BASE_TABLES, *(registry.REGISTRY[name].table for name in manifest["analyses"]
                                    if name in registry.REGISTRY)]
    return [table for table in wanted if table not in shard.get("rows", {})]


def rebuild_manifest(root: Path, new: dict[str, Any], texts: Sequence[str],
                      damaged: str | None) -> tuple[dict[str, Any], list[str]]:
    """A manifest for this run that adopts every shard file that provably belongs to it.

    A file is adopted when it reads completely, has its table's schema, covers exactly its
    shard's prompts, and has the row count (and the k, start layer and length values) this
    run's corpus, tokens and settings give; the prompts table must hold this corpus's texts and
    token counts. What a file cannot show (the model's weights, scan tol/source/final) is taken
    on trust from this run. Everything else is left for ``tidy`` to move to the quarantine folder.
    """
    manifest = json.loads(json.dumps(new))
    moved = store.quarantine(root, [root / store.MANIFEST]) if damaged is not None else None
    n_layers = manifest["model"]["n_layers"]
    analyses = manifest["analyses"]
    adopted = 0
    for shard in manifest["shards"]:
        shard_id = int(shard["id"])
        first, last = shard["prompts"]
        prompts = list(range(first, last + 1))
        base = _read_whole(root, store.shard_path(root, "prompts", shard_id), "prompts")
        if base is None or base.column("prompt").to_pylist() != prompts \
                or base.column("text").to_pylist() != list(texts[first:last + 1]) \
                or sum(base.column("n_tokens").to_pylist()) != shard["n_tokens"]:
            continue  # without its prompts table nothing in this shard can be checked
        lengths = base.column("n_tokens").to_pylist()
        expected = {"prompts": len(prompts), "tokens": sum(lengths)}
        checks = {}
        for name in analyses:
            analysis = registry.REGISTRY[name]
            if analysis.expected_rows is not None:
                expected[analysis.table] = analysis.expected_rows(lengths, analyses[name], manifest["model"])
            checks[analysis.table] = (analysis.fits, analyses[name])
        for table in [*store.BASE_TABLES, *(registry.REGISTRY[name].table for name in analyses)]:
            path = store.shard_path(root, table, shard_id)
            data = base if table == "prompts" else _read_whole(root, path, table)
            if data is None or data.num_rows != expected.get(table, -1) \
                    or set(data.column("prompt").to_pylist()) != set(prompts):
                continue
            if table in checks and not checks[table][0](data, checks[table][1]):
                continue
            shard["rows"][table] = data.num_rows
            shard.setdefault("sha256", {})[table] = store.file_sha256(root, path)
            adopted += 1
        shard["status"] = "pending" if missing_tables(manifest, shard) else "done"
    # A corpus-wide array read back after the sweep (truncate's mean residual) is adopted with the
    # shards made with it; the others are computed again before any shard that needs them runs.
    for name, entry in registry.REGISTRY.items():
        wanted = entry.corpus
        if wanted is None or not wanted.kept_after_sweep or name not in analyses \
                or not any(entry.table in shard["rows"] for shard in manifest["shards"]):
            continue
        try:
            array = store.load_array(root, root / wanted.file, wanted.shape(n_layers, manifest["model"]["d_model"]))
            analyses[name][wanted.checksum_key] = store.array_sha256(array)
        except (OSError, ValueError, HorizonError):
            pass  # missing, damaged, a link or of another shape: computed again before any of its shards runs
    manifest["rebuilt"] = store.now_iso()
    done = sum(1 for shard in manifest["shards"] if shard["status"] == "done")
    why = f"it was damaged (kept in {moved})" if moved is not None else "it was missing"
    notes = [f"rebuilt {root / store.MANIFEST} ({why}) from {adopted} shard file(s) that match this run's corpus, "
             f"tokens and settings: {done}/{len(manifest['shards'])} shards done; the model weights and the scan's "
             "tol, source, final readout and ablation cannot be checked from the files and are taken from this run"]
    return manifest, notes


def _read_whole(root: Path, path: Path, table: str) -> pa.Table | None:
    """The table in ``path`` when it is a regular file, complete and has its schema, else None."""
    if not confined.is_file(root, path) or store.check_file(path, None, table, root=root) is not None:
        return None
    try:
        with confined.open_read(root, path) as handle:
            return pq.read_table(handle)
    except (OSError, pa.ArrowException, ValueError, HorizonError):
        return None
