"""Running the analyses over a corpus into a results store (``core/store.py``), locally or on Ray.

The work unit is a *shard*: ``shard_size`` consecutive prompts. ``--shard I/N`` gives worker I
the shards whose id is I modulo N, so N workers (processes, machines, Ray actors) split a corpus
deterministically and write into one directory. A ``SweepWorker`` owns one loaded model and turns
a shard into Arrow tables; the driver (``run_sweep``) owns the directory: it writes each table
atomically and marks the shard done in the manifest. With ``--backend ray`` the driver keeps
only the store and hands shards to one actor per device, each of which loads the model once.

Truncation centres with the mean residual of the *whole corpus* (docs/SCIENCE.md section 4): it is
computed once, before any shard, stored as ``truncation_mu.npy`` and reused by every shard,
worker and resumed run, so results do not depend on how the corpus was split.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from horizon.core import options, store
from horizon.core.corpus import Corpus, check_max_tokens
from horizon.core.errors import HorizonError
from horizon.core.store import ANALYSES, ANALYSIS_TABLES, BASE_TABLES

if TYPE_CHECKING:
    from horizon.core.loader import LoadedModel

DEFAULT_SHARD_SIZE = 8
PACKAGES = ("horizon-inspector", "torch", "transformer-lens", "transformers", "pyarrow", "numpy", "ray")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ShardSpec:
    """``--shard I/N``: this worker takes the shards whose id is ``index`` modulo ``count``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> ShardSpec:
        if text is None:
            return cls()
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise HorizonError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise HorizonError(f"--shard {text}: I must be in 0..N-1 and N at least 1")
        return cls(index, count)

    def owns(self, shard_id: int) -> bool:
        return shard_id % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class SweepSettings:
    """Everything that changes the numbers of a sweep (recorded in the manifest, checked on resume)."""

    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    max_tokens: int | None = None
    bos: bool = True
    bos_token: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    lengths: list[int] = field(default_factory=lambda: [1, 5, 10])
    ks: list[int] | None = None  # None: every k from 1 to L+1 (the scan default)
    start_layers: list[int] = field(default_factory=lambda: [0])
    tol: float = 0.1
    source: str = "recursive"
    keep_embed: bool = False
    final: str = "window"
    ablation: str = "zero"  # scan: "mean" replaces outputs outside the window by their corpus-wide means

    def validate(self) -> None:
        if not self.analyses:
            raise HorizonError("--analyses is empty")
        unknown = [name for name in self.analyses if name not in ANALYSES]
        if unknown:
            raise HorizonError(f"unknown analysis {unknown[0]!r}: choose from {', '.join(ANALYSES)}")
        self.analyses = [name for name in ANALYSES if name in self.analyses]  # canonical order, no repeats
        check_max_tokens(self.max_tokens)
        options.check_at_least(self.shard_size, "--shard-size", 1)
        if "truncate" in self.analyses and not self.bos:
            raise HorizonError("the truncate analysis needs BOS (truncated prompts keep it): drop --no-bos "
                               "or leave truncate out of --analyses")
        self.tol = options.check_tol(self.tol)
        options.check_ablation(self.ablation)
        options.check_lengths(self.lengths)
        options.check_ks(self.ks)
        options.check_start_layers(self.start_layers)

    def validate_for_model(self, n_layers: int, n_ctx: int) -> None:
        """The checks that need the model: layer indices and lengths against its size."""
        if "scan" in self.analyses:
            options.check_ks(self.ks, n_layers)
            options.check_start_layers(self.start_layers, n_layers)
        if "truncate" in self.analyses:
            limit = n_ctx if self.max_tokens is None else min(self.max_tokens, n_ctx)
            options.check_lengths(self.lengths, limit)

    def analysis_settings(self, n_layers: int) -> dict[str, dict[str, Any]]:
        """Per analysis, the settings that define its numbers."""
        every: dict[str, dict[str, Any]] = {
            "norms": {"sites": ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]},
            "truncate": {"lengths": sorted(set(self.lengths)), "centring": "corpus mean"},
            "scan": {
                "ks": self.ks if self.ks is not None else list(range(1, n_layers + 2)),
                "start_layers": self.start_layers, "tol": self.tol, "source": self.source,
                "keep_embed": self.keep_embed, "final": self.final, "unit": "layer",
                # Recorded only when mean, so sweeps from before the option still resume.
                **({"ablation": "mean", "means": "corpus mean"} if self.ablation == "mean" else {}),
            },
            "attention": {"buckets": ["0", "1-5", "6-10", ">10"]},
        }
        return {name: every[name] for name in self.analyses}


def plan_shards(n_prompts: int, shard_size: int) -> list[list[int]]:
    """Consecutive groups of prompt indices: shard i holds prompts i*size .. (i+1)*size - 1."""
    return [list(range(start, min(start + shard_size, n_prompts))) for start in range(0, n_prompts, shard_size)]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ----------------------------------------------------------------------------- the worker


@dataclass
class WorkerConfig:
    """What a worker needs to rebuild the same model and inputs anywhere (it must pickle for Ray)."""

    model: str
    device: str
    dtype: str
    texts: list[str]
    settings: SweepSettings
    bridge_kwargs: dict[str, Any] = field(default_factory=dict)


