"""Damage checks of a results directory: what in it cannot be used, never followed or read past a bound.

A table file's footer, schema, row count, sha256 and index values (``check_file``,
``index_problem``); the stored corpus-wide arrays (``corpus_problems``); and what a table folder holds
besides the files the manifest records: links and special files (``foreign_entries``), temp files
of interrupted writes (``leftover_temps``), strays (``strays``) and the quarantine's count.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from horizon.core import analyses as registry
from horizon.core.analyses import CorpusInput
from horizon.core.errors import HorizonError
from horizon.core.results import confined
from horizon.core.results.store_files import array_sha256, load_array
from horizon.core.results.store_layout import (
    CLAIMS,
    LEGACY_TABLES,
    QUARANTINE,
    SHARD_FILE,
    all_tables,
    table_schema,
    top_names,
)

# No table a sweep writes packs more rows into a byte of Parquet than this: the densest measured, the
# tokens table of 4096-token prompts of one repeated token, holds 2.9 rows per byte (norms and
# truncate, whose values are floats, under 1). A file claiming more would decompress to far more
# memory than its size suggests (20 million rows in 520 KB), so it is not read.
MAX_ROWS_PER_BYTE = 16
ROWS_SLACK = 4096  # tiny files: a footer alone is a few hundred bytes


def corpus_shape(corpus: CorpusInput, manifest: dict[str, Any] | None) -> tuple[int, int] | None:
    """The shape of a stored corpus-wide array for the manifest's model (None when the manifest does not say)."""
    model = (manifest or {}).get("model") or {}
    if not model.get("n_layers") or not model.get("d_model"):
        return None
    return corpus.shape(model["n_layers"], model["d_model"])


def index_problem(file: Path, table: pa.Table, bounds: dict[str, tuple[int, int]]) -> str | None:
    """Why ``table``'s index columns cannot be from its shard (a value out of ``bounds``, or missing), or None.

    Readers size arrays by these values (a prompt number, a layer, a position), so a crafted
    value would make them allocate without bound: such a file is left out instead.
    """
    import pyarrow.compute as pc

    for column, (low, high) in bounds.items():
        if column not in table.column_names:
            continue
        values = table.column(column)
        if values.null_count:
            return f"{file} has missing {column} values; it is left out, and --resume redoes that shard"
        if len(values) == 0:
            continue
        extremes = pc.min_max(values)
        smallest, largest = extremes["min"].as_py(), extremes["max"].as_py()
        if smallest < low or largest > high:
            return (f"{file} holds {column} values {smallest}..{largest}, outside the {low}..{high} its shard and "
                    "model allow; it is left out, and --resume redoes that shard")
    return None


def check_file(file: Path, expected_rows: int | None, table: str | None = None,
               expected_sha: str | None = None, full: bool = False, root: Path | None = None) -> str | None:
    """Why a Parquet shard file cannot be used, or None when it is intact.

    Checks that it is a regular file reached without a link, its footer, the schema of
    ``table``, its row count (against its size, and the recorded one) and, when recorded, the
    sha256; ``full`` also reads every data page (for files with no recorded sha256). ``root``:
    the results directory (default: the folder above the file's table folder).
    """
    root = Path(root) if root is not None else file.parent.parent
    try:
        with confined.open_read(root, file) as handle:
            return _check_open_file(file, handle, expected_rows, table, expected_sha, full)
    except confined.Foreign as exc:
        return (f"{file} is {exc.what}: horizon never follows a link or opens a special file inside a results "
                "directory; it is not read")
    except FileNotFoundError:
        return f"{file} is missing; rerun with --resume to redo it"
    except OSError as exc:
        return f"{file} cannot be read ({exc.strerror or type(exc).__name__})"


def _check_open_file(file: Path, handle: BinaryIO, expected_rows: int | None, table: str | None,
                     expected_sha: str | None, full: bool) -> str | None:
    size = os.fstat(handle.fileno()).st_size
    try:
        metadata = pq.read_metadata(handle)
        schema = metadata.schema.to_arrow_schema()
    except (OSError, pa.ArrowException, ValueError) as exc:
        return f"{file} is damaged or truncated ({type(exc).__name__}); rerun with --resume to redo it"
    expected_schema = table_schema(table) if table is not None else None
    if expected_schema is not None:
        for column, kind in expected_schema.items():
            index = schema.get_field_index(column)
            if index < 0 or schema.field(index).type != kind:
                found = "missing" if index < 0 else str(schema.field(index).type)
                return (f"{file} does not hold a {table} table (column {column} is {found}, expected {kind}); "
                        "rerun with --resume to redo it")
    if metadata.num_rows > MAX_ROWS_PER_BYTE * size + ROWS_SLACK:
        return (f"{file} claims {metadata.num_rows} rows in {size} bytes, more than any table horizon writes could "
                "hold; it is not read")
    if expected_rows is not None and metadata.num_rows != expected_rows:
        return (f"{file} has {metadata.num_rows} rows but the manifest recorded {expected_rows}; "
                "it was changed after the sweep wrote it")
    if expected_sha is not None:
        handle.seek(0)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
        if digest.hexdigest() != expected_sha:
            return (f"{file} does not match the checksum the manifest recorded: it was changed or damaged after "
                    "the sweep wrote it; rerun with --resume to redo it")
    elif full:
        try:
            handle.seek(0)
            pq.read_table(handle)
        except (OSError, pa.ArrowException, ValueError) as exc:
            return f"{file} is damaged ({type(exc).__name__} while reading its data); rerun with --resume to redo it"
    return None


