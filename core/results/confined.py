"""Files inside a results directory, never through a link: the one way the store opens, moves and deletes.

A results directory may come from someone else (a colleague's tarball, a shared disk). Whatever
it holds, nothing in it may make horizon read, write, move or delete anything outside it. So
every path below the directory is walked one name at a time from an open descriptor of the
directory, each step with ``O_NOFOLLOW``: a symbolic link anywhere below the root (a table
folder, a shard file, the manifest, the lock file, ``quarantine/``) is never followed, and only
regular files are opened (``O_NONBLOCK``, then ``fstat``: a FIFO cannot block a reader, a device
is never read or written). Such an entry is *foreign*: readers name it and leave it out, writers
refuse it in one line (``Foreign``) and never move, replace or delete it. The root itself is the
user's own choice (the path given on the command line) and may be a link.

Every operation takes ``(root, path)`` with ``path`` inside ``root``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from horizon.core.errors import HorizonError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def describe(mode: int) -> str:
    """What an entry of this ``st_mode`` is, in words."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


class Foreign(HorizonError):
    """An entry inside a results directory that horizon does not follow or open (a link, a FIFO, a device ...)."""

    def __init__(self, path: Path, what: str, expected: str = "a regular file") -> None:
        self.path = path
        self.what = what
        super().__init__(f"{path} is {what}, not {expected}; horizon never follows a link or opens a special file "
                         "inside a results directory: remove it, or use another directory")


def _parts(root: Path, path: Path) -> tuple[str, ...]:
    parts = Path(path).relative_to(root).parts
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{path} is not a plain path inside {root}")
    return parts


def _foreign_step(root: Path, names: tuple[str, ...], fd: int, name: str) -> Foreign:
    where = root.joinpath(*names, name)
    try:
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except OSError:
        return Foreign(where, "not a directory", "a directory")
    return Foreign(where, describe(mode), "a directory")


@contextlib.contextmanager
def directory(root: Path, path: Path, create: bool = False) -> Iterator[int]:
    """An open descriptor of the directory ``path`` inside ``root``, walked without following any link.

    ``create``: make the missing directories (mode 0755). Raises ``Foreign`` where a step is a link or
    not a directory, FileNotFoundError where one is missing (without ``create``).
    """
    root = Path(root)
    names = _parts(root, Path(path))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root: the user's choice
    try:
        for index, name in enumerate(names):
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # another process made it first
                    os.mkdir(name, 0o755, dir_fd=fd)
                try:
                    next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _foreign_step(root, names[:index], fd, name) from None
                    raise
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _foreign_step(root, names[:index], fd, name) from None
                raise
            os.close(fd)
            fd = next_fd
        yield fd
    finally:
        os.close(fd)


def _leaf(root: Path, path: Path) -> tuple[Path, str]:
    path = Path(path)
    if path == Path(root) or not path.name:
        raise ValueError(f"{path} is the root itself, not an entry inside it")
    return path.parent, path.name


def kind(root: Path, path: Path) -> str:
    """``"missing"``, ``"file"``, ``"dir"``, or what else the entry is (``describe``), never following a link.

    A foreign directory on the way (``DIR/scan`` a link, for ``DIR/scan/shard-00000.parquet``) raises ``Foreign``.
    """
    parent, name = _leaf(root, path)
    try:
        with directory(root, parent) as fd:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return describe(mode)


def is_file(root: Path, path: Path) -> bool:
    """Whether ``path`` is a regular file reached without a link (False for anything foreign)."""
    try:
        return kind(root, path) == "file"
    except (Foreign, OSError):
        return False


def is_dir(root: Path, path: Path) -> bool:
    """Whether ``path`` is a real directory reached without a link (False for anything foreign)."""
    try:
        return path == root or kind(root, path) == "dir"
    except (Foreign, OSError):
        return False


def lstat(root: Path, path: Path) -> os.stat_result:
    parent, name = _leaf(root, path)
    with directory(root, parent) as fd:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)


def open_read(root: Path, path: Path) -> BinaryIO:
    """``path`` opened for reading: a regular file only, reached without a link (``Foreign`` otherwise)."""
    parent, name = _leaf(root, path)
    with directory(root, parent) as dir_fd:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(before.st_mode):  # never open a device or a FIFO, even without blocking
            raise Foreign(Path(path), describe(before.st_mode))
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise Foreign(Path(path), describe(after.st_mode))  # swapped between the two looks
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_lock(root: Path, path: Path) -> int:
    """A descriptor of the lock file ``path`` (created if missing), for ``flock``: a regular file only."""
    parent, name = _leaf(root, path)
    with directory(root, parent, create=True) as dir_fd:
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            raise Foreign(Path(path), describe(mode))
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # made a link since the look above
                raise Foreign(Path(path), "a symbolic link") from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Foreign(Path(path), "not a regular file")
    return fd


