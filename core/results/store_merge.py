"""``horizon merge``: results directories of one sweep combined into a new one, written beside it and
renamed into place, so a merge that fails part-way leaves nothing half-merged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from horizon.core.errors import HorizonError
from horizon.core.results import confined
from horizon.core.results.store_files import WriteError, temp_tag, write_json_atomic
from horizon.core.results.store_layout import (
    BASE_TABLES,
    MANIFEST,
    SHARD_FILE,
    analysis_tables,
    corpus_files,
    now_iso,
    shard_path,
)
from horizon.core.results.store_manifest import settings_conflicts
from horizon.core.results.store_read import open_results


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
        for name in corpus_files():
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
