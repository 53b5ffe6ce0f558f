"""Running the analyses over a corpus into a results store (``core/results/store.py``), locally or on Ray.

This module is the driver: it owns the results directory of a run (creates, checks, resumes
or rebuilds its manifest, computes the corpus-wide arrays once, records each shard the pool
returns, writes the views cache at the end). The parts live beside it: the results directory's
manifest and shard records (core/sweep/sweep_directory.py), the corpus-wide arrays
(core/sweep/corpus_arrays.py), the shard claims of concurrent runs (core/sweep/shard_claims.py), the
settings and the shard plan (core/sweep/sweep_settings.py), the worker that turns a shard into tables
(core/sweep/worker.py), the local and Ray pools (core/sweep/pools.py), the corpus views
(core/results/views.py), and each analysis's rows and view (core/analyses).

Truncation centres with the mean residual of the *whole corpus* (docs/SCIENCE.md section 4): it is
computed once, before any shard, stored as ``truncation_mu.npy`` and reused by every shard,
worker and resumed run, so results do not depend on how the corpus was split.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from horizon.core import analyses as registry
from horizon.core.errors import HorizonError
from horizon.core.model.corpus import Corpus
from horizon.core.results import confined, store
from horizon.core.results.rebuild import missing_tables
from horizon.core.results.views import corpus_views, write_views
from horizon.core.run.runner import Runner
from horizon.core.sweep.corpus_arrays import corpus_array_damaged, corpus_array_shape, ensure_corpus_array
from horizon.core.sweep.plan import Eta, predicted_shard_work
from horizon.core.sweep.pools import LocalPool, RayPool
from horizon.core.sweep.shard_claims import Claims, shards_to_run
from horizon.core.sweep.sweep_directory import missing_work, prepare_directory, record_shard
from horizon.core.sweep.sweep_settings import ShardSpec, SweepSettings, package_versions, plan_shards
from horizon.core.sweep.worker import WorkerConfig

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel

__all__ = ["ABLATION_MEANS_FILE", "ShardSpec", "SweepSettings", "SweepSummary", "corpus_array_shape", "corpus_views",
           "plan_shards", "run_sweep"]

# The mean-ablation means' file (the store names it), for the callers that import it from the driver.
ABLATION_MEANS_FILE = store.ABLATION_MEANS_FILE


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
        manifest, _, notes = prepare_directory(root, new, resume, force, corpus.texts)
        run_record = {"started": started, "ended": None, "shard": str(shard), "backend": backend,
                      "workers": pool.size, "host": described["host"], "device": described["device"],
                      "pid": os.getpid(), "batch_size": config.batch_size or "auto",
                      "max_memory": config.max_memory or "auto"}
        store.update_manifest(root, lambda m: m["runs"].append(run_record))

        todo = shards_to_run(manifest, shard, settings.analyses)
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
                pool.set_corpus_input(name, ensure_corpus_array(root, manifest, name, compute))
            elif (wanted.kept_after_sweep and name in manifest["analyses"]
                  and corpus_array_damaged(root, manifest, name)):
                ensure_corpus_array(root, manifest, name, compute)  # a damaged stored array is computed again
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
                record_shard(root, shard_id, tables, seconds, str(shard))
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
        if not missing_work(m):
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
