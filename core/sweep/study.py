"""Studies across models (``horizon study``): one sweep per model, the same corpus and settings.

A study directory holds one results directory per model, ``DIR/<folder>/`` (``folder_names``: a
safe folder name derived from the spec), each written by the sweep driver (core/sweep/sweep.py), and
the comparison of the finished ones (written by the CLI: core/sources/compare.py's table and the
figures). Models run one after the other; each sweep is resumable on its own, so a study is too:

- a model whose directory holds a complete sweep of this corpus and these settings is skipped
  without loading it. "Complete" is read from the store (``store.open_results``: the manifest,
  every recorded file's row count and sha256, the corpus mean), never from a marker of the study's
  own; what the manifest cannot show without the model (its weights' hash) is left to the sweep,
  which checks it whenever it runs;
- any other model is loaded and handed to ``run_sweep``, which resumes a partial directory
  (finished shards kept, the rest redone) or starts a new one;
- a model that fails to load or verify, or whose sweep is refused, is reported and skipped; the
  others go on.

The study file (``read_study_file``) is TOML or JSON: ``models`` (a list of specs) and optional
shared settings under the names of the command's options (``README.md``, "Studies across models").
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError
from horizon.core.results import store
from horizon.core.untrusted import visible

if TYPE_CHECKING:
    from horizon.core.model.corpus import Corpus
    from horizon.core.sweep.plan import SweepPlan
    from horizon.core.sweep.sweep import SweepSettings, SweepSummary

COMPARISON_FILE = "comparison.json"  # compare --json of the finished models, written into the study directory
FOLDER_CHARS = 80  # longer folder names are cut and made unique with a hash of the spec
STUDY_FILE_LIMIT = 1 << 20  # a study file is a short list of models and settings

# Every key a study file may hold, with its type (a value's check below). Paths are relative to
# the file's folder.
STUDY_KEYS: dict[str, str] = {
    "models": "list of strings", "corpus": "string", "out": "string", "max_prompts": "integer",
    "max_tokens": "integer", "analyses": "list of strings", "lengths": "list of integers",
    "ks": "list of integers", "start_layers": "list of integers", "tol": "number", "ablation": "string",
    "by_layer": "boolean", "shard_size": "integer", "bos": "boolean", "bos_token": "string", "device": "string",
    "dtype": "string", "batch_size": "integer or \"auto\"", "max_memory": "string", "backend": "string",
    "workers": "integer", "ray_address": "string", "device_map": "string", "n_devices": "integer", "x": "string",
    "format": "string",
}


# ----------------------------------------------------------------------------- folder names


def folder_name(spec: str) -> str:
    """A safe folder name for a model spec: ``/`` becomes ``--`` (``org/name`` -> ``org--name``),
    anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``, no leading dot."""
    name = re.sub(r"[\\/]+", "--", spec.strip())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "model"
    if len(name) > FOLDER_CHARS:
        name = f"{name[:FOLDER_CHARS]}-{_digest(spec)}"
    return name


def _digest(spec: str) -> str:
    return hashlib.sha256(spec.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def folder_names(specs: list[str], reserved: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One folder per spec, none shared: specs whose names meet (``a/b`` and ``a--b``; ``A`` and
    ``a`` on a case-insensitive disk) or that meet a file the study writes (``reserved``) each get
    ``-<8 hex of the spec's sha256>`` appended."""
    names = [folder_name(spec) for spec in specs]
    taken = {name.casefold() for name in reserved}
    counts: dict[str, int] = {}
    for name in names:
        counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    out = [f"{name}-{_digest(spec)}" if counts[name.casefold()] > 1 or name.casefold() in taken else name
           for spec, name in zip(specs, names, strict=True)]
    if len({name.casefold() for name in out}) != len(out):  # a hash collision of 32 bits within one study
        raise HorizonError("two model specs map to one folder name even with their hashes; rename one")
    return out


def check_specs(specs: list[str]) -> list[str]:
    """The model specs, stripped; refused when empty or when one is given twice."""
    cleaned = [spec.strip() for spec in specs]
    if not cleaned:
        raise HorizonError("give at least one model (MODEL arguments, or models = [...] in --study)")
    for spec in cleaned:
        if not spec:
            raise HorizonError("an empty model spec")
        if cleaned.count(spec) > 1:
            raise HorizonError(f"model {visible(spec)!r} is given twice")
    return cleaned


# ----------------------------------------------------------------------------- the study file


