"""A sweep's results directory: create its manifest, or check and join it, or rebuild a lost one; record shards.

``prepare_directory`` is how a run takes a directory: a new one gets its manifest, one holding the
same sweep is resumed (tidied first), a damaged or lost manifest is rebuilt from the shard files, and
another sweep's directory is refused unless ``--force`` discards it. ``record_shard`` writes a shard's
tables and then marks them in the manifest, the slow writes outside the lock and the renames under it.
Part of the sweep driver, whose public face is core/sweep/sweep.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from horizon.core.errors import HorizonError
from horizon.core.results import confined, store
from horizon.core.results.rebuild import missing_tables, rebuild_manifest
from horizon.core.results.views import VIEWS_FILE


def prepare_directory(root: Path, new: dict[str, Any], resume: bool, force: bool,
                       texts: Sequence[str] = ()) -> tuple[dict[str, Any], str, list[str]]:
    """Create the manifest, or check the existing one and join it, or rebuild a lost one.

    Returns (manifest, what happened, notes): the notes say what was tidied (temp files removed,
    files moved to the quarantine folder) or rebuilt, one line each. A link or special file where
    the store works is refused first (``store.refuse_foreign``): nothing is followed, moved or removed.
    """
    if root.is_dir():
        store.refuse_foreign(root)
        if not force and not resume and _not_results(root):  # said before the lock file is made in the user's folder
            raise HorizonError(f"{root} exists and is not a results directory; use another --out or --force")
    with store.locked(root):
        store.refuse_foreign(root)  # again under the lock: another run may have been writing
        notes: list[str] = []
        old = None
        damaged = None
        if confined.kind(root, root / store.MANIFEST) != "missing":
            try:
                old = store.read_manifest(root)
            except HorizonError as exc:
                damaged = str(exc)
        if old is not None:
            damaged = _inconsistency(old, new)
            if damaged is not None:
                old = None  # the same model and corpus, described otherwise: the manifest is damaged
        if old is not None:
            legacy = store.legacy_tables(old)
            if legacy and not force:
                raise HorizonError(f"{root} was written by an earlier horizon (tables {', '.join(legacy)}; now "
                                   f"{', '.join(store.LEGACY_TABLES[t] for t in legacy)}): report and inspect read "
                                   "it, but a sweep cannot add to it; re-run the sweep into a new --out (or --force)")
            conflicts = store.settings_conflicts(old, new)
            if conflicts and not force:
                raise HorizonError(f"{root} holds a sweep with other settings ({'; '.join(conflicts)}); use another "
                                   "--out, or pass --force to discard its results and start over")
            if not conflicts:
                for name, analysis in new["analyses"].items():
                    old["analyses"].setdefault(name, analysis)
                notes += store.tidy(root, old)
                old["finished"] = None if missing_work(old) else old["finished"]
                store.write_json_atomic(root / store.MANIFEST, old)
                return old, "resumed", notes
            _discard(root)
        elif not force and (damaged is not None or _has_shard_files(root)):
            manifest, notes = rebuild_manifest(root, new, texts, damaged)
            notes += store.tidy(root, manifest)
            store.write_json_atomic(root / store.MANIFEST, manifest)
            return manifest, "rebuilt", notes
        elif resume and not force:
            raise HorizonError(f"--resume: {root} holds no sweep to resume")
        elif _not_results(root):
            if not force:
                raise HorizonError(f"{root} exists and is not a results directory; use another --out or --force")
            _discard(root)
        elif force:
            _discard(root)
        store.write_json_atomic(root / store.MANIFEST, new)
        return new, "created", notes


def _not_results(root: Path) -> bool:
    """Whether ``root`` holds files of its own and nothing of a sweep (no manifest, no shard file)."""
    ours = (store.LOCK, store.QUARANTINE, store.CLAIMS)
    return (confined.kind(root, root / store.MANIFEST) == "missing" and not _has_shard_files(root)
            and any(name not in ours for name, _ in confined.entries(root, root)))


def _inconsistency(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What a manifest of this model and corpus says otherwise than the model and corpus do (it is damaged), or None.

    Runs of the same model (hash), corpus (sha256) and shard size must describe them alike: the
    model's dimensions, and each shard's prompts and token count.
    """
    if (old["model"]["hash"], old["corpus"]["sha256"], old["corpus"]["max_tokens"], old["shard_size"]) != \
            (new["model"]["hash"], new["corpus"]["sha256"], new["corpus"]["max_tokens"], new["shard_size"]):
        return None  # another sweep: settings_conflicts says how
    for key in store.MODEL_LIMITS:
        if key in old["model"] and key in new["model"] and old["model"][key] != new["model"][key]:
            return f"its model.{key} is {store.short_repr(old['model'][key])}, the model has {new['model'][key]}"
    if old["corpus"]["n_prompts"] != new["corpus"]["n_prompts"]:
        return f"it counts {old['corpus']['n_prompts']} prompts, the corpus has {new['corpus']['n_prompts']}"
    for before, now in zip(old["shards"], new["shards"], strict=True):
        if before["n_tokens"] != now["n_tokens"]:
            return f"its shard {now['id']} has {before['n_tokens']} tokens, the corpus gives {now['n_tokens']}"
    return None


def _has_shard_files(root: Path) -> bool:
    return any(what == "file" and store.SHARD_FILE.match(name)
               for table in store.all_tables() for name, what in store.folder_entries(root, root / table))


def _discard(root: Path) -> None:
    """Remove a previous sweep's files (only the ones a sweep writes, never through a link; the quarantine stays)."""
    for table in (*store.all_tables(), *store.LEGACY_TABLES):
        confined.remove_tree(root, root / table)
    for name in (store.MANIFEST, VIEWS_FILE, *store.corpus_files()):
        confined.unlink(root, root / name)
    for temp in store.leftover_temps(root):
        confined.unlink(root, temp)


def missing_work(manifest: dict[str, Any]) -> bool:
    return any(missing_tables(manifest, shard) for shard in manifest["shards"])


def record_shard(root: Path, shard_id: int, tables: dict[str, pa.Table], seconds: float, worker: str) -> None:
    """Write a shard's tables, then mark them in the manifest (in that order: see store.py).

    The slow part (writing and syncing the temp files) runs outside the lock; the renames and
    the manifest update run under it, so a run tidying the directory never sees a renamed file
    that is not recorded yet.
    """
    staged: dict[str, Path] = {}
    try:
        for table, data in tables.items():
            staged[table] = store.stage_table(store.shard_path(root, table, shard_id), data, root)
        sums = {table: store.file_sha256(root, temp) for table, temp in staged.items()}

        def change(manifest: dict[str, Any]) -> None:
            shard = manifest["shards"][shard_id]
            shard["rows"].update({table: data.num_rows for table, data in tables.items()})
            shard.setdefault("sha256", {}).update(sums)
            shard["status"] = "pending" if missing_tables(manifest, shard) else "done"
            shard["finished"] = store.now_iso()
            shard["seconds"] = round(seconds, 3)
            shard["worker"] = worker

        with store.locked(root):
            for table in list(staged):
                store.commit(staged.pop(table), store.shard_path(root, table, shard_id), root)
            store.update_manifest(root, change, lock=False)
    finally:
        for temp in staged.values():
            with contextlib.suppress(OSError, HorizonError):
                confined.unlink(root, temp)