def _recorded(manifest: dict[str, Any]) -> dict[int, tuple[dict[str, int], dict[str, str]]]:
    """shard id -> (rows, sha256) of the table files the manifest records."""
    return {int(shard["id"]): (shard.get("rows") or {}, shard.get("sha256") or {})
            for shard in manifest.get("shards", [])}


def folder_entries(root: Path, folder: Path) -> list[tuple[str, str]]:
    """The entries of a real folder inside ``root`` (none when it is missing or foreign)."""
    try:
        return confined.entries(root, folder) if folder == root or confined.kind(root, folder) == "dir" else []
    except (OSError, HorizonError):
        return []


def _table_folders(root: Path) -> list[str]:
    return list(dict.fromkeys((*all_tables(), *LEGACY_TABLES)))


def foreign_entries(root: Path) -> list[tuple[Path, str]]:
    """Links and special files where the store reads or writes: (path, what it is), never followed.

    Looks at the names a sweep writes (manifest, views cache, lock, arrays, quarantine, claims and
    table folders) and at every entry of the table and claims folders; anything else in the
    directory is not the store's and is never touched.
    """
    found: list[tuple[Path, str]] = []
    known = {*top_names(), *_table_folders(root)}
    for name, what in folder_entries(root, root):
        if name in known and what not in ("file", "dir"):
            found.append((root / name, what))
    for folder in (*_table_folders(root), CLAIMS):
        for name, what in folder_entries(root, root / folder):
            if what not in ("file", "dir"):
                found.append((root / folder / name, what))
    return found


def foreign_problem(entries: list[tuple[Path, str]]) -> str:
    path, what = entries[0]
    more = f" (and {len(entries) - 1} more such entries)" if len(entries) > 1 else ""
    return (f"{path} is {what}{more}: horizon never follows a link or opens a special file inside a results "
            "directory, so it is not read")


def leftover_temps(root: Path) -> list[Path]:
    """Temp files of interrupted writes, in the directory and its table folders (regular files only)."""
    found = [root / name for name, what in folder_entries(root, root) if what == "file" and _is_temp_name(name)]
    for table in all_tables():
        found += [root / table / name for name, what in folder_entries(root, root / table)
                  if what == "file" and _is_temp_name(name)]
    return found


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def strays(root: Path, manifest: dict[str, Any]) -> list[Path]:
    """Everything in a table folder that is not a file the manifest records (what a Parquet reader would add).

    Links and special files are not strays: they are foreign (``foreign_entries``) and left alone.
    """
    recorded = _recorded(manifest)
    found = []
    for table in all_tables():
        for name, what in folder_entries(root, root / table):
            if name.startswith((".", "_")) or what not in ("file", "dir"):
                continue  # hidden: temp files (handled apart); Parquet readers skip these names too
            match = SHARD_FILE.match(name)
            if match and what == "file" and table in recorded.get(int(match.group(1)), ({}, {}))[0]:
                continue
            found.append(root / table / name)
    return found


def _count_quarantined(root: Path) -> int:
    """Regular files under ``quarantine/`` (its layout is stamp/table/file: three levels), links not followed."""
    count = 0
    level = [root / QUARANTINE] if confined.is_dir(root, root / QUARANTINE) else []
    for _ in range(3):
        below: list[Path] = []
        for folder in level:
            for name, what in folder_entries(root, folder):
                if what == "file":
                    count += 1
                elif what == "dir" and len(below) < 10_000:
                    below.append(folder / name)
        level = below
    return count


def corpus_problems(root: Path, manifest: dict[str, Any]) -> list[str]:
    """What is wrong with the stored corpus-wide arrays read back after the sweep (``kept_after_sweep``,
    e.g. the corpus mean residual truncation centres with), where the manifest records one's checksum."""
    problems = []
    for name, analysis in registry.REGISTRY.items():
        corpus = analysis.corpus
        if corpus is None or not corpus.kept_after_sweep:
            continue
        problem = _corpus_problem(root, manifest, name, corpus)
        if problem:
            problems.append(problem)
    return problems


def _corpus_problem(root: Path, manifest: dict[str, Any], name: str, corpus: CorpusInput) -> str | None:
    settings = manifest.get("analyses", {}).get(name, {})
    recorded = settings.get(corpus.checksum_key) if isinstance(settings, dict) else None
    if not recorded:
        return None
    path = root / corpus.file
    try:
        ok = array_sha256(load_array(root, path, corpus_shape(corpus, manifest))) == recorded
    except FileNotFoundError:
        return f"{path} is missing (the {name} tables are intact); --resume computes it again"
    except (OSError, ValueError, HorizonError):
        ok = False
    if not ok:
        return (f"{path} is damaged or does not match the checksum the manifest recorded (the {name} tables "
                "are intact); --resume computes it again")
    return None