def read_study_file(path: str | Path) -> dict[str, Any]:
    """A study file's keys, checked (TOML, or JSON when it ends in .json or starts with ``{``).

    Unknown keys and values of the wrong type are refused in one line; ``corpus`` and ``out`` are
    resolved against the file's folder.
    """
    file = Path(path).expanduser()
    try:
        if not file.is_file():
            raise HorizonError(f"--study {visible(path)}: not found" if not file.exists()
                               else f"--study {visible(path)}: not a regular file")
        if file.stat().st_size > STUDY_FILE_LIMIT:
            raise HorizonError(f"--study {visible(path)}: over {STUDY_FILE_LIMIT >> 20} MiB, not a study file")
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise HorizonError(f"--study {visible(path)}: not UTF-8 text") from None
    except OSError as exc:
        raise HorizonError(f"--study {visible(path)}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        if file.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HorizonError(f"--study {visible(path)}: not valid TOML or JSON ({visible(first)[:120]})") from None
    if not isinstance(data, dict):
        raise HorizonError(f"--study {visible(path)}: must hold a table of keys (models = [...], ...)")
    for key, value in data.items():
        if key not in STUDY_KEYS:
            raise HorizonError(f"--study {visible(path)}: unknown key {visible(key)!r} (known: "
                               f"{', '.join(STUDY_KEYS)})")
        if not _fits(value, STUDY_KEYS[key]):
            raise HorizonError(f"--study {visible(path)}: {key} must be a {STUDY_KEYS[key]} "
                               f"(got {visible(json.dumps(value, default=str))[:60]})")
    for key in ("corpus", "out"):
        if key in data and data[key] != "-":
            data[key] = str((file.parent / Path(data[key]).expanduser()).resolve()) \
                if not Path(data[key]).expanduser().is_absolute() else str(Path(data[key]).expanduser())
    return data


def _fits(value: Any, kind: str) -> bool:
    def integer(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return integer(value)
    if kind == "number":
        return (integer(value) or isinstance(value, float))
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "list of strings":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind == "list of integers":
        return isinstance(value, list) and all(integer(item) for item in value)
    if kind.startswith("integer or"):
        return integer(value) or value == "auto"
    raise ValueError(kind)


# ----------------------------------------------------------------------------- a model's directory


@dataclass
class SweepState:
    """What a model's directory holds, read from the store without loading the model.

    ``state``: ``complete`` (this sweep, every shard done and intact: skipped), ``run`` (absent,
    partial, damaged, or not judged without the model: the sweep decides) or ``conflict`` (a sweep
    of another corpus or other settings: refused unless ``--force``)."""

    state: str
    reason: str | None = None
    shards_total: int = 0
    shards_done: int = 0


def sweep_state(directory: Path, spec: str, corpus: Corpus, settings: SweepSettings, dtype: str) -> SweepState:
    """Whether ``directory`` already holds this model's complete sweep of ``corpus`` with ``settings``."""
    from horizon.core.results.rebuild import missing_tables

    if not (directory / store.MANIFEST).is_file():
        return SweepState("run", "not swept yet" if not directory.exists() else "no manifest")
    try:
        results = store.open_results(directory)
    except HorizonError as exc:
        return SweepState("run", str(exc))
    manifest = results.manifest
    if manifest is None:
        return SweepState("run", results.problems[0] if results.problems else "its manifest cannot be read")
    try:
        differ = _differences(manifest, corpus, settings, dtype)
        shards = manifest["shards"]
        done = sum(1 for shard in shards if not missing_tables(manifest, shard))
        same_model = manifest["model"]["spec"] == spec
    except (KeyError, TypeError, ValueError, AttributeError):
        return SweepState("run", "its manifest is not this version's: the sweep checks it")
    if differ:
        return SweepState("conflict", "; ".join(differ), len(shards), done)
    if not same_model:
        return SweepState("run", f"it holds a sweep of {visible(manifest['model']['spec'])!r}", len(shards), done)
    if results.problems:
        return SweepState("run", results.problems[0], len(shards), done)
    missing = [name for name in settings.analyses if name not in manifest["analyses"]]
    if missing or done < len(shards) or manifest.get("finished") is None:
        what = f"no {', '.join(missing)} yet" if missing else f"{done} of {len(shards)} shards done"
        return SweepState("run", what, len(shards), done)
    return SweepState("complete", None, len(shards), done)


def _differences(manifest: dict[str, Any], corpus: Corpus, settings: SweepSettings, dtype: str) -> list[str]:
    """What the stored sweep and this study's disagree on, of what the manifest alone can show."""
    stored = {"corpus": manifest["corpus"]["sha256"], "max_tokens": manifest["corpus"]["max_tokens"],
              "shard_size": manifest["shard_size"], "dtype": manifest["dtype"],
              "bos": bool(manifest["bos"]["enabled"])}
    wanted = {"corpus": corpus.sha256, "max_tokens": settings.max_tokens, "shard_size": settings.shard_size,
              "dtype": dtype, "bos": settings.bos}
    differ = [f"{key} is {_shown(stored[key])} there but {_shown(wanted[key])} now"
              for key in stored if stored[key] != wanted[key]]
    if settings.bos and settings.bos_token is not None and manifest["bos"].get("token") != settings.bos_token:
        differ.append(f"the BOS token is {_shown(manifest['bos'].get('token'))} there but "
                      f"{_shown(settings.bos_token)} now")
    n_layers = int(manifest["model"]["n_layers"])
    for name, wanted_settings in settings.analysis_settings(n_layers).items():
        previous = manifest["analyses"].get(name)
        if previous is None:
            continue
        for key in sorted(set(wanted_settings) | set(previous)):
            if not key.startswith("_") and previous.get(key) != wanted_settings.get(key):
                differ.append(f"{name}.{key} is {_shown(previous.get(key))} there but "
                              f"{_shown(wanted_settings.get(key))} now")
    return differ


def _shown(value: Any) -> str:
    text = value[:12] + "..." if isinstance(value, str) and len(value) == 64 else json.dumps(value)
    return visible(text)


# ----------------------------------------------------------------------------- running


@dataclass
class ModelOutcome:
    """One model of a study: where its sweep is, and what this run did with it.

    ``status``: ``done before`` (complete already: not loaded), ``swept`` (complete now),
    ``incomplete`` (shards lost on every run: Ray), ``failed`` (not loaded, not verified, or its
    sweep refused: skipped; ``reason`` says why)."""

    spec: str
    folder: str
    directory: Path
    status: str = "pending"
    reason: str | None = None
    shards_total: int = 0
    shards_done: int = 0
    shards_run: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    failed_shards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in ("done before", "swept")

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "folder": self.folder, "dir": str(self.directory), "status": self.status,
                "reason": self.reason, "shards_total": self.shards_total, "shards_done": self.shards_done,
                "shards_run": self.shards_run, "seconds": round(self.seconds, 3), "notes": self.notes,
                "failed_shards": self.failed_shards}


@dataclass
class StudyCallbacks:
    """What the display hears: a model starts (index, spec, what happens) and ends; and the sweep's own."""

    model_started: Callable[[int, str, str], None] = lambda index, spec, what: None
    model_finished: Callable[[int, ModelOutcome], None] = lambda index, outcome: None
    on_plan: Callable[[int, int, int], None] | None = None
    progress: Callable[[int, int], None] | None = None
    on_eta: Callable[[float | None], None] | None = None


def model_directories(specs: list[str], out: str | Path, reserved: set[str]) -> list[ModelOutcome]:
    """Each model's folder in the study directory ``out`` (nothing is created)."""
    root = Path(out).expanduser()
    return [ModelOutcome(spec=spec, folder=folder, directory=root / folder)
            for spec, folder in zip(specs, folder_names(specs, reserved), strict=True)]


def run_study(outcomes: list[ModelOutcome], corpus: Corpus, settings: SweepSettings, device: str = "auto",
              dtype: str = "float32", force: bool = False, backend: str = "local", workers: int = 1,
              ray_address: str | None = None, load_kwargs: dict[str, Any] | None = None,
              max_prompts: int | None = None, batch_size: int | None = None, max_memory: int | None = None,
              callbacks: StudyCallbacks | None = None) -> list[ModelOutcome]:
    """Sweep each model in turn into its folder (skipping complete ones); fills in each outcome.

    Only a failure of one model (``HorizonError``: it does not load, does not verify, its
    directory is refused, its settings do not fit it) is caught, reported in its outcome, and
    the next model goes on; Ctrl-C and anything unexpected stop the study (each sweep stays
    resumable).
    """
    from horizon.core.sweep.sweep import run_sweep

    callbacks = callbacks or StudyCallbacks()
    for index, outcome in enumerate(outcomes):
        started = time.perf_counter()
        state = sweep_state(outcome.directory, outcome.spec, corpus, settings, dtype)
        outcome.shards_total, outcome.shards_done = state.shards_total, state.shards_done
        if state.state == "complete" and not force:
            outcome.status = "done before"
            callbacks.model_started(index, outcome.spec, "complete already")
            callbacks.model_finished(index, outcome)
            continue
        if state.state == "conflict" and not force:
            outcome.status, outcome.reason = "failed", (
                f"{outcome.directory} holds a sweep with other settings ({state.reason}); use another --out, or "
                "--force to discard it")
            callbacks.model_started(index, outcome.spec, "refused")
            callbacks.model_finished(index, outcome)
            continue
        callbacks.model_started(index, outcome.spec, "loading")
        model: Any = outcome.spec
        try:
            if backend == "local":  # loaded here, so that a model that cannot load is told apart
                model = _load(outcome.spec, device, dtype, load_kwargs or {})
            summary = run_sweep(corpus, outcome.directory, model, settings, device=device, dtype=dtype,
                                force=force, backend=backend, workers=workers, ray_address=ray_address,
                                load_kwargs=load_kwargs, max_prompts=max_prompts, progress=callbacks.progress,
                                on_plan=callbacks.on_plan, batch_size=batch_size, max_memory=max_memory,
                                on_eta=callbacks.on_eta)
        except HorizonError as exc:
            outcome.status, outcome.reason = "failed", str(exc)
        else:
            _record(outcome, summary)
        finally:
            model = None
            _free_memory()
        outcome.seconds = time.perf_counter() - started
        callbacks.model_finished(index, outcome)
    return outcomes


def _load(spec: str, device: str, dtype: str, load_kwargs: dict[str, Any]) -> Any:
    from horizon.core.model.loader import load_model

    try:
        return load_model(spec, device=device, dtype=dtype, **load_kwargs)
    except HorizonError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, ImportError) as exc:
        # A model the libraries fail on in their own way: one line for this model, the study goes on.
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise HorizonError(f"{spec}: cannot be loaded ({type(exc).__name__}: {first[:160]})") from None


