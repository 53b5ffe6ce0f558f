"""What a model's folder of a study already holds, read from the store without loading the model.

``sweep_state`` says whether the folder holds this model's complete sweep of the corpus with these
settings (the study skips it), a sweep the driver should run or resume, or another sweep's results
(refused unless ``--force``), judged only by what the manifest and the recorded files can show. Part
of studies across models, whose public face is core/sweep/study.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError
from horizon.core.results import store
from horizon.core.untrusted import visible

if TYPE_CHECKING:
    from horizon.core.model.corpus import Corpus
    from horizon.core.sweep.sweep_settings import SweepSettings


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