class SweepWorker:
    """One loaded model that turns shards into tables. Used in-process, or as a Ray actor."""

    def __init__(self, config: WorkerConfig, loaded: LoadedModel | None = None) -> None:
        from horizon.core.corpus import Corpus, tokenize_corpus
        from horizon.core.loader import load_model

        self.config = config
        self.settings = config.settings
        self.model = loaded if loaded is not None else load_model(
            config.model, device=config.device, dtype=config.dtype, **config.bridge_kwargs
        )
        corpus = Corpus(name="", texts=config.texts, kinds=[""] * len(config.texts))
        self.token_ids = tokenize_corpus(self.model, corpus, self.settings.max_tokens, self.settings.bos,
                                         self.settings.bos_token)
        self.mu: Any = None

    # -- what the driver records about the model
    def describe(self) -> dict[str, Any]:
        model = self.model
        bos_id = self.token_ids[0][0] if self.settings.bos else None
        return {
            "model": {
                "spec": model.spec, "hash": model.model_hash, "source": model.source,
                "architecture": model.architecture, "n_layers": model.n_layers, "d_model": model.d_model,
                "n_heads": model.n_heads, "n_kv_heads": model.n_kv_heads, "n_ctx": model.n_ctx,
            },
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "bos": {"enabled": self.settings.bos, "token": self.settings.bos_token or model.default_bos
                    if self.settings.bos else None, "token_id": bos_id},
            "n_tokens": [len(ids) for ids in self.token_ids],
            "host": socket.gethostname(),
        }

    def compute_mu(self) -> np.ndarray:
        """The corpus-wide mean residual [L+1, d_model] for truncation's centring."""
        from horizon.core.truncation import mean_residual

        return mean_residual(self.model, self.token_ids, self.settings.bos).float().cpu().numpy()

    def set_mu(self, mu: np.ndarray) -> None:
        import torch

        self.mu = torch.as_tensor(mu, dtype=torch.float32, device=self.model.device)

    def compute_ablation_means(self) -> np.ndarray:
        """Mean ablation's corpus-wide means of every sublayer output [2L+1, d_model] (float64)."""
        from horizon.core.horizon import corpus_ablation_means

        return corpus_ablation_means(self.model, self.token_ids, self.settings.bos).mean.cpu().numpy()

    def set_ablation_means(self, means: np.ndarray) -> None:
        import torch
        from horizon.core.horizon import AblationMeans

        self.ablation_means = AblationMeans(torch.as_tensor(means, dtype=torch.float64, device=self.model.device),
                                            has_bos=self.settings.bos)

    def run_shard(self, prompt_indices: Sequence[int], analyses: Sequence[str]) -> dict[str, pa.Table]:
        """All tables of one shard: the base tables plus one per analysis asked for."""
        import torch
        from horizon.core.prompts import decode_tokens

        indices = list(prompt_indices)
        token_ids = [self.token_ids[index] for index in indices]
        tokens = [decode_tokens(self.model, ids) for ids in token_ids]
        tables = {
            "prompts": _prompts_table(indices, [self.config.texts[index] for index in indices], token_ids),
            "tokens": _tokens_table(indices, token_ids, tokens),
        }
        with torch.inference_mode():
            for analysis in analyses:
                tables[ANALYSIS_TABLES[analysis]] = ANALYSIS_RUNNERS[analysis](self, indices, token_ids, tokens)
        return tables


def _prompts_table(indices: list[int], texts: list[str], token_ids: list[list[int]]) -> pa.Table:
    return pa.table({
        "prompt": pa.array(indices, pa.int32()),
        "n_tokens": pa.array([len(ids) for ids in token_ids], pa.int32()),
        "text": pa.array(texts, pa.string()),
    })