def _record(outcome: ModelOutcome, summary: SweepSummary) -> None:
    outcome.shards_total, outcome.shards_done, outcome.shards_run = (summary.shards_total, summary.shards_done,
                                                                     summary.shards_run)
    outcome.notes, outcome.failed_shards = list(summary.notes), list(summary.failed_shards)
    if summary.complete:
        outcome.status = "swept"
    else:
        outcome.status = "incomplete"
        outcome.reason = (f"{len(summary.failed_shards)} shard(s) not written: {summary.failed_shards[0]['reason']}"
                          if summary.failed_shards else f"{summary.shards_done} of {summary.shards_total} shards done")


def _free_memory() -> None:
    """Let the model just swept go before the next one loads (its weights, the device's cache)."""
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- --plan


@dataclass
class ModelPlan:
    """One model's projection (``plan``), or why there is none (``error``)."""

    spec: str
    folder: str
    plan: SweepPlan | None = None
    error: str | None = None
    n_layers: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "folder": self.folder, "n_layers": self.n_layers,
                "plan": None if self.plan is None else self.plan.to_json(), "error": self.error}


def plan_study(outcomes: list[ModelOutcome], corpus: Corpus, settings: SweepSettings, device: str = "auto",
               dtype: str = "float32", load_kwargs: dict[str, Any] | None = None, batch_size: int | None = None,
               max_memory: int | None = None, workers: int = 1,
               model_started: Callable[[int, str], None] | None = None) -> list[ModelPlan]:
    """Each model's sweep plan (core/sweep/plan.py), loading the models in turn; writes nothing."""
    from horizon.core.sweep.plan import plan_sweep

    plans = []
    for index, outcome in enumerate(outcomes):
        if model_started is not None:
            model_started(index, outcome.spec)
        entry = ModelPlan(outcome.spec, outcome.folder)
        model = None
        try:
            model = _load(outcome.spec, device, dtype, load_kwargs or {})
            entry.n_layers = model.n_layers
            settings.validate_for_model(model.n_layers, model.n_ctx)
            entry.plan = plan_sweep(corpus, model, settings, batch_size=batch_size, max_memory=max_memory,
                                    workers=workers)
        except HorizonError as exc:
            entry.error = str(exc)
        finally:
            model = None
            _free_memory()
        plans.append(entry)
    return plans


def plan_totals(plans: list[ModelPlan]) -> dict[str, Any]:
    """The study's projection: the models' times and disk summed (they run one after another), the
    largest peak memory (one model is loaded at a time)."""
    planned = [entry.plan for entry in plans if entry.plan is not None]
    return {"seconds": round(sum(plan.total_seconds for plan in planned), 2),
            "disk_bytes": sum(plan.total_disk_bytes for plan in planned),
            "peak_bytes": max((max((part.peak_bytes for part in plan.analyses.values()), default=0)
                               for plan in planned), default=0),
            "models_planned": len(planned), "models_failed": len(plans) - len(planned)}
