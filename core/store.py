"""The results store of a sweep: one directory, a manifest and long-format Parquet tables.

Layout::

    DIR/manifest.json                 settings, model, corpus, package versions, shard list + status
    DIR/prompts/shard-00003.parquet   prompt, kind, n_tokens, text
    DIR/tokens/shard-00003.parquet    prompt, position, token_id, token
    DIR/norms/shard-00003.parquet     prompt, position, token, layer, site, norm, std
    DIR/truncate/...                  prompt, position, token, category, length, layer, cos, cos_raw
    DIR/scan/...                      prompt, n_tokens, k, K, start_layer, loss_clean, loss, delta_loss, kl, top1
                                      (+ only_layer: -1, or N on the rows of the layer x k matrix)
    DIR/attention/...                 prompt, n_queries, layer, head, mean_distance, mean_distance_no_bos, mass_*
    DIR/truncation_mu.npy             the corpus-wide mean residual [L+1, d_model] every shard centres with
    DIR/views.json                    the corpus views ``report`` shows, cached with a fingerprint of the
                                      table files they came from (``core/views.py``: load_views)

A *shard* is a fixed group of consecutive prompts (``shard_size``, recorded in the manifest).
Every table file of a shard is written to a temp name and renamed into place, and only then is
the shard marked done in the manifest (itself rewritten by temp file + rename, under a file lock
so that several ``--shard I/N`` workers can share one directory). A shard's file is therefore
either absent, complete and counted, or complete but not yet counted (a kill between the rename
and the manifest update): readers use only the files of shards the manifest marks done, so no
row is ever read twice or half, and ``--resume`` simply redoes shards that are not done.

Every table file's row count and sha256 are recorded with it, so a file changed or damaged
after the write (even one whose Parquet footer still reads) is named and never read. Temp files
carry their writer's host and pid (``.NAME.HOST-PID.XXXX.tmp``): a run that joins the directory
removes those of dead writers, and moves every file the manifest does not record (strays, damaged
files) into ``DIR/quarantine/<time>/``, so that any Parquet reader of ``DIR/<table>`` sees exactly
the recorded rows. Those moves, and the rename of a shard's files, happen under the lock.

A results directory may come from someone else: every path below it is opened, moved and removed
through ``core/confined.py`` (never through a link, only regular files), and every size it claims
(JSON, array headers, row counts, index values) is bounded before anything is allocated by it.

Nothing here imports torch: ``open_results`` must stay fast for ``horizon report`` and the app.

This module is over 400 lines on purpose: it is everything about the files of a results
directory (atomic writes, the manifest, damage checks, quarantine, tidying, merge), so the
crash-consistency rule above is kept in one place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from horizon.core import analyses as registry
from horizon.core import confined
from horizon.core.errors import HorizonError

FORMAT = "horizon-results"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
MU_FILE = "truncation_mu.npy"
ABLATION_MEANS_FILE = "ablation_means.npy"  # the scan's corpus-wide means with --ablation mean [2L+1, d_model]
# The corpus-wide arrays a sweep computes once before any shard (merge carries them over).
CORPUS_FILES = (MU_FILE, ABLATION_MEANS_FILE)
# Tables written for every shard whatever the analyses: they let a reader show tokens and texts.
BASE_TABLES = ("prompts", "tokens")
SHARD_FILE = re.compile(r"^shard-(\d{5})\.parquet$")
QUARANTINE = "quarantine"
# Tables renamed after their analyses: results directories written under the old names are read
# under the new ones (report, inspect, merge); a sweep refuses to add to them (``legacy_tables``).
LEGACY_TABLES = {"horizon": "scan", "truncation": "truncate"}
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


def table_schema(table: str) -> dict[str, pa.DataType] | None:
    if table in BASE_SCHEMAS:
        return BASE_SCHEMAS[table]
    return next((a.schema for a in registry.REGISTRY.values() if a.table == table), None)


def __getattr__(name: str) -> Any:
    # The registry can grow after import (a test registers an analysis), so these are computed on use.
    if name == "ANALYSIS_TABLES":
        return analysis_tables()
    if name == "ANALYSES":
        return registry.names()
    if name == "TABLES":
        return all_tables()
    raise AttributeError(name)


class WriteError(HorizonError):
    """A file of the store could not be written (read-only place, a file in the way, a full disk)."""

    def __init__(self, path: Path, exc: OSError) -> None:
        self.path = path
        cause = exc.strerror or str(exc) or type(exc).__name__
        if exc.errno == errno.ENOSPC:
            cause = "no space left on the device"
        elif exc.errno == errno.EROFS:
            cause = "the filesystem is read-only"
        elif isinstance(exc, NotADirectoryError) or exc.errno == errno.ENOTDIR:
            blocker = next((parent for parent in path.parents if parent.is_file()), None)
            cause = f"{blocker} is a file, not a directory" if blocker else cause
        super().__init__(f"cannot write {path}: {cause}")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.parquet"


def shard_path(root: Path, table: str, shard_id: int) -> Path:
    return root / table / shard_name(shard_id)


# ----------------------------------------------------------------------------- atomic writes


def temp_tag() -> str:
    """``HOST-PID`` of this process, as temp file names carry it (dots and dashes made safe)."""
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def stage(path: Path, write: Callable[[BinaryIO], object], root: Path | None = None) -> Path:
    """Write through ``write(handle)`` beside ``path`` and fsync it; ``commit`` renames it into place.

    ``root``: the results directory ``path`` is inside (default: ``path``'s own folder); no link
    below it is followed (core/confined.py).
    """
    root = Path(root) if root is not None else Path(path).parent
    try:
        handle, temp = confined.create(root, Path(path).parent, f".{Path(path).name}.{temp_tag()}.", ".tmp")
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as exc:
        with contextlib.suppress(OSError, HorizonError):
            confined.unlink(root, temp)
        if isinstance(exc, OSError):
            raise WriteError(path, exc) from None
        raise
    return temp


def commit(temp: Path, path: Path, root: Path | None = None) -> None:
    root = Path(root) if root is not None else Path(path).parent
    try:
        confined.replace(root, temp, path)
    except (OSError, HorizonError) as exc:
        with contextlib.suppress(OSError, HorizonError):
            confined.unlink(root, temp)
        if isinstance(exc, OSError):
            raise WriteError(path, exc) from None
        raise


def atomic_write(path: Path, write: Callable[[BinaryIO], object], root: Path | None = None) -> None:
    """Write through ``write(handle)`` and rename into place: readers see all or nothing."""
    commit(stage(path, write, root), path, root)


def write_json_atomic(path: Path, payload: dict[str, Any], root: Path | None = None) -> None:
    data = (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data), root)


def write_table_atomic(path: Path, table: pa.Table, root: Path | None = None) -> None:
    atomic_write(path, lambda handle: pq.write_table(table, handle, compression="zstd"), root)


def stage_table(path: Path, table: pa.Table, root: Path | None = None) -> Path:
    return stage(path, lambda handle: pq.write_table(table, handle, compression="zstd"), root)


def write_array_atomic(path: Path, array: np.ndarray, root: Path | None = None) -> None:
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False), root)


def load_array(root: Path, path: Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A stored ``.npy`` array of floats, checked before anything is allocated.

    Its header's shape must match the file's size (and ``shape``, when given); only float
    dtypes are read and every value must be finite. ValueError names what is wrong;
    FileNotFoundError and ``Foreign`` (a link, a FIFO) pass through.
    """
    with confined.open_read(root, path) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                stored_shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                stored_shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"npy format version {version}")
        except (ValueError, SyntaxError, EOFError, RecursionError, TypeError) as exc:
            raise ValueError(f"not a readable .npy file ({type(exc).__name__})") from None
        if dtype.kind != "f" or dtype.hasobject:
            raise ValueError(f"holds {dtype}, not floats")
        if shape is not None and tuple(stored_shape) != tuple(shape):
            raise ValueError(f"has shape {tuple(stored_shape)}, this run needs {tuple(shape)}")
        count = math.prod(stored_shape)
        if count * dtype.itemsize != size - handle.tell():
            raise ValueError(f"its header claims {count} values, its {size} bytes hold another number")
        data = handle.read()
    array = np.frombuffer(data, dtype=dtype).reshape(stored_shape, order="F" if fortran else "C")
    if not np.isfinite(array).all():
        raise ValueError("holds NaN or infinite values")
    return array


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# ----------------------------------------------------------------------------- the manifest


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """An exclusive lock on the results directory (for manifest read-modify-write)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = confined.open_lock(root, root / LOCK)
    except OSError as exc:
        raise WriteError(root / LOCK, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# The most a manifest or views cache may hold: far above what any sweep writes (a shard's entry is
# under 1 KB), and small enough that parsing it stays within a few hundred MB.
MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json_file(root: Path, path: Path, what: str) -> Any:
    """The JSON in ``path`` (inside ``root``): a regular file reached without a link, at most MAX_JSON_BYTES.

    FileNotFoundError passes through; everything else that is wrong is one HorizonError line.
    """
    try:
        raw = confined.read_bytes(root, path, MAX_JSON_BYTES)
    except confined.Foreign as exc:
        raise HorizonError(f"{path} is {exc.what}, not a regular file; horizon never follows a link or opens a "
                           f"special file inside a results directory: the {what} is not read") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise HorizonError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise HorizonError(f"{path} is damaged and cannot be read (its JSON is nested too deeply)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HorizonError(f"{path} is damaged and cannot be read ({type(exc).__name__})") from None


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, or a HorizonError naming what is wrong with it."""
    path = root / MANIFEST
    try:
        manifest = read_json_file(root, path, "manifest")
    except FileNotFoundError:
        raise HorizonError(f"{root} has no {MANIFEST}: it is not a results directory, or its manifest was "
                           "deleted") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise HorizonError(f"{path} is not a horizon results manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise HorizonError(f"{path} has format version {_short(manifest.get('version'))}; this horizon reads "
                           f"{FORMAT_VERSION}")
    problem = structure_problem(manifest)
    if problem:
        raise HorizonError(f"{path} is damaged: {problem}")
    return manifest


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# What a manifest may claim about its model: more than any model has means the manifest is damaged
# (a reader sizes arrays by these numbers, so they are bounded before anything is allocated).
MODEL_LIMITS = {"n_layers": 1024, "d_model": 1 << 17, "n_heads": 1024, "n_kv_heads": 1024, "n_ctx": 1 << 24}


