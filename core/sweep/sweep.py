"""Running the analyses over a corpus into a results store (``core/results/store.py``), locally or on Ray.

This module is the driver: it owns the results directory of a run (creates, checks, resumes
or rebuilds its manifest, computes the corpus-wide arrays once, records each shard the pool
returns, writes the views cache at the end). The parts live beside it: the settings and the
shard plan (core/sweep/sweep_settings.py), the worker that turns a shard into tables
(core/sweep/worker.py), the local and Ray pools (core/sweep/pools.py), the corpus views (core/results/views.py),
and each analysis's rows and view (core/analyses).

Truncation centres with the mean residual of the *whole corpus* (docs/SCIENCE.md section 4): it is
computed once, before any shard, stored as ``truncation_mu.npy`` and reused by every shard,
worker and resumed run, so results do not depend on how the corpus was split.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa
from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.model.corpus import Corpus
from horizon.core.results import confined, store
from horizon.core.results.rebuild import missing_tables, rebuild_manifest
from horizon.core.results.views import VIEWS_FILE, corpus_views, write_views
from horizon.core.run.runner import Runner
from horizon.core.sweep.plan import Eta, predicted_shard_work
from horizon.core.sweep.pools import LocalPool, RayPool
from horizon.core.sweep.sweep_settings import ShardSpec, SweepSettings, package_versions, plan_shards
from horizon.core.sweep.worker import WorkerConfig

if TYPE_CHECKING:
    from horizon.core.analyses import CorpusInput
    from horizon.core.model.loader import LoadedModel

__all__ = ["ABLATION_MEANS_FILE", "ShardSpec", "SweepSettings", "SweepSummary", "corpus_views", "plan_shards",
           "run_sweep"]


# ----------------------------------------------------------------------------- the driver


@dataclass
class SweepSummary:
    """What a sweep run did (the CLI's end-of-run summary and --json)."""

    out: str
    shards_total: int
    shards_done_before: int
    shards_run: int
    shards_done: int
    prompts_run: int
    tokens_run: int
    seconds: float  # wall time of the whole run, model load included
    work_seconds: float  # from the first shard (or the corpus-mean pass) to the last
    complete: bool
    analyses: list[str]
    notes: list[str] = field(default_factory=list)  # what was tidied or rebuilt in the directory, one line each
    # Shards lost on every run (their Ray worker died each time): {"id", "prompts": [first, last], "reason"};
    # they stay pending, so --resume runs them.
    failed_shards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Throughput of the analyses themselves (model load and set-up left out)."""
        return self.tokens_run / self.work_seconds if self.work_seconds > 0 else 0.0


def _new_manifest(corpus: Corpus, settings: SweepSettings, described: dict[str, Any],
                  max_prompts: int | None, started: str) -> dict[str, Any]:
    shards = plan_shards(len(corpus), settings.shard_size)
    n_tokens = described["n_tokens"]
    return {
        "format": store.FORMAT,
        "version": store.FORMAT_VERSION,
        "created": started,
        "updated": started,
        "finished": None,
        "model": described["model"],
        "dtype": described["dtype"],
        "device": described["device"],
        "bos": described["bos"],
        "packages": package_versions(),
        "corpus": {"name": corpus.name, "sha256": corpus.sha256, "n_prompts": len(corpus),
                   "max_prompts": max_prompts, "max_tokens": settings.max_tokens, "n_tokens": int(sum(n_tokens)),
                   "kinds": corpus.kinds},
        "analyses": settings.analysis_settings(described["model"]["n_layers"]),
        "shard_size": settings.shard_size,
        "shards": [
            {"id": index, "prompts": [members[0], members[-1]], "n_tokens": int(sum(n_tokens[i] for i in members)),
             "status": "pending", "rows": {}}
            for index, members in enumerate(shards)
        ],
        "runs": [],
    }


def _prepare_directory(root: Path, new: dict[str, Any], resume: bool, force: bool,
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
                old["finished"] = None if _missing_work(old) else old["finished"]
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
    for name in (store.MANIFEST, store.MU_FILE, VIEWS_FILE, ABLATION_MEANS_FILE):
        confined.unlink(root, root / name)
    for temp in store.leftover_temps(root):
        confined.unlink(root, temp)


def _missing_work(manifest: dict[str, Any]) -> bool:
    return any(missing_tables(manifest, shard) for shard in manifest["shards"])


ABLATION_MEANS_FILE = store.ABLATION_MEANS_FILE


def _corpus_input(analysis: str) -> CorpusInput:
    """The corpus-wide array ``analysis``'s shards need (its registry entry's ``corpus``)."""
    corpus = registry.REGISTRY[analysis].corpus
    if corpus is None:
        raise ValueError(f"the {analysis} analysis takes no corpus-wide input")
    return corpus


def corpus_array_shape(analysis: str, model: dict[str, Any]) -> tuple[int, int]:
    """The shape of an analysis's corpus-wide array for this model (e.g. [L+1, d] mean residual, [2L+1, d] means)."""
    return _corpus_input(analysis).shape(model["n_layers"], model["d_model"])


