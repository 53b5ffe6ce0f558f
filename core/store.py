"""The results store of a sweep: one directory, a manifest and long-format Parquet tables.

Layout::

    DIR/manifest.json                 settings, model, corpus, package versions, shard list + status
    DIR/prompts/shard-00003.parquet   prompt, kind, n_tokens, text
    DIR/tokens/shard-00003.parquet    prompt, position, token_id, token
    DIR/norms/shard-00003.parquet     prompt, position, token, layer, site, norm, std
    DIR/truncation/...                prompt, position, token, category, length, layer, cos, cos_raw
    DIR/horizon/...                   prompt, n_tokens, k, K, start_layer, loss_clean, loss, delta_loss, kl, top1
    DIR/attention/...                 prompt, n_queries, layer, head, mean_distance, mean_distance_no_bos, mass_*
    DIR/truncation_mu.npy             the corpus-wide mean residual [L+1, d_model] every shard centres with
    DIR/views.json                    the corpus views ``report`` shows, cached with a fingerprint of the
                                      table files they came from (``core/sweep.py``: load_views)

A *shard* is a fixed group of consecutive prompts (``shard_size``, recorded in the manifest).
Every table file of a shard is written to a temp name and renamed into place, and only then is
the shard marked done in the manifest (itself rewritten by temp file + rename, under a file lock
so that several ``--shard I/N`` workers can share one directory). A shard's file is therefore
either absent, complete and counted, or complete but not yet counted (a kill between the rename
and the manifest update): readers use only the files of shards the manifest marks done, so no
row is ever read twice or half, and ``--resume`` simply redoes shards that are not done.

Nothing here imports torch: ``open_results`` must stay fast for ``horizon report`` and the app.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from horizon.core.errors import HorizonError

FORMAT = "horizon-results"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
MU_FILE = "truncation_mu.npy"
# Tables written for every shard whatever the analyses: they let a reader show tokens and texts.
BASE_TABLES = ("prompts", "tokens")
# CLI analysis name -> table name (the issue names the analyses after the commands).
ANALYSIS_TABLES = {"norms": "norms", "truncate": "truncation", "scan": "horizon", "attention": "attention"}
ANALYSES = tuple(ANALYSIS_TABLES)
SHARD_FILE = re.compile(r"^shard-(\d{5})\.parquet$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.parquet"


def shard_path(root: Path, table: str, shard_id: int) -> Path:
    return root / table / shard_name(shard_id)


# ----------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(temp_path)`` and rename into place: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        write(temp)
        os.chmod(temp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared and read by others
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    _atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_table_atomic(path: Path, table: pa.Table) -> None:
    _atomic_write(path, lambda temp: pq.write_table(table, temp, compression="zstd"))


def write_array_atomic(path: Path, array: np.ndarray) -> None:
    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    _atomic_write(path, write)


# ----------------------------------------------------------------------------- the manifest


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """An exclusive lock on the results directory (for manifest read-modify-write)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, or a HorizonError naming what is wrong with it."""
    path = root / MANIFEST
    if not path.exists():
        raise HorizonError(f"{root} has no {MANIFEST}: it is not a results directory, or its manifest was deleted")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HorizonError(f"{path} is damaged and cannot be read ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise HorizonError(f"{path} is not a horizon results manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise HorizonError(f"{path} has format version {manifest.get('version')}; this horizon reads {FORMAT_VERSION}")
    return manifest


def update_manifest(root: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to the manifest under the directory lock and rewrite it atomically."""
    with locked(root):
        manifest = read_manifest(root)
        change(manifest)
        manifest["updated"] = now_iso()
        write_json_atomic(root / MANIFEST, manifest)
    return manifest


def settings_key(manifest: dict[str, Any]) -> dict[str, Any]:
    """What must agree for two runs to share one directory (device may differ: a cluster resumes a laptop's run)."""
    return {
        "model_hash": manifest["model"]["hash"],
        "dtype": manifest["dtype"],
        "bos": manifest["bos"],
        "corpus_sha256": manifest["corpus"]["sha256"],
        "max_tokens": manifest["corpus"]["max_tokens"],
        "shard_size": manifest["shard_size"],
    }


def settings_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between an existing manifest and a new run's."""
    problems = []
    old_key, new_key = settings_key(old), settings_key(new)
    for name, value in old_key.items():
        if new_key[name] != value:
            problems.append(f"{name} is {_short(value)} there but {_short(new_key[name])} now")
    for analysis, settings in new["analyses"].items():
        previous = old["analyses"].get(analysis)
        if previous is not None and _comparable(previous) != _comparable(settings):
            problems.append(f"{analysis} settings are {_short(_comparable(previous))} there but "
                            f"{_short(_comparable(settings))} now")
    return problems


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    # Derived values (the stored mean residual's hash) are not user settings.
    return {key: value for key, value in settings.items() if not key.startswith("_")}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------- reading