def _model_problem(model: Any) -> str | None:
    if not (isinstance(model, dict) and isinstance(model.get("hash"), str) and _is_int(model.get("n_layers"))):
        return f"model should be an object with a hash and n_layers, it is {_short(model)}"
    for key, limit in MODEL_LIMITS.items():
        value = model.get(key)
        if (key == "n_layers" or value is not None) and not (_is_int(value) and 1 <= value <= limit):
            return f"model.{key} should be an integer from 1 to {limit}, it is {_short(value)}"
    return None


def structure_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the structure, types or bounds of a manifest (valid JSON is not enough), or None."""
    if "shards" not in manifest:
        return None if set(manifest) <= {"format", "version", "runs", "updated"} else "it has no shard list"
    problem = _model_problem(manifest.get("model"))
    if problem:
        return problem
    checks: list[tuple[str, Any, Callable[[Any], bool], str]] = [
        ("dtype", manifest.get("dtype"), lambda v: isinstance(v, str), "a string"),
        ("bos", manifest.get("bos"), lambda v: isinstance(v, dict) and isinstance(v.get("enabled"), bool),
         "an object with enabled true/false"),
        ("corpus", manifest.get("corpus"), lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str)
         and _is_int(v.get("n_prompts")) and v["n_prompts"] >= 1
         and (v.get("max_tokens") is None or _is_int(v.get("max_tokens"))),
         "an object with sha256, n_prompts and max_tokens"),
        ("analyses", manifest.get("analyses"), lambda v: isinstance(v, dict) and all(
            name in registry.REGISTRY and isinstance(settings, dict) for name, settings in v.items()),
         "an object of known analyses"),
        ("shard_size", manifest.get("shard_size"), lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("shards", manifest.get("shards"), lambda v: isinstance(v, list), "a list"),
        ("runs", manifest.get("runs", []), lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
         "a list of objects"),
    ]
    for name, value, ok, expected in checks:
        if not ok(value):
            return f"{name} should be {expected}, it is {_short(value)}"
    n_prompts, size = manifest["corpus"]["n_prompts"], manifest["shard_size"]
    # The shards cut the corpus into consecutive groups of shard_size prompts (sweep_settings.plan_shards):
    # a list of another length or other ranges does not describe this corpus.
    if len(manifest["shards"]) != -(-n_prompts // size):
        return (f"it lists {len(manifest['shards'])} shards, but {n_prompts} prompts in shards of {size} make "
                f"{-(-n_prompts // size)}")
    n_ctx = manifest["model"].get("n_ctx") or MODEL_LIMITS["n_ctx"]
    for index, shard in enumerate(manifest["shards"]):
        where = f"shards[{index}]"
        if not isinstance(shard, dict):
            return f"{where} should be an object"
        if shard.get("id") != index:
            return f"{where}.id should be {index}, it is {_short(shard.get('id'))}"
        prompts = shard.get("prompts")
        expected_range = [index * size, min((index + 1) * size, n_prompts) - 1]
        if prompts != expected_range or not all(_is_int(p) for p in prompts):
            return f"{where}.prompts should be {expected_range}, it is {_short(prompts)}"
        n_tokens = shard.get("n_tokens")
        if not (_is_int(n_tokens) and 0 <= n_tokens <= (prompts[1] - prompts[0] + 1) * n_ctx) \
                or shard.get("status") not in ("pending", "done"):
            return f"{where} should have an integer n_tokens (at most n_ctx per prompt) and a status pending or done"
        rows = shard.get("rows")
        if not isinstance(rows, dict) or any(table not in (*all_tables(), *LEGACY_TABLES) or not _is_int(count)
                                             or count < 0
                                             for table, count in rows.items()):
            return f"{where}.rows should map table names to row counts, it is {_short(rows)}"
        sums = shard.get("sha256", {})
        if not isinstance(sums, dict) or any(not isinstance(value, str) for value in sums.values()):
            return f"{where}.sha256 should map table names to hex digests"
    return None


def update_manifest(root: Path, change: Callable[[dict[str, Any]], None], lock: bool = True) -> dict[str, Any]:
    """Apply ``change`` to the manifest under the directory lock and rewrite it atomically.

    ``lock=False``: the caller already holds the lock.
    """
    with locked(root) if lock else contextlib.nullcontext():
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
        "n_prompts": manifest["corpus"]["n_prompts"],
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


# No table a sweep writes packs more rows into a byte of Parquet than this: the densest measured, the
# tokens table of 4096-token prompts of one repeated token, holds 2.9 rows per byte (norms and
# truncate, whose values are floats, under 1). A file claiming more would decompress to far more
# memory than its size suggests (20 million rows in 520 KB), so it is not read.
MAX_ROWS_PER_BYTE = 16
ROWS_SLACK = 4096  # tiny files: a footer alone is a few hundred bytes


class PromptLists(dict[int, list[Any]]):
    """Prompt number -> a list (token ids or texts); a prompt with no rows reads as an empty list.

    Sized by the rows present, never by a stored prompt number (a crafted number cannot make it large).
    """

    def __missing__(self, key: int) -> list[Any]:
        return []


@dataclass
class Results:
    """A results directory opened for reading: manifest, intact tables, and what is damaged."""

    path: Path
    manifest: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    files: dict[str, list[Path]] = field(default_factory=dict)  # table -> readable files of done shards
    notes: list[str] = field(default_factory=list)  # not problems: e.g. files moved to quarantine earlier
    folders: dict[str, str] = field(default_factory=dict)  # table -> its folder, where not its name (legacy)
    _cache: dict[str, pa.Table] = field(default_factory=dict, repr=False)

    @property
    def analyses(self) -> list[str]:
        """Analyses with at least one intact shard, in the canonical order."""
        return [name for name, table in analysis_tables().items() if self.files.get(table)]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return [] if self.manifest is None else self.manifest.get("shards", [])

    def n_done(self) -> int:
        return sum(1 for shard in self.shards if shard.get("status") == "done")

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table | None:
        """One table over all intact shards (None when no shard of it is readable).

        A file whose footer reads but whose data does not (corrupt pages), or whose index columns
        (prompt, position, layer, head ...) hold values its shard and model cannot have, is named
        in ``problems`` and left out, here and in every later read.
        """
        if name not in self.files or not self.files[name]:
            return None
        key = name if columns is None else f"{name}:{','.join(columns)}"
        if key not in self._cache:
            parts = []
            for file in list(self.files[name]):
                try:
                    with confined.open_read(self.path, file) as handle:
                        part = pq.read_table(handle, columns=columns)
                    part.validate(full=True)  # texts that are not UTF-8 would fail whoever reads them later
                    problem = index_problem(file, part, self.index_bounds(file))
                except (OSError, pa.ArrowException, ValueError, HorizonError) as exc:
                    problem = (f"{file} is damaged ({type(exc).__name__} while reading its data); it is left out, "
                               "and --resume redoes that shard")
                if problem:
                    self.files[name].remove(file)
                    self.problems.append(problem)
                else:
                    parts.append(part)
            if not parts:
                return None
            self._cache[key] = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return self._cache[key]

    def index_bounds(self, file: Path) -> dict[str, tuple[int, int]]:
        """The values each index column of ``file`` may hold: its shard's prompts, the model's layers and heads."""
        model = (self.manifest or {}).get("model") or {}
        n_layers = model.get("n_layers") or MODEL_LIMITS["n_layers"]
        n_heads = model.get("n_heads") or MODEL_LIMITS["n_heads"]
        n_ctx = model.get("n_ctx") or MODEL_LIMITS["n_ctx"]
        bounds = {"prompt": (0, 2**31 - 1), "position": (0, n_ctx - 1), "length": (1, n_ctx), "n_tokens": (0, n_ctx),
                  "layer": (0, n_layers), "head": (0, n_heads - 1), "k": (0, n_layers + 1),
                  "K": (0, 2 * n_layers + 2), "start_layer": (0, n_layers), "only_layer": (-1, n_layers),
                  "n_queries": (0, n_ctx * n_ctx)}
        match = SHARD_FILE.match(file.name)
        shards = self.shards
        if match and int(match.group(1)) < len(shards):
            shard = shards[int(match.group(1))]
            bounds["prompt"] = (shard["prompts"][0], shard["prompts"][1])
            bounds["position"] = (0, max(0, min(n_ctx, shard["n_tokens"]) - 1))
        return bounds

    def prompt_tokens(self) -> tuple[PromptLists, PromptLists]:
        """Token ids and token texts per corpus prompt number (an empty list where not stored)."""
        if "prompt_tokens" not in self._cache:
            tokens = self.table("tokens")
            by_id, by_text = PromptLists(), PromptLists()
            if tokens is not None and tokens.num_rows:
                prompt = tokens.column("prompt").to_numpy()
                position = tokens.column("position").to_numpy()
                token_id, text = tokens.column("token_id").to_numpy(), tokens.column("token").to_pylist()
                order = np.lexsort((position, prompt))
                for index in order.tolist():
                    number = int(prompt[index])
                    by_id.setdefault(number, []).append(int(token_id[index]))
                    by_text.setdefault(number, []).append(str(text[index]))
            self._cache["prompt_tokens"] = (by_id, by_text)
        return self._cache["prompt_tokens"]

    def mu(self) -> np.ndarray | None:
        try:
            return load_array(self.path, self.path / MU_FILE, mu_shape(self.manifest))
        except (OSError, ValueError, HorizonError):
            return None


def mu_shape(manifest: dict[str, Any] | None) -> tuple[int, int] | None:
    """The shape of the stored corpus mean residual: [L+1, d_model] (None when the manifest does not say)."""
    model = (manifest or {}).get("model") or {}
    if not model.get("n_layers") or not model.get("d_model"):
        return None
    return (model["n_layers"] + 1, model["d_model"])


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


def file_sha256(root: Path, path: Path) -> str:
    """sha256 of a regular file inside ``root`` (read without following a link)."""
    digest = hashlib.sha256()
    with confined.open_read(root, path) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(manifest: dict[str, Any]) -> dict[int, tuple[dict[str, int], dict[str, str]]]:
    """shard id -> (rows, sha256) of the table files the manifest records."""
    return {int(shard["id"]): (shard.get("rows") or {}, shard.get("sha256") or {})
            for shard in manifest.get("shards", [])}


def _entries(root: Path, folder: Path) -> list[tuple[str, str]]:
    """The entries of a real folder inside ``root`` (none when it is missing or foreign)."""
    try:
        return confined.entries(root, folder) if folder == root or confined.kind(root, folder) == "dir" else []
    except (OSError, HorizonError):
        return []


def _table_folders(root: Path) -> list[str]:
    return list(dict.fromkeys((*all_tables(), *LEGACY_TABLES)))


# The names a sweep writes at the top of a results directory (besides the table folders).
CLAIMS = ".claims"
TOP_NAMES = (MANIFEST, LOCK, "views.json", *CORPUS_FILES, QUARANTINE, CLAIMS)


def foreign_entries(root: Path) -> list[tuple[Path, str]]:
    """Links and special files where the store reads or writes: (path, what it is), never followed.

    Looks at the names a sweep writes (manifest, views cache, lock, arrays, quarantine, claims and
    table folders) and at every entry of the table and claims folders; anything else in the
    directory is not the store's and is never touched.
    """
    found: list[tuple[Path, str]] = []
    known = {*TOP_NAMES, *_table_folders(root)}
    for name, what in _entries(root, root):
        if name in known and what not in ("file", "dir"):
            found.append((root / name, what))
    for folder in (*_table_folders(root), CLAIMS):
        for name, what in _entries(root, root / folder):
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
    found = [root / name for name, what in _entries(root, root) if what == "file" and _is_temp_name(name)]
    for table in all_tables():
        found += [root / table / name for name, what in _entries(root, root / table)
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
        for name, what in _entries(root, root / table):
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
            for name, what in _entries(root, folder):
                if what == "file":
                    count += 1
                elif what == "dir" and len(below) < 10_000:
                    below.append(folder / name)
        level = below
    return count


def open_results(path: str | Path) -> Results:
    """Open a results directory, keeping whatever is intact and naming every problem found.

    Raises HorizonError only when nothing at all can be read (no directory, or no manifest and
    no readable shard file). Links and special files inside it are named and never followed.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise HorizonError(f"results directory not found: {path}")
    if not root.is_dir():
        raise HorizonError(f"{path} is a file, not a results directory")
    problems: list[str] = []
    foreign = foreign_entries(root)
    if foreign:
        problems.append(foreign_problem(foreign))
    try:
        manifest: dict[str, Any] | None = read_manifest(root)
    except HorizonError as exc:
        manifest = None
        problems.append(f"{exc}; showing the readable shard files without checking them against it "
                        "(--resume rebuilds it from them)")
    results = Results(path=root, manifest=manifest, problems=problems)
    if manifest is not None:
        results.folders = _read_legacy(manifest)

    for leftover in leftover_temps(root):
        problems.append(f"{leftover} is a half-written file (a run was interrupted while writing it); "
                        "it is ignored, and the next run in this directory removes it")
    quarantined = _count_quarantined(root)
    if quarantined:
        results.notes.append(f"{root / QUARANTINE} holds {quarantined} file(s) an earlier run moved aside "
                             "(not recorded by the manifest, or damaged); they are not part of the results")

    if manifest is None:
        results.folders = {new: old for old, new in LEGACY_TABLES.items()
                           if confined.is_dir(root, root / old) and not confined.is_dir(root, root / new)}
        for table in all_tables():
            folder = root / results.folders.get(table, table)
            files = []
            for name, what in _entries(root, folder):
                if what != "file" or not SHARD_FILE.match(name):
                    continue
                problem = check_file(folder / name, None, table, root=root)
                if problem:
                    problems.append(problem)
                else:
                    files.append(folder / name)
            if files:
                results.files[table] = files
        if not results.files:
            raise HorizonError(f"{path} has no {MANIFEST} and no readable shard file: nothing to report")
        return results

    # A table file counts once the manifest records its row count (written after the rename).
    recorded = _recorded(manifest)
    not_done = [shard["id"] for shard in manifest.get("shards", []) if shard.get("status") != "done"]
    if not_done:
        problems.append(f"{len(not_done)} of {len(manifest['shards'])} shards are not finished "
                        f"(first: {not_done[0]}); run the same sweep with --resume to complete them")
    foreign_paths = {entry for entry, _ in foreign}
    for table in all_tables():
        files = []
        folder = root / results.folders.get(table, table)
        if folder in foreign_paths:
            continue  # named above, never followed
        for shard_id, (rows, sums) in sorted(recorded.items()):
            if table not in rows:
                continue  # that analysis was not part of the run that wrote this shard
            file = folder / shard_name(shard_id)
            if file in foreign_paths:
                continue
            if not confined.is_file(root, file):
                problems.append(f"{file} is missing although the manifest marks shard {shard_id} done; "
                                "rerun with --resume to redo it")
                continue
            problem = check_file(file, rows[table], table, sums.get(table), root=root)
            if problem:
                problems.append(problem)
            else:
                files.append(file)
        if files:
            results.files[table] = files
    for entry in strays(root, manifest):
        problems.append(f"{entry} is not recorded by the manifest (interrupted before it was recorded, or put "
                        "there by hand); it is ignored, and --resume moves it to the quarantine folder")
    problem = mu_problem(root, manifest)
    if problem:
        problems.append(problem)
    return results