def read_bytes(root: Path, path: Path, limit: int) -> bytes:
    """The bytes of a regular file inside ``root``; HorizonError when it holds more than ``limit``."""
    with open_read(root, path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise HorizonError(f"{path} holds more than {limit // (1024 * 1024)} MiB, more than any file horizon writes "
                           "there; it is not read")
    return data


def entries(root: Path, path: Path) -> list[tuple[str, str]]:
    """(name, kind) of every entry of the directory ``path``, sorted by name; kinds as ``kind`` gives them."""
    with directory(root, path) as fd, os.scandir(fd) as found:
        listed = []
        for entry in found:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # removed meanwhile
            listed.append((entry.name, "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode)
                           else describe(mode)))
    return sorted(listed)


def make_dirs(root: Path, path: Path) -> None:
    """Make the directory ``path`` (and its parents) inside ``root``; ``Foreign`` where a step is a link."""
    if Path(path) == Path(root):
        Path(root).mkdir(parents=True, exist_ok=True)
        return
    Path(root).mkdir(parents=True, exist_ok=True)
    with directory(root, path, create=True):
        pass


def create(root: Path, directory_path: Path, prefix: str, suffix: str) -> tuple[BinaryIO, Path]:
    """A new file ``prefix + random + suffix`` in ``directory_path`` (made if missing), open for writing, mode 0644."""
    make_dirs(root, directory_path)
    with directory(root, directory_path) as dir_fd:
        for _ in range(100):
            name = f"{prefix}{secrets.token_hex(4)}{suffix}"
            try:
                fd = os.open(name, _CREATE_FLAGS, 0o644, dir_fd=dir_fd)
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - 100 random names taken
            raise FileExistsError(errno.EEXIST, "no free temp name", str(directory_path))
    os.fchmod(fd, 0o644)  # the umask may have taken bits away; results are meant to be shared and read
    return os.fdopen(fd, "wb"), Path(directory_path) / name


def replace(root: Path, source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` (both inside ``root``); ``target`` may only be missing or a regular file."""
    source_parent, source_name = _leaf(root, source)
    target_parent, target_name = _leaf(root, target)
    with directory(root, source_parent) as source_fd, directory(root, target_parent) as target_fd:
        moving = os.stat(source_name, dir_fd=source_fd, follow_symlinks=False)
        if not (stat.S_ISREG(moving.st_mode) or stat.S_ISDIR(moving.st_mode)):
            raise Foreign(Path(source), describe(moving.st_mode))
        try:
            mode = os.stat(target_name, dir_fd=target_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            raise Foreign(Path(target), describe(mode))
        os.replace(source_name, target_name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
        with contextlib.suppress(OSError):  # not every filesystem syncs a directory
            os.fsync(target_fd)


def unlink(root: Path, path: Path) -> bool:
    """Remove the regular file ``path``; False when it was already gone. ``Foreign`` for anything else."""
    parent, name = _leaf(root, path)
    try:
        with directory(root, parent) as fd:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            if not stat.S_ISREG(mode):
                raise Foreign(Path(path), describe(mode))
            os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        return False
    return True


def remove_tree(root: Path, path: Path) -> bool:
    """Remove the real directory ``path`` and all it holds, never following a link inside it.

    False when it was missing; ``Foreign`` when ``path`` itself is not a real directory.
    """
    parent, name = _leaf(root, path)
    try:
        with directory(root, parent) as fd:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            if not stat.S_ISDIR(mode):
                raise Foreign(Path(path), describe(mode), "a directory")
            # With dir_fd, rmtree works from descriptors: a link inside is removed, never followed.
            shutil.rmtree(name, dir_fd=fd)
    except FileNotFoundError:
        return False
    return True


def remove_empty_dir(root: Path, path: Path) -> None:
    parent, name = _leaf(root, path)
    with directory(root, parent) as fd:
        os.rmdir(name, dir_fd=fd)


def copy(root: Path, source: Path, target_root: Path, target: Path) -> None:
    """Copy the regular file ``source`` (inside ``root``) to ``target`` (inside ``target_root``, made if missing)."""
    with open_read(root, source) as reading:
        handle, temp = create(target_root, Path(target).parent, f".{Path(target).name}.", ".tmp")
        try:
            with handle:
                shutil.copyfileobj(reading, handle, 1 << 20)
            replace(target_root, temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                unlink(target_root, temp)
            raise