@dataclass
class Results:
    """A results directory opened for reading: manifest, intact tables, and what is damaged."""

    path: Path
    manifest: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    files: dict[str, list[Path]] = field(default_factory=dict)  # table -> readable files of done shards
    _cache: dict[str, pa.Table] = field(default_factory=dict, repr=False)

    @property
    def analyses(self) -> list[str]:
        """Analyses with at least one intact shard, in the canonical order."""
        return [name for name in ANALYSES if self.files.get(ANALYSIS_TABLES[name])]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return [] if self.manifest is None else self.manifest.get("shards", [])

    def n_done(self) -> int:
        return sum(1 for shard in self.shards if shard.get("status") == "done")

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table | None:
        """One table over all intact shards (None when no shard of it is readable)."""
        if name not in self.files or not self.files[name]:
            return None
        key = name if columns is None else f"{name}:{','.join(columns)}"
        if key not in self._cache:
            parts = [pq.read_table(file, columns=columns) for file in self.files[name]]
            self._cache[key] = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return self._cache[key]

    def mu(self) -> np.ndarray | None:
        file = self.path / MU_FILE
        if not file.exists():
            return None
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError):
            return None


def _check_file(file: Path, expected_rows: int | None) -> str | None:
    """Why a Parquet shard file cannot be used, or None when it is intact."""
    try:
        metadata = pq.read_metadata(file)
    except (OSError, pa.ArrowException) as exc:
        return f"{file} is damaged or truncated ({type(exc).__name__}); rerun with --resume to redo it"
    if expected_rows is not None and metadata.num_rows != expected_rows:
        return (f"{file} has {metadata.num_rows} rows but the manifest recorded {expected_rows}; "
                "it was changed after the sweep wrote it")
    return None


def open_results(path: str | Path) -> Results:
    """Open a results directory, keeping whatever is intact and naming every problem found.

    Raises HorizonError only when nothing at all can be read (no directory, or no manifest and
    no readable shard file).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise HorizonError(f"results directory not found: {path}")
    if not root.is_dir():
        raise HorizonError(f"{path} is a file, not a results directory")
    problems: list[str] = []
    try:
        manifest: dict[str, Any] | None = read_manifest(root)
    except HorizonError as exc:
        manifest = None
        problems.append(f"{exc}; showing the readable shard files without checking them against it")
    results = Results(path=root, manifest=manifest, problems=problems)
    tables = [*BASE_TABLES, *ANALYSIS_TABLES.values()]

    for table in tables:
        folder = root / table
        if not folder.is_dir():
            continue
        for leftover in sorted(folder.glob(".shard-*.tmp")):
            problems.append(f"{leftover} is a half-written shard (the sweep was interrupted while writing it); "
                            "it is ignored and --resume redoes that shard")

    if manifest is None:
        for table in tables:
            files = []
            for file in sorted((root / table).glob("shard-*.parquet")) if (root / table).is_dir() else []:
                problem = _check_file(file, None)
                if problem:
                    problems.append(problem)
                else:
                    files.append(file)
            if files:
                results.files[table] = files
        if not results.files:
            raise HorizonError(f"{path} has no {MANIFEST} and no readable shard file: nothing to report")
        return results

    # A table file counts once the manifest records its row count (written after the rename).
    done_rows: dict[int, dict[str, int]] = {}
    for shard in manifest.get("shards", []):
        if shard.get("rows"):
            done_rows[int(shard["id"])] = shard["rows"]
    not_done = [shard["id"] for shard in manifest.get("shards", []) if shard.get("status") != "done"]
    if not_done:
        problems.append(f"{len(not_done)} of {len(manifest['shards'])} shards are not finished "
                        f"(first: {not_done[0]}); run the same sweep with --resume to complete them")
    for table in tables:
        files = []
        folder = root / table
        for shard_id, rows in sorted(done_rows.items()):
            if table not in rows:
                continue  # that analysis was not part of the run that wrote this shard
            file = folder / shard_name(shard_id)
            if not file.exists():
                problems.append(f"{file} is missing although the manifest marks shard {shard_id} done; "
                                "rerun with --resume to redo it")
                continue
            problem = _check_file(file, rows[table])
            if problem:
                problems.append(problem)
            else:
                files.append(file)
        if folder.is_dir():
            for file in sorted(folder.glob("shard-*.parquet")):
                match = SHARD_FILE.match(file.name)
                if match and table not in done_rows.get(int(match.group(1)), {}):
                    problems.append(f"{file} belongs to a shard the manifest does not mark done "
                                    "(interrupted before it was recorded); it is ignored")
        if files:
            results.files[table] = files
    return results


def mark_damaged_shards(root: Path, results: Results) -> list[int]:
    """Shard ids whose recorded files are missing or unreadable: ``--resume`` redoes them."""
    if results.manifest is None:
        return []
    bad: list[int] = []
    for shard in results.manifest.get("shards", []):
        for table, rows in shard.get("rows", {}).items():
            file = shard_path(root, table, int(shard["id"]))
            if not file.exists() or _check_file(file, rows) is not None:
                bad.append(int(shard["id"]))
                break
    return bad