def mu_problem(root: Path, manifest: dict[str, Any]) -> str | None:
    """What is wrong with the stored corpus mean residual, when truncation has one recorded."""
    recorded = manifest.get("analyses", {}).get("truncate", {}).get("_mu_sha256")
    if not recorded:
        return None
    path = root / MU_FILE
    try:
        ok = array_sha256(load_array(root, path, mu_shape(manifest))) == recorded
    except FileNotFoundError:
        return f"{path} is missing (the truncation tables are intact); --resume computes it again"
    except (OSError, ValueError, HorizonError):
        ok = False
    if not ok:
        return (f"{path} is damaged or does not match the checksum the manifest recorded (the truncation tables "
                "are intact); --resume computes it again")
    return None


def quarantine(root: Path, paths: list[Path], stamp: str | None = None) -> Path | None:
    """Move ``paths`` (inside ``root``) to ``root/quarantine/<stamp>/``, keeping their relative paths."""
    if not paths:
        return None
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = root / QUARANTINE / stamp
    for path in paths:
        destination = target / path.relative_to(root)
        try:
            confined.make_dirs(root, destination.parent)
            confined.replace(root, path, destination)
        except OSError as exc:
            raise WriteError(destination, exc) from None
    return target


def refuse_foreign(root: Path) -> None:
    """A run that writes into ``root`` stops here, in one line, when a link or special file is where it works."""
    found = foreign_entries(root)
    if found:
        path, what = found[0]
        more = f" (and {len(found) - 1} more such entries)" if len(found) > 1 else ""
        raise HorizonError(f"{path} is {what}{more}: horizon never follows a link or opens a special file inside a "
                           "results directory; remove it, or use another --out")


