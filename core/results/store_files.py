"""Atomic writes of a results directory: staging beside the target, fsync, rename; the directory lock;
bounded reads of the JSON and ``.npy`` files a results directory may hold (it may come from someone else).

Temp files carry their writer's host and pid (``.NAME.HOST-PID.XXXX.tmp``) so that a later run can
tell a live writer's from a dead one's (``core/results/store_tidy.py``).
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
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from horizon.core.errors import HorizonError
from horizon.core.results import confined
from horizon.core.results.store_layout import LOCK


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


# ----------------------------------------------------------------------------- atomic writes


def temp_tag() -> str:
    """``HOST-PID`` of this process, as temp file names carry it (dots and dashes made safe)."""
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def stage(path: Path, write: Callable[[BinaryIO], object], root: Path | None = None) -> Path:
    """Write through ``write(handle)`` beside ``path`` and fsync it; ``commit`` renames it into place.

    ``root``: the results directory ``path`` is inside (default: ``path``'s own folder); no link
    below it is followed (core/results/confined.py).
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


# ----------------------------------------------------------------------------- the lock and bounded reads

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


def file_sha256(root: Path, path: Path) -> str:
    """sha256 of a regular file inside ``root`` (read without following a link)."""
    digest = hashlib.sha256()
    with confined.open_read(root, path) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