def _tokens_table(indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    return pa.table({
        "prompt": pa.array(np.repeat(indices, [len(ids) for ids in token_ids]), pa.int32()),
        "position": pa.array(np.concatenate([np.arange(len(ids)) for ids in token_ids]), pa.int32()),
        "token_id": pa.array(np.concatenate([np.asarray(ids) for ids in token_ids]), pa.int32()),
        "token": pa.array([text for row in tokens for text in row], pa.string()),
    })


def _norms_rows(worker: SweepWorker, indices: list[int], token_ids: list[list[int]],
                tokens: list[list[str]]) -> pa.Table:
    from horizon.core.norms import NORM_SITES, analyse_norms

    report = analyse_norms(worker.model, token_ids, worker.settings.bos)
    columns: dict[str, list[np.ndarray]] = {key: [] for key in ("prompt", "position", "layer", "norm", "std")}
    sites: list[np.ndarray] = []
    token_text: list[np.ndarray] = []
    for row, prompt in enumerate(indices):
        length = len(token_ids[row])
        prompt_tokens = np.asarray(tokens[row], dtype=object)
        for site in NORM_SITES:
            norms = report.norms[site][row]  # [layers, T]
            stds = report.stds[site][row]
            n_rows = norms.shape[0]
            columns["prompt"].append(np.full(n_rows * length, prompt))
            columns["layer"].append(np.repeat(np.arange(n_rows), length))
            columns["position"].append(np.tile(np.arange(length), n_rows))
            columns["norm"].append(norms.reshape(-1))
            columns["std"].append(stds.reshape(-1))
            sites.append(np.full(n_rows * length, site, dtype=object))
            token_text.append(np.tile(prompt_tokens, n_rows))
    return pa.table({
        "prompt": pa.array(np.concatenate(columns["prompt"]), pa.int32()),
        "position": pa.array(np.concatenate(columns["position"]), pa.int32()),
        "token": pa.array(np.concatenate(token_text), pa.string()),
        "layer": pa.array(np.concatenate(columns["layer"]), pa.int16()),
        "site": pa.array(np.concatenate(sites), pa.string()),
        "norm": pa.array(np.concatenate(columns["norm"]), pa.float32()),
        "std": pa.array(np.concatenate(columns["std"]), pa.float32()),
    })


def _truncation_rows(worker: SweepWorker, indices: list[int], token_ids: list[list[int]],
                     tokens: list[list[str]]) -> pa.Table:
    from horizon.core.truncation import analyse_truncation

    if worker.mu is None:
        raise RuntimeError("the corpus mean residual must be set before truncation shards run")
    report = analyse_truncation(worker.model, token_ids, lengths=worker.settings.lengths, mu=worker.mu,
                                n_outliers=0)
    n_records, n_rows = report.cos.shape
    prompt_map = np.asarray(indices)
    return pa.table({
        "prompt": pa.array(np.repeat(prompt_map[report.record_prompt], n_rows), pa.int32()),
        "position": pa.array(np.repeat(report.record_pos, n_rows), pa.int32()),
        "token": pa.array(np.repeat(np.asarray(report.record_token, dtype=object), n_rows), pa.string()),
        "category": pa.array(np.repeat(np.asarray(report.record_category, dtype=object), n_rows),
                             pa.string()),
        "length": pa.array(np.repeat(report.record_length, n_rows), pa.int16()),
        "layer": pa.array(np.tile(np.arange(n_rows), n_records), pa.int16()),
        "cos": pa.array(report.cos.reshape(-1), pa.float32()),
        "cos_raw": pa.array(report.cos_raw.reshape(-1), pa.float32()),
    })


def _horizon_rows(worker: SweepWorker, indices: list[int], token_ids: list[list[int]],
                  tokens: list[list[str]]) -> pa.Table:
    from horizon.core.horizon import scan

    settings = worker.settings
    records: list[dict[str, Any]] = []
    # One scan per prompt: each prompt's curve is its own row set, and corpus aggregates are
    # the token-weighted means of them (every metric is a mean over next-token predictions).
    for prompt, ids in zip(indices, token_ids, strict=True):
        result = scan(worker.model, [ids], ks=settings.ks, start_layers=settings.start_layers, tol=settings.tol,
                      source=settings.source, keep_embed=settings.keep_embed, final=settings.final,
                      ablation=settings.ablation, means=getattr(worker, "ablation_means", None), has_bos=settings.bos)
        for row in result.rows:
            records.append({"prompt": prompt, "n_tokens": result.n_tokens, "k": row["k"], "K": row["K"],
                            "start_layer": row["start_layer"], "loss_clean": result.loss_clean,
                            "loss": row["loss"], "delta_loss": row["delta_loss"], "kl": row["kl"],
                            "top1": row["top1_agreement"]})
    schema = pa.schema([("prompt", pa.int32()), ("n_tokens", pa.int32()), ("k", pa.int16()), ("K", pa.int16()),
                        ("start_layer", pa.int16()), ("loss_clean", pa.float64()), ("loss", pa.float64()),
                        ("delta_loss", pa.float64()), ("kl", pa.float64()), ("top1", pa.float64())])
    return pa.Table.from_pylist(records, schema=schema)


# AttentionReport bucket name -> table column.
ATTENTION_MASSES = {"0": "mass_0", "1-5": "mass_1_5", "6-10": "mass_6_10", ">10": "mass_gt10"}


def _attention_rows(worker: SweepWorker, indices: list[int], token_ids: list[list[int]],
                    tokens: list[list[str]]) -> pa.Table:
    try:
        from horizon.core.attention import attention_distance
    except ModuleNotFoundError as exc:
        if exc.name != "horizon.core.attention":
            raise
        raise HorizonError("the attention analysis is not available in this build (core/attention.py is "
                           "missing): leave it out of --analyses") from None
    parts: list[pa.Table] = []
    # One report per prompt, so the table keeps prompts apart; corpus views weight by n_queries.
    for prompt, ids in zip(indices, token_ids, strict=True):
        report = attention_distance(worker.model, [ids], worker.settings.bos)
        n_layers, n_heads = report.mean_distance.shape
        size = n_layers * n_heads
        columns: dict[str, pa.Array] = {
            "prompt": pa.array(np.full(size, prompt), pa.int32()),
            "n_queries": pa.array(np.full(size, report.n_queries), pa.int32()),
            "layer": pa.array(np.repeat(np.arange(n_layers), n_heads), pa.int16()),
            "head": pa.array(np.tile(np.arange(n_heads), n_layers), pa.int16()),
            "mean_distance": pa.array(report.mean_distance.reshape(-1), pa.float64()),
            "mean_distance_no_bos": pa.array(report.mean_distance_no_bos.reshape(-1), pa.float64()),
        }
        for suffix, masses in (("", report.mass), ("_no_bos", report.mass_no_bos)):
            for bucket, name in ATTENTION_MASSES.items():
                columns[name + suffix] = pa.array(np.asarray(masses[bucket]).reshape(-1), pa.float64())
        parts.append(pa.table(columns))
    return pa.concat_tables(parts)


ANALYSIS_RUNNERS: dict[str, Callable[[SweepWorker, list[int], list[list[int]], list[list[str]]], pa.Table]] = {
    "norms": _norms_rows,
    "truncate": _truncation_rows,
    "scan": _horizon_rows,
    "attention": _attention_rows,
}


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
    problems: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Throughput of the analyses themselves (model load and set-up left out)."""
        return self.tokens_run / self.work_seconds if self.work_seconds > 0 else 0.0


Progress = Callable[[int, int], None]  # (prompts finished, tokens finished) since the last call


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
    files moved to the quarantine folder) or rebuilt, one line each.
    """
    with store.locked(root):
        notes: list[str] = []
        old = None
        damaged = None
        if (root / store.MANIFEST).exists():
            try:
                old = store.read_manifest(root)
            except HorizonError as exc:
                damaged = str(exc)
        if old is not None:
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
            manifest, notes = _rebuild_manifest(root, new, texts, damaged)
            notes += store.tidy(root, manifest)
            store.write_json_atomic(root / store.MANIFEST, manifest)
            return manifest, "rebuilt", notes
        elif resume and not force:
            raise HorizonError(f"--resume: {root} holds no sweep to resume")
        elif root.exists() and any(path.name not in (store.LOCK, store.QUARANTINE) for path in root.iterdir()):
            if not force:
                raise HorizonError(f"{root} exists and is not a results directory; use another --out or --force")
            _discard(root)
        elif force:
            _discard(root)
        store.write_json_atomic(root / store.MANIFEST, new)
        return new, "created", notes


def _has_shard_files(root: Path) -> bool:
    return any((root / table).is_dir() and any((root / table).glob("shard-*.parquet")) for table in store.TABLES)


def _rebuild_manifest(root: Path, new: dict[str, Any], texts: Sequence[str],
                      damaged: str | None) -> tuple[dict[str, Any], list[str]]:
    """A manifest for this run that adopts every shard file that provably belongs to it.

    A file is adopted when it reads completely, has its table's schema, covers exactly its
    shard's prompts, and has the row count (and the k, start layer and length values) this
    run's corpus, tokens and settings give; the prompts table must hold this corpus's texts and
    token counts. What a file cannot show (the model's weights, scan tol/source/final) is taken
    on trust from this run. Everything else is left for ``tidy`` to move to the quarantine folder.
    """
    manifest = json.loads(json.dumps(new))
    moved = store.quarantine(root, [root / store.MANIFEST]) if damaged is not None else None
    n_layers, n_heads = manifest["model"]["n_layers"], manifest["model"]["n_heads"]
    analyses = manifest["analyses"]
    adopted = 0
    for shard in manifest["shards"]:
        shard_id = int(shard["id"])
        first, last = shard["prompts"]
        prompts = list(range(first, last + 1))
        base = _read_whole(store.shard_path(root, "prompts", shard_id), "prompts")
        if base is None or base.column("prompt").to_pylist() != prompts \
                or base.column("text").to_pylist() != list(texts[first:last + 1]) \
                or sum(base.column("n_tokens").to_pylist()) != shard["n_tokens"]:
            continue  # without its prompts table nothing in this shard can be checked
        lengths = base.column("n_tokens").to_pylist()
        expected = {"prompts": len(prompts), "tokens": sum(lengths),
                    "norms": sum(lengths) * (n_layers + 1 + 4 * n_layers),
                    "attention": len(prompts) * n_layers * n_heads}
        if "scan" in analyses:
            scan = analyses["scan"]
            expected["horizon"] = len(prompts) * len(set(scan["ks"])) * len(set(scan["start_layers"]))
        if "truncate" in analyses:
            c_values = analyses["truncate"]["lengths"]
            expected["truncation"] = (n_layers + 1) * sum(max(0, t - 1 - c) for t in lengths for c in c_values)
        wanted = [*store.BASE_TABLES, *(ANALYSIS_TABLES[name] for name in analyses)]
        for table in wanted:
            path = store.shard_path(root, table, shard_id)
            data = base if table == "prompts" else _read_whole(path, table)
            if data is None or data.num_rows != expected[table] or not _same_values(data, {"prompt": prompts}):
                continue
            if table == "horizon" and not _same_values(data, {"k": analyses["scan"]["ks"],
                                                                "start_layer": analyses["scan"]["start_layers"]}):
                continue
            if table == "truncation" and not _same_values(data, {"length": analyses["truncate"]["lengths"]}, True):
                continue
            shard["rows"][table] = data.num_rows
            shard.setdefault("sha256", {})[table] = store.file_sha256(path)
            adopted += 1
        shard["status"] = "pending" if _missing_tables(manifest, shard) else "done"
    if "truncate" in analyses and any("truncation" in shard["rows"] for shard in manifest["shards"]):
        try:
            mu = np.load(root / store.MU_FILE, allow_pickle=False)
            if mu.shape == (n_layers + 1, manifest["model"]["d_model"]) and np.isfinite(mu).all():
                analyses["truncate"]["_mu_sha256"] = hashlib.sha256(mu.tobytes()).hexdigest()
        except (OSError, ValueError, EOFError):
            pass  # computed again before any truncation shard runs
    manifest["rebuilt"] = store.now_iso()
    done = sum(1 for shard in manifest["shards"] if shard["status"] == "done")
    why = f"it was damaged (kept in {moved})" if moved is not None else "it was missing"
    notes = [f"rebuilt {root / store.MANIFEST} ({why}) from {adopted} shard file(s) that match this run's corpus, "
             f"tokens and settings: {done}/{len(manifest['shards'])} shards done; the model weights and the scan's "
             "tol, source, final readout and ablation cannot be checked from the files and are taken from this run"]
    return manifest, notes


def _same_values(data: pa.Table, wanted: dict[str, list[int]], subset: bool = False) -> bool:
    for column, values in wanted.items():
        found = set(data.column(column).to_pylist())
        if not (found <= set(values) if subset else found == set(values)):
            return False
    return True


def _read_whole(path: Path, table: str) -> pa.Table | None:
    """The table in ``path`` when it is complete and has its schema, else None."""
    if not path.is_file() or store._check_file(path, None, table) is not None:
        return None
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError):
        return None


