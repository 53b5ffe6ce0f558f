"""Opening a results directory for reading: ``open_results`` keeps whatever is intact and names every
problem; ``Results`` reads its tables (leaving out, and naming, any file whose data is damaged).

Nothing here imports torch: ``open_results`` must stay fast for ``horizon report`` and the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.results import confined
from horizon.core.results.store_checks import (
    _count_quarantined,
    _recorded,
    check_file,
    corpus_problems,
    corpus_shape,
    folder_entries,
    foreign_entries,
    foreign_problem,
    index_problem,
    leftover_temps,
    strays,
)
from horizon.core.results.store_files import load_array
from horizon.core.results.store_layout import (
    LEGACY_TABLES,
    MANIFEST,
    QUARANTINE,
    SHARD_FILE,
    _read_legacy,
    all_tables,
    analysis_tables,
    shard_name,
)
from horizon.core.results.store_manifest import MODEL_LIMITS, read_manifest


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
        bounds = {"prompt": (0, 2**31 - 1), "position": (0, n_ctx - 1), "n_tokens": (0, n_ctx), "layer": (0, n_layers)}
        for analysis in registry.REGISTRY.values():  # each analysis bounds its own columns (core/analyses)
            if analysis.index_bounds is not None:
                bounds.update(analysis.index_bounds(n_layers, n_heads, n_ctx))
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
        return cast("tuple[PromptLists, PromptLists]", self._cache["prompt_tokens"])

    def corpus_array(self, analysis: str) -> np.ndarray | None:
        """The corpus-wide array ``analysis`` stored (its registry entry's ``corpus``), None when it has
        none or it cannot be read with this model's shape."""
        entry = registry.REGISTRY.get(analysis)
        if entry is None or entry.corpus is None:
            return None
        try:
            return load_array(self.path, self.path / entry.corpus.file, corpus_shape(entry.corpus, self.manifest))
        except (OSError, ValueError, HorizonError):
            return None

    def mu(self) -> np.ndarray | None:
        """The corpus mean residual truncation centres with (a convenience: ``corpus_array("truncate")``)."""
        return self.corpus_array("truncate")



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
            for name, what in folder_entries(root, folder):
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
    problems.extend(corpus_problems(root, manifest))
    return results
