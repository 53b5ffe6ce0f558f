"""Tidying a results directory before a run joins it (under the lock): dead writers' temp files
removed, unrecorded and damaged table files moved to ``quarantine/<time>/``, damaged shards forgotten
so that ``--resume`` redoes them; and the refusal to write where a link or special file is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from horizon.core.errors import HorizonError
from horizon.core.results import confined
from horizon.core.results.store_checks import check_file, foreign_entries, leftover_temps, strays
from horizon.core.results.store_files import TEMP_FILE, WriteError, temp_tag
from horizon.core.results.store_layout import QUARANTINE, shard_path
from horizon.core.results.store_read import Results


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
    alive = pid_alive or process_alive
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


def process_alive(pid: int) -> bool:
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