def _discard(root: Path) -> None:
    """Remove a previous sweep's files (only the ones a sweep writes; the quarantine folder stays)."""
    for table in store.TABLES:
        shutil.rmtree(root / table, ignore_errors=True)
    for name in (store.MANIFEST, store.MU_FILE, VIEWS_FILE, ABLATION_MEANS_FILE):
        (root / name).unlink(missing_ok=True)
    for temp in store.leftover_temps(root):
        temp.unlink(missing_ok=True)


def _missing_work(manifest: dict[str, Any]) -> bool:
    return any(_missing_tables(manifest, shard) for shard in manifest["shards"])


def _missing_tables(manifest: dict[str, Any], shard: dict[str, Any]) -> list[str]:
    wanted = [*BASE_TABLES, *(ANALYSIS_TABLES[name] for name in manifest["analyses"])]
    return [table for table in wanted if table not in shard.get("rows", {})]


def _ensure_mu(root: Path, manifest: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load the stored corpus mean, or compute and store it once (under the lock: one worker does it).

    A missing, unreadable or changed file (its sha256 is recorded) is computed again.
    """
    with store.locked(root):
        current = store.read_manifest(root)
        recorded = current["analyses"].get("truncate", {}).get("_mu_sha256")
        path = root / store.MU_FILE
        if recorded and path.exists():
            try:
                mu = np.load(path, allow_pickle=False)
                if hashlib.sha256(np.ascontiguousarray(mu).tobytes()).hexdigest() == recorded:
                    return mu
            except (OSError, ValueError, EOFError):
                pass
        mu = compute().astype(np.float32)
        store.write_array_atomic(path, mu)
        current["analyses"]["truncate"]["_mu_sha256"] = hashlib.sha256(mu.tobytes()).hexdigest()
        current["updated"] = store.now_iso()
        store.write_json_atomic(root / store.MANIFEST, current)
        manifest["analyses"]["truncate"]["_mu_sha256"] = current["analyses"]["truncate"]["_mu_sha256"]
        return mu


ABLATION_MEANS_FILE = "ablation_means.npy"  # the scan's corpus-wide means with --ablation mean [2L+1, d_model]


def _ensure_ablation_means(root: Path, manifest: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Mean ablation's corpus-wide means: loaded, or computed once before any shard (as the truncation mean is).

    Every shard, worker and resumed run uses the same stored means, so the scan's numbers do not
    depend on how the corpus was split. A missing or changed file (its sha256 is recorded) is computed again.
    """
    with store.locked(root):
        current = store.read_manifest(root)
        recorded = current["analyses"].get("scan", {}).get("_means_sha256")
        path = root / ABLATION_MEANS_FILE
        if recorded and path.exists():
            try:
                means = np.load(path, allow_pickle=False)
                if hashlib.sha256(np.ascontiguousarray(means).tobytes()).hexdigest() == recorded:
                    return means
            except (OSError, ValueError, EOFError):
                pass
        means = np.ascontiguousarray(compute().astype(np.float64))
        store.write_array_atomic(path, means)
        digest = hashlib.sha256(means.tobytes()).hexdigest()
        current["analyses"]["scan"]["_means_sha256"] = digest
        current["updated"] = store.now_iso()
        store.write_json_atomic(root / store.MANIFEST, current)
        manifest["analyses"]["scan"]["_means_sha256"] = digest
        return means


def _record_shard(root: Path, shard_id: int, tables: dict[str, pa.Table], seconds: float, worker: str) -> None:
    """Write a shard's tables, then mark them in the manifest (in that order: see store.py).

    The slow part (writing and syncing the temp files) runs outside the lock; the renames and
    the manifest update run under it, so a run tidying the directory never sees a renamed file
    that is not recorded yet.
    """
    staged: dict[str, Path] = {}
    try:
        for table, data in tables.items():
            staged[table] = store.stage_table(store.shard_path(root, table, shard_id), data)
        sums = {table: store.file_sha256(temp) for table, temp in staged.items()}

        def change(manifest: dict[str, Any]) -> None:
            shard = manifest["shards"][shard_id]
            shard["rows"].update({table: data.num_rows for table, data in tables.items()})
            shard.setdefault("sha256", {}).update(sums)
            shard["status"] = "pending" if _missing_tables(manifest, shard) else "done"
            shard["finished"] = store.now_iso()
            shard["seconds"] = round(seconds, 3)
            shard["worker"] = worker

        with store.locked(root):
            for table in list(staged):
                store.commit(staged.pop(table), store.shard_path(root, table, shard_id))
            store.update_manifest(root, change, lock=False)
    finally:
        for temp in staged.values():
            temp.unlink(missing_ok=True)


def _todo(manifest: dict[str, Any], shard_spec: ShardSpec, analyses: list[str]) -> list[tuple[int, list[str]]]:
    """(shard id, analyses still to run) for this worker's shards, in id order."""
    todo = []
    for shard in manifest["shards"]:
        shard_id = int(shard["id"])
        if not shard_spec.owns(shard_id):
            continue
        missing = _missing_tables(manifest, shard)
        wanted = [name for name in analyses if ANALYSIS_TABLES[name] in missing]
        if wanted or any(table in missing for table in BASE_TABLES):
            # Base tables are rewritten whenever a shard runs, so a partly-done shard stays consistent.
            todo.append((shard_id, wanted))
    return todo


def run_sweep(
    corpus: Corpus,
    out: str | Path,
    model: str | LoadedModel,
    settings: SweepSettings,
    device: str = "auto",
    dtype: str = "float32",
    shard: ShardSpec | None = None,
    resume: bool = False,
    force: bool = False,
    backend: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    bridge_kwargs: dict[str, Any] | None = None,
    max_prompts: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[int, int, int], None] | None = None,
) -> SweepSummary:
    """Run (or finish) a sweep into ``out``.

    ``on_plan(prompts_to_run, tokens_to_run, shards_done_before)`` is called once the work is
    known; ``progress(prompts, tokens)`` after each shard.
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
    config = WorkerConfig(model=model if isinstance(model, str) else model.spec, device=device, dtype=dtype,
                          texts=corpus.texts, settings=settings, bridge_kwargs=dict(bridge_kwargs or {}))
    started_clock = time.perf_counter()
    started = store.now_iso()

    try:
        return _run(corpus, root, config, loaded, settings, shard, resume, force, backend, workers, ray_address,
                    max_prompts, progress, on_plan, started, started_clock)
    except store.WriteError as exc:
        if (root / store.MANIFEST).is_file():
            raise HorizonError(f"{exc}; the finished shards are kept: run the same command with --resume once "
                               "that is fixed") from None
        raise


def _check_out(root: Path, out: str | Path) -> None:
    """Refuse an --out that cannot be written before the model loads (a file in the way, no permission)."""
    if root.exists() and not root.is_dir():
        raise HorizonError(f"--out {out} is a file, not a directory")
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != root and not existing.is_dir():
        raise HorizonError(f"cannot write {root}: {existing} is a file, not a directory")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise HorizonError(f"cannot write {root}: {existing} is not writable (permission denied)")


def _run(corpus: Corpus, root: Path, config: WorkerConfig, loaded: LoadedModel | None, settings: SweepSettings,
         shard: ShardSpec, resume: bool, force: bool, backend: str, workers: int, ray_address: str | None,
         max_prompts: int | None, progress: Callable[[int, int], None] | None,
         on_plan: Callable[[int, int, int], None] | None, started: str, started_clock: float) -> SweepSummary:
    pool = _LocalPool(config, loaded) if backend == "local" else _RayPool(config, workers, ray_address)
    try:
        described = pool.describe()
        settings.validate_for_model(described["model"]["n_layers"], described["model"]["n_ctx"])
        new = _new_manifest(corpus, settings, described, max_prompts, started)
        manifest, _, notes = _prepare_directory(root, new, resume, force, corpus.texts)
        run_record = {"started": started, "ended": None, "shard": str(shard), "backend": backend,
                      "workers": pool.size, "host": described["host"], "device": described["device"],
                      "pid": os.getpid()}
        store.update_manifest(root, lambda m: m["runs"].append(run_record))

        todo = _todo(manifest, shard, settings.analyses)
        done_before = sum(1 for s in manifest["shards"] if not _missing_tables(manifest, s))
        shard_tokens = {int(s["id"]): int(s["n_tokens"]) for s in manifest["shards"]}
        shard_prompts = {int(s["id"]): s["prompts"][1] - s["prompts"][0] + 1 for s in manifest["shards"]}
        work_started = time.perf_counter()
        if on_plan is not None:
            on_plan(sum(shard_prompts[i] for i, _ in todo), sum(shard_tokens[i] for i, _ in todo), done_before)

        if todo and any("truncate" in analyses for _, analyses in todo):
            pool.set_mu(_ensure_mu(root, manifest, pool.compute_mu))
        elif "truncate" in manifest["analyses"] and store.mu_problem(root, manifest):
            _ensure_mu(root, manifest, pool.compute_mu)  # a damaged corpus mean is computed again
            notes.append(f"computed {root / store.MU_FILE} again (it was missing or damaged)")
        if settings.ablation == "mean" and todo and any("scan" in analyses for _, analyses in todo):
            pool.set_ablation_means(_ensure_ablation_means(root, manifest, pool.compute_ablation_means))

        plans = plan_shards(len(corpus), settings.shard_size)
        prompts_run = tokens_run = 0
        for shard_id, tables, seconds in pool.run(todo, plans):
            _record_shard(root, shard_id, tables, seconds, str(shard))
            prompts_run += shard_prompts[shard_id]
            tokens_run += shard_tokens[shard_id]
            if progress is not None:
                progress(shard_prompts[shard_id], shard_tokens[shard_id])
        work_seconds = time.perf_counter() - work_started
    finally:
        pool.close()

    ended = store.now_iso()

    def finish(m: dict[str, Any]) -> None:
        for run in m["runs"]:
            if run["started"] == started and run["pid"] == os.getpid():
                run["ended"] = ended
        if not _missing_work(m):
            m["finished"] = ended

    final = store.update_manifest(root, finish)
    try:
        write_views(root)
    except store.WriteError as exc:  # only a cache: report computes the views without it
        notes.append(f"{exc}; report computes the views from the tables instead")
    done = sum(1 for s in final["shards"] if not _missing_tables(final, s))
    return SweepSummary(
        out=str(root), shards_total=len(final["shards"]), shards_done_before=done_before, shards_run=len(todo),
        shards_done=done, prompts_run=prompts_run, tokens_run=tokens_run,
        seconds=time.perf_counter() - started_clock, work_seconds=work_seconds,
        complete=final["finished"] is not None,
        analyses=list(final["analyses"]),
        problems=notes,
    )


# ----------------------------------------------------------------------------- backends


ShardResult = tuple[int, dict[str, pa.Table], float]


class _LocalPool:
    """One in-process worker: shards run one after another."""

    size = 1

    def __init__(self, config: WorkerConfig, loaded: LoadedModel | None = None) -> None:
        self.worker = SweepWorker(config, loaded)

    def describe(self) -> dict[str, Any]:
        return self.worker.describe()

    def compute_mu(self) -> np.ndarray:
        return self.worker.compute_mu()

    def set_mu(self, mu: np.ndarray) -> None:
        self.worker.set_mu(mu)

    def compute_ablation_means(self) -> np.ndarray:
        return self.worker.compute_ablation_means()

    def set_ablation_means(self, means: np.ndarray) -> None:
        self.worker.set_ablation_means(means)

    def run(self, todo: list[tuple[int, list[str]]], plans: list[list[int]]):
        for shard_id, analyses in todo:
            started = time.perf_counter()
            tables = self.worker.run_shard(plans[shard_id], analyses)
            yield shard_id, tables, time.perf_counter() - started

    def close(self) -> None:
        pass


class _RayPool:
    """One Ray actor per device; each loads the model once and takes shards as they free up."""

    def __init__(self, config: WorkerConfig, workers: int, address: str | None) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            raise HorizonError("--backend ray needs Ray: pip install 'horizon-inspector[ray]'") from None
        self.ray = ray
        self.started_ray = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                # A local cluster: one CPU per worker is enough, and the dashboard is not needed.
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            self.started_ray = True
        uses_gpu = config.device.startswith("cuda") or (config.device == "auto" and _cluster_has_gpus(ray))
        remote_worker = ray.remote(num_cpus=1, num_gpus=1 if uses_gpu else 0)(SweepWorker)
        self.actors = [remote_worker.remote(config) for _ in range(workers)]
        self.size = workers

    def describe(self) -> dict[str, Any]:
        descriptions = self._get([actor.describe.remote() for actor in self.actors])
        return descriptions[0]

    def compute_mu(self) -> np.ndarray:
        return self._get(self.actors[0].compute_mu.remote())

    def set_mu(self, mu: np.ndarray) -> None:
        reference = self.ray.put(mu)
        self._get([actor.set_mu.remote(reference) for actor in self.actors])

    def compute_ablation_means(self) -> np.ndarray:
        return self._get(self.actors[0].compute_ablation_means.remote())

    def set_ablation_means(self, means: np.ndarray) -> None:
        reference = self.ray.put(means)
        self._get([actor.set_ablation_means.remote(reference) for actor in self.actors])

    def run(self, todo: list[tuple[int, list[str]]], plans: list[list[int]]):
        pending = list(todo)
        running: dict[Any, tuple[int, Any, float]] = {}
        idle = list(self.actors)
        while pending or running:
            while idle and pending:
                actor = idle.pop()
                shard_id, analyses = pending.pop(0)
                running[actor.run_shard.remote(plans[shard_id], analyses)] = (shard_id, actor, time.perf_counter())
            ready, _ = self.ray.wait(list(running), num_returns=1)
            shard_id, actor, started = running.pop(ready[0])
            idle.append(actor)
            yield shard_id, self._get(ready[0]), time.perf_counter() - started

    def _get(self, reference: Any) -> Any:
        try:
            return self.ray.get(reference)
        except self.ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, HorizonError):
                raise HorizonError(str(cause).splitlines()[-1]) from None
            raise
        except self.ray.exceptions.RayActorError as exc:
            # An actor that failed in its constructor (bad model spec, ...) reports here.
            lines = [line for line in str(exc).splitlines() if "HorizonError:" in line]
            if lines:
                raise HorizonError(lines[-1].split("HorizonError:", 1)[1].strip()) from None
            raise

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        if self.started_ray:
            self.ray.shutdown()


def _cluster_has_gpus(ray: Any) -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


# ----------------------------------------------------------------------------- corpus views (report)


def corpus_views(results: store.Results) -> dict[str, Any]:
    """The aggregate of every analysis over the intact shards, as the single-prompt commands show it.

    Reads only the Parquet tables (no model). Each analysis's own summary code does the
    statistics, so a sweep and a single-prompt run over the same prompts agree exactly.
    """
    manifest = results.manifest or {}
    has_bos = bool(manifest.get("bos", {}).get("enabled", True))
    views: dict[str, Any] = {}
    for analysis, build in (("norms", _norms_view), ("truncate", _truncation_view), ("scan", _horizon_view),
                            ("attention", _attention_view)):
        table = results.table(ANALYSIS_TABLES[analysis], columns=VIEW_COLUMNS.get(analysis))
        if table is None or table.num_rows == 0:
            continue
        try:
            views[analysis] = build(results, table, manifest, has_bos)
        except Exception as exc:  # damaged data of any shape: name it and show the other analyses
            reason = str(exc).splitlines()[0][:200] if str(exc) else ""
            results.problems.append(f"the {analysis} table cannot be summarised ({type(exc).__name__}: {reason})")
    return views


# Only the columns a view needs are read (the per-row token texts of norms are the bulk of it).
VIEW_COLUMNS = {
    "norms": ["prompt", "position", "layer", "site", "norm", "std"],
    "truncate": ["prompt", "position", "token", "category", "length", "layer", "cos", "cos_raw"],
}


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.to_numpy()


def _norms_view(results: store.Results, table: pa.Table, manifest: dict[str, Any], has_bos: bool) -> dict[str, Any]:
    from horizon.core.norms import NORM_SITES, aggregate_site, appendix1_check, fit_growth

    # Site names as small integer codes: comparing 1.5M strings would dominate the report's time.
    encoded = pa.chunked_array(table.column("site").combine_chunks().dictionary_encode())
    site_names = encoded.chunk(0).dictionary.to_pylist()
    site_code = encoded.chunk(0).indices.to_numpy()
    prompt, position, layer = _column(table, "prompt"), _column(table, "position"), _column(table, "layer")
    norm, std = _column(table, "norm").astype(np.float64), _column(table, "std").astype(np.float64)
    site = np.asarray(site_names, dtype=object)[site_code]  # only used for the BOS row below
    stats = {}
    n_positions = 0
    for name in NORM_SITES:
        selected = site_code == site_names.index(name)
        if has_bos:
            selected &= position >= 1  # BOS (position 0) is excluded from statistics (docs/SCIENCE.md s.2)
        # Rows are written prompt by prompt, layer-major with positions in order, so a stable sort by
        # layer alone lines every layer's positions up in the same (prompt, position) order.
        order = np.argsort(layer[selected], kind="stable")
        rows = int(layer[selected].max()) + 1
        pooled = np.stack((norm[selected][order], std[selected][order])).reshape(2, rows, -1)
        stats[name], _ = aggregate_site([pooled], include_bos=True, has_bos=False)
        n_positions = pooled.shape[2]
    growth = fit_growth(stats["resid_pre"].mean_norm)
    bos_mean = None
    if has_bos:
        at_bos = (site == "resid_pre") & (position == 0)
        bos_layers = layer[at_bos]
        bos_mean = (np.bincount(bos_layers, weights=norm[at_bos]) / np.bincount(bos_layers)).tolist()
    return {
        "n_prompts": len(np.unique(prompt)),
        "n_positions": int(n_positions),
        "sites": {name: value.to_json() for name, value in stats.items()},
        "growth": growth.to_json(),
        "bos": {"mean_norm": bos_mean},
        "appendix1": appendix1_check(stats["resid_pre"].mean_norm, stats["attn_out"].mean_norm,
                                     stats["mlp_out"].mean_norm),
    }


class _TokenTextDecoder:
    """Stands in for a tokenizer's ``decode`` from the stored token texts (no model needed)."""

    def __init__(self, texts: dict[int, str]) -> None:
        self.texts = texts

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.texts.get(int(token_id), "") for token_id in ids)