def tidy(root: Path, manifest: dict[str, Any], pid_alive: Callable[[int], bool] | None = None) -> list[str]:
    """Before a run joins the directory (caller holds the lock): remove dead writers' temp files, move
    every unrecorded or damaged table file to the quarantine folder and forget damaged ones in
    ``manifest`` (so they are redone). Returns one line per kind of thing done.
    """
    alive = pid_alive or _pid_alive
    here = temp_tag().rsplit("-", 1)[0]
    removed = 0
    for temp in leftover_temps(root):
        match = TEMP_FILE.match(temp.name)
        if match and match.group("host") == here and alive(int(match.group("pid"))):
            continue  # a live writer on this machine (another --shard worker) is writing it
        if match and match.group("host") != here:
            with contextlib.suppress(OSError, HorizonError):
                if datetime.now(UTC).timestamp() - confined.lstat(root, temp).st_mtime < 24 * 3600:
                    continue  # perhaps a live writer on another machine: left for a day
        with contextlib.suppress(FileNotFoundError):
            if confined.unlink(root, temp):
                removed += 1
    moving = strays(root, manifest)
    damaged = 0
    for shard in manifest["shards"]:
        rows, sums = shard.get("rows") or {}, shard.get("sha256") or {}
        for table in list(rows):
            file = shard_path(root, table, int(shard["id"]))
            present = confined.is_file(root, file)
            problem: str | None
            if not present:
                problem = "missing"
            else:
                problem = check_file(file, rows[table], table, sums.get(table), full=table not in sums, root=root)
            if problem:
                del rows[table]
                sums.pop(table, None)
                shard["status"] = "pending"
                damaged += 1
                if present:
                    moving.append(file)
    lines = []
    if removed:
        lines.append(f"removed {removed} temp file(s) of an interrupted run")
    target = quarantine(root, moving)
    if target is not None:
        lines.append(f"moved {len(moving)} file(s) the manifest does not record, or that are damaged, to {target}")
    if damaged:
        lines.append(f"{damaged} recorded table file(s) are missing or damaged: their shards are redone")
    return lines


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def damaged_shards(root: Path, results: Results) -> list[int]:
    """Shard ids whose recorded files are missing or unreadable: ``--resume`` redoes them."""
    if results.manifest is None:
        return []
    bad: list[int] = []
    for shard in results.manifest.get("shards", []):
        sums = shard.get("sha256") or {}
        for table, rows in shard.get("rows", {}).items():
            file = shard_path(root, table, int(shard["id"]))
            if not confined.is_file(root, file) or check_file(file, rows, table, sums.get(table),
                                                               full=table not in sums, root=root):
                bad.append(int(shard["id"]))
                break
    return bad


