"""Shard claims: two runs on one ``--out`` never compute a shard twice.

A run claims each shard just before its pool runs it (a small file under ``DIR/.claims/`` naming the
claimer's host and pid); a shard done meanwhile, or claimed by another live process, is skipped and
left to it. ``shards_to_run`` lists a worker's shards with the analyses they still miss. Part of the
sweep driver, whose public face is core/sweep/sweep.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.results import confined, store
from horizon.core.results.rebuild import missing_tables
from horizon.core.sweep.sweep_settings import ShardSpec

# A claim of another machine cannot be checked for a live process: it is honoured this long.
CLAIM_SECONDS_ELSEWHERE = 24 * 3600
CLAIM = re.compile(r"^(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)$")


def _write_bytes(data: bytes, handle: BinaryIO) -> None:
    handle.write(data)


def _claim_path(root: Path, shard_id: int) -> Path:
    return root / store.CLAIMS / f"shard-{shard_id:05d}.claim"


def _claim_holder(root: Path, shard_id: int) -> str | None:
    """``HOST-PID`` of the live process that claimed this shard, or None (no claim, or its process is gone)."""
    path = _claim_path(root, shard_id)
    try:
        text = confined.read_bytes(root, path, 256).decode("ascii", "replace").strip()
        age = time.time() - confined.lstat(root, path).st_mtime
    except (OSError, HorizonError):
        return None
    match = CLAIM.match(text)
    if match is None:
        return None
    here, pid = store.temp_tag().rsplit("-", 1)[0], int(match.group("pid"))
    if match.group("host") == here:
        return text if pid != os.getpid() and store.process_alive(pid) else None
    return text if age < CLAIM_SECONDS_ELSEWHERE else None


@dataclass
class Claims:
    """The shards this run claims one at a time as its pool takes them, so that two runs on one --out
    never compute a shard twice: a shard done meanwhile, or claimed by another live process, is skipped."""

    root: Path
    held: set[int] = field(default_factory=set)
    skipped: dict[int, str] = field(default_factory=dict)  # shard id -> the claim's holder, or "done"

    def take(self, todo: list[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
        for shard_id, analyses in todo:
            with store.locked(self.root):
                manifest = store.read_manifest(self.root)
                shard = manifest["shards"][shard_id]
                missing = missing_tables(manifest, shard)
                wanted = [name for name in analyses if registry.REGISTRY[name].table in missing]
                if not wanted and not any(table in missing for table in store.BASE_TABLES):
                    self.skipped[shard_id] = "done"
                    continue
                holder = _claim_holder(self.root, shard_id)
                if holder is not None:
                    self.skipped[shard_id] = holder
                    continue
                tag = store.temp_tag().encode("ascii")
                store.atomic_write(_claim_path(self.root, shard_id), functools.partial(_write_bytes, tag),
                                   self.root)
                self.held.add(shard_id)
            yield shard_id, wanted

    def release(self, shard_id: int) -> None:
        if shard_id in self.held:
            self.held.discard(shard_id)
            with contextlib.suppress(OSError, HorizonError):
                confined.unlink(self.root, _claim_path(self.root, shard_id))

    def release_all(self) -> None:
        for shard_id in list(self.held):
            self.release(shard_id)
        # The claims folder goes once empty (another run's claims keep it); under the lock, so a run
        # claiming a shard never finds it gone between making it and writing its claim.
        with contextlib.suppress(OSError, HorizonError), store.locked(self.root):
            confined.remove_empty_dir(self.root, self.root / store.CLAIMS)


def shards_to_run(manifest: dict[str, Any], shard_spec: ShardSpec, analyses: list[str]) -> list[tuple[int, list[str]]]:
    """(shard id, analyses still to run) for this worker's shards, in id order."""
    todo = []
    for shard in manifest["shards"]:
        shard_id = int(shard["id"])
        if not shard_spec.owns(shard_id):
            continue
        missing = missing_tables(manifest, shard)
        wanted = [name for name in analyses if registry.REGISTRY[name].table in missing]
        if wanted or any(table in missing for table in store.BASE_TABLES):
            # Base tables are rewritten whenever a shard runs, so a partly-done shard stays consistent.
            todo.append((shard_id, wanted))
    return todo