def _stored_tokens(results: store.Results) -> tuple[list[list[int]], dict[int, str]]:
    """Token ids per corpus prompt (index = prompt number) and the text of each token id."""
    tokens = results.table("tokens")
    if tokens is None:
        return [], {}
    prompt, position = _column(tokens, "prompt"), _column(tokens, "position")
    token_id, text = _column(tokens, "token_id"), tokens.column("token").to_pylist()
    order = np.lexsort((position, prompt))
    by_prompt: list[list[int]] = [[] for _ in range(int(prompt.max()) + 1)]
    for index in order:
        by_prompt[prompt[index]].append(int(token_id[index]))
    return by_prompt, {int(i): t for i, t in zip(token_id.tolist(), text, strict=True)}


def _truncation_view(results: store.Results, table: pa.Table, manifest: dict[str, Any],
                     has_bos: bool) -> dict[str, Any]:
    from horizon.core.truncation import TruncationReport, find_outliers, summarise

    layer = _column(table, "layer")
    n_rows = int(layer.max()) + 1
    prompt, position, length = _column(table, "prompt"), _column(table, "position"), _column(table, "length")
    if len(layer) % n_rows == 0 and np.array_equal(layer.reshape(-1, n_rows), np.broadcast_to(
            np.arange(n_rows), (len(layer) // n_rows, n_rows))):
        order = np.arange(len(layer))  # as written: each record's L+1 layers in a row
    else:
        order = np.lexsort((layer, position, length, prompt))
    records = order[layer[order] == 0]  # one record per (prompt, position, length), at its layer-0 row
    token_ids, texts = _stored_tokens(results)
    report = TruncationReport(
        model=manifest.get("model", {}).get("spec", "?"),
        token_ids=token_ids,
        lengths=sorted(int(c) for c in np.unique(length)),
        n_layers=n_rows - 1,
        record_prompt=prompt[records],
        record_pos=position[records],
        record_length=length[records],
        record_token=table.column("token").take(pa.array(records)).to_pylist(),
        record_category=table.column("category").take(pa.array(records)).to_pylist(),
        cos=_column(table, "cos")[order].reshape(-1, n_rows).astype(np.float64),
        cos_raw=_column(table, "cos_raw")[order].reshape(-1, n_rows).astype(np.float64),
    )
    summarise(report)
    if token_ids:
        report.outliers = find_outliers(report, _TokenTextDecoder(texts), 20)
    view = report.to_json()
    view.pop("per_token")  # every record is in the table itself
    view["n_records"] = len(records)
    return view


def _horizon_view(results: store.Results, table: pa.Table, manifest: dict[str, Any],
                  has_bos: bool) -> dict[str, Any]:
    from horizon.core.horizon import effective_horizon

    settings = manifest.get("analyses", {}).get("scan", {})
    tol = float(settings.get("tol", 0.1))
    prompt, weight = _column(table, "prompt"), _column(table, "n_tokens").astype(np.float64)
    k, big_k, start = _column(table, "k"), _column(table, "K"), _column(table, "start_layer")
    metrics = {name: _column(table, name) for name in ("loss_clean", "loss", "delta_loss", "kl", "top1")}
    rows = []
    # Every metric is a mean over next-token predictions, so the corpus value is the
    # prediction-weighted mean of the per-prompt values (what one scan over all prompts gives).
    for start_layer in sorted(np.unique(start).tolist()):
        for k_value in sorted(np.unique(k[start == start_layer]).tolist()):
            selected = (start == start_layer) & (k == k_value)
            w = weight[selected]
            row = {"k": int(k_value), "K": int(big_k[selected][0]), "start_layer": int(start_layer)}
            for name in ("loss", "delta_loss", "kl"):
                row[name] = float(np.sum(metrics[name][selected] * w) / w.sum())
            row["top1_agreement"] = float(np.sum(metrics["top1"][selected] * w) / w.sum())
            rows.append(row)
    first = np.unique(prompt, return_index=True)[1]
    n_tokens = float(weight[first].sum())
    return {
        "rows": rows,
        "effective_horizon": {str(layer): effective_horizon(rows, layer, tol) for layer in sorted(set(start.tolist()))},
        "loss_clean": float(np.sum(metrics["loss_clean"][first] * weight[first]) / n_tokens),
        "tol": tol,
        "n_tokens": int(n_tokens),
        "n_prompts": len(first),
        "unit": settings.get("unit", "layer"),
        "ablation": settings.get("ablation", "zero"),
    }


def _attention_view(results: store.Results, table: pa.Table, manifest: dict[str, Any],
                    has_bos: bool) -> dict[str, Any]:
    layer, head = _column(table, "layer"), _column(table, "head")
    weight = _column(table, "n_queries").astype(np.float64)
    n_layers, n_heads = int(layer.max()) + 1, int(head.max()) + 1
    cell = layer.astype(np.int64) * n_heads + head

    def mean(name: str) -> list[list[float | None]]:
        values = _column(table, name).astype(np.float64)
        # Query-weighted over prompts; a prompt whose head has no value (NaN, all mass on BOS) is left out.
        valid = ~np.isnan(values)
        total = np.bincount(cell[valid], weights=values[valid] * weight[valid], minlength=n_layers * n_heads)
        count = np.bincount(cell[valid], weights=weight[valid], minlength=n_layers * n_heads)
        with np.errstate(invalid="ignore", divide="ignore"):
            averaged = np.where(count > 0, total / count, np.nan)
        return averaged.reshape(n_layers, n_heads).tolist()

    return {
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_queries": int(np.unique(np.stack((_column(table, "prompt"), weight)), axis=1)[1].sum()),
        "mean_distance": mean("mean_distance"),
        "mean_distance_no_bos": mean("mean_distance_no_bos"),
        "mass": {bucket: mean(column) for bucket, column in ATTENTION_MASSES.items()},
        "mass_no_bos": {bucket: mean(column + "_no_bos") for bucket, column in ATTENTION_MASSES.items()},
    }


# ----------------------------------------------------------------------------- cached views

VIEWS_FILE = "views.json"


def views_fingerprint(results: store.Results) -> str:
    """Identifies the exact set of table files a view was computed from (name, size, mtime)."""
    digest = hashlib.sha256()
    for table in sorted(results.files):
        for file in results.files[table]:
            info = file.stat()
            digest.update(f"{table}/{file.name}:{info.st_size}:{info.st_mtime_ns};".encode())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in {VIEWS_FILE}")


def _views_sha256(views: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(views, sort_keys=True, default=_plain).encode()).hexdigest()


def write_views(root: str | Path) -> dict[str, Any]:
    """Compute the corpus views and store them beside the tables, so ``report`` needs no torch."""
    results = store.open_results(root)
    views = corpus_views(results)  # may leave out a file whose data turns out damaged: fingerprint after it
    plain = json.loads(json.dumps(views, default=_plain))
    payload = {"fingerprint": views_fingerprint(results), "sha256": _views_sha256(plain), "views": plain}
    text = json.dumps(payload)
    store._atomic_write(Path(root) / VIEWS_FILE, lambda temp: temp.write_text(text, encoding="utf-8"))
    return views


def load_views(results: store.Results) -> dict[str, Any]:
    """The stored views when they match the intact files exactly, else computed now (slower: imports torch).

    The cache is used only when its fingerprint names exactly the intact files and its content
    hashes to the sha256 it records; anything else (damaged, edited, of another shape) is
    named in ``results.problems`` and the views are computed from the tables.
    """
    path = results.path / VIEWS_FILE
    if path.exists():
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(payload, dict):
                raise ValueError("not an object")
            views = payload.get("views")
            if payload.get("fingerprint") == views_fingerprint(results):
                if (isinstance(views, dict) and set(views) <= set(ANALYSES)
                        and all(isinstance(view, dict) for view in views.values())
                        and payload.get("sha256") == _views_sha256(views)):
                    return views
                results.problems.append(f"{path} does not hold what it claims (its content does not match its "
                                        "checksum); the views are computed from the tables")
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # A damaged cache is only a cache: compute the views again.
            results.problems.append(f"{path} is damaged ({type(exc).__name__}); the views are computed from the "
                                    "tables")
    return corpus_views(results)