def _corpus_array_damaged(root: Path, manifest: dict[str, Any], analysis: str) -> bool:
    """Whether the stored corpus-wide array the manifest records a checksum of is missing or differs from it."""
    corpus = _corpus_input(analysis)
    recorded = manifest.get("analyses", {}).get(analysis, {}).get(corpus.checksum_key)
    if not recorded:
        return False
    try:
        array = store.load_array(root, root / corpus.file, corpus_array_shape(analysis, manifest["model"]))
        return store.array_sha256(array) != recorded
    except (OSError, ValueError, HorizonError):
        return True


def _ensure_corpus_array(root: Path, manifest: dict[str, Any], analysis: str,
                         compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load an analysis's stored corpus-wide array, or compute and store it once (under the lock: one worker does it).

    Every shard, worker and resumed run uses the same stored array, so the numbers do not depend
    on how the corpus was split. A stored file is used only when it has this model's shape, only
    finite values and the sha256 the manifest recorded; anything else (missing, damaged, NaN or
    inf, a crafted file with a recomputed checksum of another shape) is computed again. A computed
    array with NaN or inf (a model that overflows) is refused: it would turn every row into NaN.
    """
    corpus = _corpus_input(analysis)
    name, key, dtype = corpus.file, corpus.checksum_key, corpus.dtype
    shape = corpus_array_shape(analysis, manifest["model"])
    with store.locked(root):
        current = store.read_manifest(root)
        recorded = current["analyses"].get(analysis, {}).get(key)
        path = root / name
        if recorded:
            try:
                array = store.load_array(root, path, shape)
                if store.array_sha256(array) == recorded:
                    return np.array(array, dtype=dtype)
            except (OSError, ValueError):
                pass
        array = np.ascontiguousarray(compute().astype(dtype))
        if array.shape != shape or not np.isfinite(array).all():
            raise HorizonError(f"{corpus.description} of this model over the corpus has "
                               f"{'NaN or infinite values' if array.shape == shape else f'shape {array.shape}'}: "
                               "the model overflows (try --dtype float32) or is damaged; nothing was written")
        store.write_array_atomic(path, array)
        digest = store.array_sha256(array)
        current["analyses"][analysis][key] = digest
        current["updated"] = store.now_iso()
        store.write_json_atomic(root / store.MANIFEST, current)
        manifest["analyses"][analysis][key] = digest
        return array


def _record_shard(root: Path, shard_id: int, tables: dict[str, pa.Table], seconds: float, worker: str) -> None:
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


# ----------------------------------------------------------------------------- shard claims


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


def _todo(manifest: dict[str, Any], shard_spec: ShardSpec, analyses: list[str]) -> list[tuple[int, list[str]]]:
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


def run_sweep(
    corpus: Corpus,
    out: str | Path,
    model: str | LoadedModel | Runner,
    settings: SweepSettings,
    device: str = "auto",
    dtype: str = "float32",
    shard: ShardSpec | None = None,
    resume: bool = False,
    force: bool = False,
    backend: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    max_prompts: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[int, int, int], None] | None = None,
    batch_size: int | None = None,
    max_memory: int | None = None,
    on_eta: Callable[[float | None], None] | None = None,
) -> SweepSummary:
    """Run (or finish) a sweep into ``out``.

    ``on_plan(prompts_to_run, tokens_to_run, shards_done_before)`` is called once the work is
    known; ``progress(prompts, tokens)`` after each shard. ``batch_size`` (prompts per pass;
    None: the largest that fits) and ``max_memory`` (bytes; None: a safe share of what is free)
    change how the work is batched, not its numbers: they are recorded in the run's entry of the
    manifest, not in the settings, so a sweep resumes under other values. ``model``: a spec, a
    loaded model, or a ``Runner`` (core/run/runner.py) whose lock the worker's passes then share with the
    model's other callers (the Python API's). ``on_eta(seconds)``
    gets the estimated seconds left after each shard (core/sweep/plan.py's cost model, rescaled by the
    shards done; None before the first).
    """
    settings.validate()
    shard = shard or ShardSpec()
    if backend not in ("local", "ray"):
        raise HorizonError(f"unknown --backend {backend!r}: use local or ray")
    if workers < 1:
        raise HorizonError("--workers must be at least 1")
    root = Path(out).expanduser()
    _check_out(root, out)
    loaded = None if isinstance(model, str) else model  # an already loaded model (local backend only)
    if loaded is not None and backend != "local":
        raise ValueError("a loaded model can only be used with the local backend")
    spec = model if isinstance(model, str) else model.model.spec if isinstance(model, Runner) else model.spec
    config = WorkerConfig(model=spec, device=device, dtype=dtype,
                          texts=corpus.texts, settings=settings, load_kwargs=dict(load_kwargs or {}),
                          batch_size=batch_size, max_memory=max_memory)
    started_clock = time.perf_counter()
    started = store.now_iso()

    try:
        return _run(corpus, root, config, loaded, settings, shard, resume, force, backend, workers, ray_address,
                    max_prompts, progress, on_plan, on_eta, started, started_clock)
    except store.WriteError as exc:
        if confined.is_file(root, root / store.MANIFEST):
            raise HorizonError(f"{exc}; the finished shards are kept: run the same command with --resume once "
                               "that is fixed") from None
        raise


def _check_out(root: Path, out: str | Path) -> None:
    """Refuse an --out that cannot be written before the model loads (a file in the way, no permission, a
    link or special file where the store works)."""
    if root.exists() and not root.is_dir():
        raise HorizonError(f"--out {out} is a file, not a directory")
    if root.is_dir():
        store.refuse_foreign(root)
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != root and not existing.is_dir():
        raise HorizonError(f"cannot write {root}: {existing} is a file, not a directory")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        with contextlib.suppress(OSError):
            if os.statvfs(existing).f_flag & os.ST_RDONLY:
                raise HorizonError(f"cannot write {root}: {existing} is on a read-only filesystem")
        raise HorizonError(f"cannot write {root}: {existing} is not writable (permission denied)")


def _run(corpus: Corpus, root: Path, config: WorkerConfig, loaded: LoadedModel | Runner | None,
         settings: SweepSettings,
         shard: ShardSpec, resume: bool, force: bool, backend: str, workers: int, ray_address: str | None,
         max_prompts: int | None, progress: Callable[[int, int], None] | None,
         on_plan: Callable[[int, int, int], None] | None, on_eta: Callable[[float | None], None] | None,
         started: str, started_clock: float) -> SweepSummary:
    pool = LocalPool(config, loaded) if backend == "local" else RayPool(config, workers, ray_address)
    try:
        described = pool.describe()
        settings.validate_for_model(described["model"]["n_layers"], described["model"]["n_ctx"])
        new = _new_manifest(corpus, settings, described, max_prompts, started)
        manifest, _, notes = _prepare_directory(root, new, resume, force, corpus.texts)
        run_record = {"started": started, "ended": None, "shard": str(shard), "backend": backend,
                      "workers": pool.size, "host": described["host"], "device": described["device"],
                      "pid": os.getpid(), "batch_size": config.batch_size or "auto",
                      "max_memory": config.max_memory or "auto"}
        store.update_manifest(root, lambda m: m["runs"].append(run_record))

        todo = _todo(manifest, shard, settings.analyses)
        done_before = sum(1 for s in manifest["shards"] if not missing_tables(manifest, s))
        shard_tokens = {int(s["id"]): int(s["n_tokens"]) for s in manifest["shards"]}
        shard_prompts = {int(s["id"]): s["prompts"][1] - s["prompts"][0] + 1 for s in manifest["shards"]}
        work_started = time.perf_counter()
        if on_plan is not None:
            on_plan(sum(shard_prompts[i] for i, _ in todo), sum(shard_tokens[i] for i, _ in todo), done_before)

        for name, entry in registry.REGISTRY.items():  # each analysis's corpus-wide array, before any shard
            wanted = entry.corpus
            if wanted is None:
                continue
            compute = functools.partial(pool.compute_corpus_input, name)
            if wanted.needed(settings) and any(name in analyses for _, analyses in todo):
                pool.set_corpus_input(name, _ensure_corpus_array(root, manifest, name, compute))
            elif (wanted.kept_after_sweep and name in manifest["analyses"]
                  and _corpus_array_damaged(root, manifest, name)):
                _ensure_corpus_array(root, manifest, name, compute)  # a damaged stored array is computed again
                notes.append(f"computed {root / wanted.file} again (it was missing or damaged)")

        plans = plan_shards(len(corpus), settings.shard_size)
        eta = Eta({shard_id: predicted_shard_work([described["n_tokens"][i] for i in plans[shard_id]], analyses,
                                                  settings, described["dims"], config.batch_size)
                   for shard_id, analyses in todo})
        if on_eta is not None:
            on_eta(eta.seconds_left())
        prompts_run = tokens_run = shards_run = 0
        last_finished = time.perf_counter()
        claims = Claims(root)
        try:
            # The pool takes shards from claims.take as it frees up: each is claimed just before it runs.
            for shard_id, tables, seconds in pool.run(claims.take(todo), plans):  # type: ignore[arg-type]
                _record_shard(root, shard_id, tables, seconds, str(shard))
                claims.release(shard_id)
                shards_run += 1
                prompts_run += shard_prompts[shard_id]
                tokens_run += shard_tokens[shard_id]
                # Wall time between finished shards (writes included; with several workers, their throughput).
                now = time.perf_counter()
                for skipped in claims.skipped:
                    eta.left.discard(skipped)
                eta.finish(shard_id, now - last_finished)
                last_finished = now
                if progress is not None:
                    progress(shard_prompts[shard_id], shard_tokens[shard_id])
                if on_eta is not None:
                    on_eta(eta.seconds_left())
        finally:
            claims.release_all()
        elsewhere = sorted({holder for holder in claims.skipped.values() if holder != "done"})
        if elsewhere:
            notes.append(f"{sum(1 for h in claims.skipped.values() if h != 'done')} shard(s) were being run by "
                         f"another process ({', '.join(elsewhere[:3])}) and were left to it; once it ends, "
                         "--resume runs any it did not finish")
        done_meanwhile = sum(1 for holder in claims.skipped.values() if holder == "done")
        if done_meanwhile:
            notes.append(f"{done_meanwhile} shard(s) were finished by another run meanwhile and were not run again")
        work_seconds = time.perf_counter() - work_started
        notes += pool.notes  # workers lost and shards run again
        failed = [{"id": shard_id, "prompts": manifest["shards"][shard_id]["prompts"], "reason": reason}
                  for shard_id, reason in sorted(pool.failed.items())]
    finally:
        pool.close()

    ended = store.now_iso()

    def finish(m: dict[str, Any]) -> None:
        for run in m["runs"]:
            if run.get("started") == started and run.get("pid") == os.getpid():
                run["ended"] = ended
                if failed:
                    run["failed_shards"] = [shard["id"] for shard in failed]
        if not _missing_work(m):
            m["finished"] = ended

    final = store.update_manifest(root, finish)
    try:
        write_views(root)
    except store.WriteError as exc:  # only a cache: report computes the views without it
        notes.append(f"{exc}; report computes the views from the tables instead")
    done = sum(1 for s in final["shards"] if not missing_tables(final, s))
    return SweepSummary(
        out=str(root), shards_total=len(final["shards"]), shards_done_before=done_before, shards_run=shards_run,
        shards_done=done, prompts_run=prompts_run, tokens_run=tokens_run,
        seconds=time.perf_counter() - started_clock, work_seconds=work_seconds,
        complete=final["finished"] is not None,
        analyses=list(final["analyses"]),
        notes=notes,
        failed_shards=failed,
    )
