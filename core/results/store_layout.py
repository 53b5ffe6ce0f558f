"""The names of a results directory: its files, its table folders and the columns each table must hold.

The layout itself is described in ``core/results/store.py``; the analyses' tables and schemas come from the
registry (core/analyses), so these are computed on use.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from horizon.core import analyses as registry

FORMAT = "horizon-results"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
# Tables written for every shard whatever the analyses: they let a reader show tokens and texts.
BASE_TABLES = ("prompts", "tokens")
SHARD_FILE = re.compile(r"^shard-(\d{5})\.parquet$")
QUARANTINE = "quarantine"
# Tables renamed after their analyses: results directories written under the old names are read
# under the new ones (report, inspect, merge); a sweep refuses to add to them (``legacy_tables``).
# Each analysis names its own former folders (core/analyses: ``former_tables``); only the built-in
# analyses have any, so this is read once, at import.
LEGACY_TABLES = {old: analysis.table for analysis in registry.REGISTRY.values() for old in analysis.former_tables}
# What each base table must hold (more columns are fine: a later version may add one). The
# analyses' tables and schemas come from the registry (core/analyses): see ``schema``.
BASE_SCHEMAS: dict[str, dict[str, pa.DataType]] = {
    "prompts": {"prompt": pa.int32(), "n_tokens": pa.int32(), "text": pa.string()},
    "tokens": {"prompt": pa.int32(), "position": pa.int32(), "token_id": pa.int32(), "token": pa.string()},
}


def analysis_tables() -> dict[str, str]:
    """Analysis name -> table name, for every registered analysis (core/analyses)."""
    return registry.tables()


def all_tables() -> tuple[str, ...]:
    """Every table a sweep may write: the base tables, then one per registered analysis."""
    return (*BASE_TABLES, *registry.tables().values())


def legacy_tables(manifest: dict[str, Any]) -> list[str]:
    """The old table names a manifest records (a results directory from before the tables' renaming)."""
    return sorted({table for shard in manifest.get("shards", []) if isinstance(shard, dict)
                   for table in (shard.get("rows") or {}) if table in LEGACY_TABLES})


def _read_legacy(manifest: dict[str, Any]) -> dict[str, str]:
    """Rename a legacy manifest's tables in memory; returns new table name -> the folder holding it."""
    folders: dict[str, str] = {}
    for shard in manifest.get("shards", []):
        for key in ("rows", "sha256"):
            recorded = shard.get(key) or {}
            for old, new in LEGACY_TABLES.items():
                if old in recorded:
                    recorded[new] = recorded.pop(old)
                    folders[new] = old
    return folders


def corpus_files() -> tuple[str, ...]:
    """The corpus-wide arrays' files a sweep computes once before any shard (each analysis's ``corpus``
    in core/analyses names its own; merge carries them over)."""
    return tuple(analysis.corpus.file for analysis in registry.REGISTRY.values() if analysis.corpus is not None)


def table_schema(table: str) -> dict[str, pa.DataType] | None:
    if table in BASE_SCHEMAS:
        return BASE_SCHEMAS[table]
    return next((a.schema for a in registry.REGISTRY.values() if a.table == table), None)



def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.parquet"


def shard_path(root: Path, table: str, shard_id: int) -> Path:
    return root / table / shard_name(shard_id)


CLAIMS = ".claims"


def top_names() -> tuple[str, ...]:
    """The names a sweep writes at the top of a results directory (besides the table folders)."""
    return (MANIFEST, LOCK, "views.json", *corpus_files(), QUARANTINE, CLAIMS)