# ----------------------------------------------------------------------------- merge


@dataclass
class Merged:
    """What ``merge`` wrote: the sources, the shard files copied, shards done of total."""

    target: Path
    sources: list[Path]
    files: int
    shards_done: int
    shards_total: int


def merge(sources: list[str | Path], target: Path) -> Merged:
    """Combine results directories of one sweep (same model, corpus, settings) into the new directory ``target``.

    Each shard's table is taken from the first source that has it intact; row counts and
    checksums are carried into the merged manifest, which is written last (atomically).
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HorizonError(f"--out {target} exists and is not empty (or not a directory); merge writes a new "
                           "directory")
    # Everything is written into a hidden sibling and renamed into place at the end, so a merge that
    # fails part-way (disk full, Ctrl-C) leaves no half-merged --out behind.
    staging = target.parent / f".{target.name}.merge.{temp_tag()}.tmp"
    try:
        merged = _merge(sources, staging)
        if target.exists():
            target.rmdir()  # the empty directory the check above allowed
        staging.rename(target)
        return replace(merged, target=target)
    except WriteError:
        raise
    except OSError as exc:  # a read-only place, a file in the way, a full disk
        filename = Path(exc.filename) if exc.filename else target
        raise WriteError(target if staging in (filename, *filename.parents) else filename, exc) from None
    finally:
        if staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)


def _merge(sources: list[str | Path], target: Path) -> Merged:
    opened = [open_results(source) for source in sources]
    for results in opened:
        if results.manifest is None:
            raise HorizonError(f"{results.path} has no readable manifest; merge needs one in every source")
    base = json.loads(json.dumps(opened[0].manifest))
    manifests = [results.manifest for results in opened if results.manifest is not None]
    for results, manifest in zip(opened[1:], manifests[1:], strict=True):
        conflicts = settings_conflicts(base, manifest)
        if conflicts:
            raise HorizonError(f"{results.path} is not the same sweep as {opened[0].path}: {'; '.join(conflicts)}")
        for name, settings in manifest["analyses"].items():
            base["analyses"].setdefault(name, settings)
    for shard in base["shards"]:
        shard.update({"status": "pending", "rows": {}, "sha256": {}})
    base["runs"] = [run for manifest in manifests for run in manifest.get("runs", [])]
    copied = 0
    for results, manifest in zip(opened, manifests, strict=True):
        for table, files in results.files.items():
            for file in files:
                match = SHARD_FILE.match(file.name)
                if match is None:
                    continue  # open_results lists shard files only; a name it did not match is not one
                shard_id = int(match.group(1))
                shard = base["shards"][shard_id]
                if table in shard["rows"]:
                    continue  # an earlier source already gave this shard's table
                target.mkdir(parents=True, exist_ok=True)
                confined.copy(results.path, file, target, shard_path(target, table, shard_id))
                source_shard = manifest["shards"][shard_id]
                shard["rows"][table] = source_shard["rows"][table]
                if table in source_shard.get("sha256", {}):
                    shard["sha256"][table] = source_shard["sha256"][table]
                copied += 1
        for name in CORPUS_FILES:
            if confined.is_file(results.path, results.path / name) and not (target / name).exists():
                target.mkdir(parents=True, exist_ok=True)
                confined.copy(results.path, results.path / name, target, target / name)
    wanted = {*BASE_TABLES, *(analysis_tables()[name] for name in base["analyses"])}
    for shard in base["shards"]:
        shard["status"] = "done" if wanted <= set(shard["rows"]) else "pending"
    done = sum(1 for shard in base["shards"] if shard["status"] == "done")
    base["finished"] = now_iso() if done == len(base["shards"]) else None
    write_json_atomic(target / MANIFEST, base)
    return Merged(target, [r.path for r in opened], copied, done, len(base["shards"]))
