"""The manifest of a results directory: reading it, its structure and bounds checked (valid JSON is
not enough), its read-modify-write under the lock, and what two runs must agree on to share it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.results.store_files import locked, read_json_file, write_json_atomic
from horizon.core.results.store_layout import FORMAT, FORMAT_VERSION, LEGACY_TABLES, MANIFEST, all_tables, now_iso


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
        raise HorizonError(f"{path} has format version {short_repr(manifest.get('version'))}; this horizon reads "
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
        return f"model should be an object with a hash and n_layers, it is {short_repr(model)}"
    for key, limit in MODEL_LIMITS.items():
        value = model.get(key)
        if (key == "n_layers" or value is not None) and not (_is_int(value) and 1 <= value <= limit):
            return f"model.{key} should be an integer from 1 to {limit}, it is {short_repr(value)}"
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
            return f"{name} should be {expected}, it is {short_repr(value)}"
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
            return f"{where}.id should be {index}, it is {short_repr(shard.get('id'))}"
        prompts = shard.get("prompts")
        expected_range = [index * size, min((index + 1) * size, n_prompts) - 1]
        if prompts != expected_range or not all(_is_int(p) for p in prompts):
            return f"{where}.prompts should be {expected_range}, it is {short_repr(prompts)}"
        n_tokens = shard.get("n_tokens")
        if not (_is_int(n_tokens) and 0 <= n_tokens <= (prompts[1] - prompts[0] + 1) * n_ctx) \
                or shard.get("status") not in ("pending", "done"):
            return f"{where} should have an integer n_tokens (at most n_ctx per prompt) and a status pending or done"
        rows = shard.get("rows")
        if not isinstance(rows, dict) or any(table not in (*all_tables(), *LEGACY_TABLES) or not _is_int(count)
                                             or count < 0
                                             for table, count in rows.items()):
            return f"{where}.rows should map table names to row counts, it is {short_repr(rows)}"
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
            problems.append(f"{name} is {short_repr(value)} there but {short_repr(new_key[name])} now")
    for analysis, settings in new["analyses"].items():
        previous = old["analyses"].get(analysis)
        if previous is not None and _comparable(previous) != _comparable(settings):
            problems.append(f"{analysis} settings are {short_repr(_comparable(previous))} there but "
                            f"{short_repr(_comparable(settings))} now")
    return problems


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    # Derived values (the stored mean residual's hash) are not user settings.
    return {key: value for key, value in settings.items() if not key.startswith("_")}


def short_repr(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
