"""Position chunks never give other numbers than the whole pass: a self-check per loaded model.

A long prompt can run a chunk of positions at a time, each chunk attending to the earlier ones
through a KV cache (core/capture/capture.py ``chunked_capture`` for norms, core/patching/horizon.py ``ChunkedClean``
and the staircase's cached block calls for the scan). That rests on the library stack passing the
cache through to every attention layer: transformers 5.24 renamed the attention layers' keyword
that TransformerLens 4.3 reads, and chunks then silently lost the earlier positions (norms up to
50% off, exit 0). So before a model's first chunked pass, ``require_exact_chunks`` runs a short
input whole and in three chunks, residuals, logits and one patched horizon's metrics, and compares
(``check``, cached on the model; ``horizon verify`` shows it as its ``chunking`` check). Where they
differ, nothing runs in chunks on that model: core/memory/budget.py's plan runs a prompt whole when
chunks were only for speed, and refuses one that fits only in chunks, in one line naming the
library versions; an engine asked for chunks anyway refuses the same way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel

# The self-check's input (23 tokens with the SmolLM2 tokenizer), run whole and in CHECK_CHUNKS chunks.
CHECK_PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."
CHECK_CHUNKS = 3
_KEY = "chunking"  # the model's cached verdict, in LoadedModel.extra
_CHECKING = "checking"  # while the self-check itself runs in chunks


@dataclass(frozen=True)
class ChunkVerdict:
    """A chunked pass against the whole pass: the worst relative error over residuals, logits and
    a patched horizon's metric sums, the bar it must stay under, and what was compared."""

    measured: float
    bar: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.measured <= self.bar  # a NaN fails


def stack() -> str:
    """The library versions a chunked pass depends on, for messages."""
    from horizon.core.sweep.sweep_settings import package_versions

    versions = package_versions()
    names = (("transformers", "transformers"), ("TransformerLens", "transformer-lens"), ("torch", "torch"))
    return ", ".join(f"{label} {versions.get(name) or 'unknown'}" for label, name in names)


def _relative(chunked: torch.Tensor, whole: torch.Tensor) -> float:
    """max |chunked - whole| / max |whole| (NaN when the shapes or values make no comparison)."""
    if chunked.shape != whole.shape:
        return float("nan")
    scale = float(whole.double().abs().max().clamp_min(1e-30))
    return float((chunked.double() - whole.double()).abs().max()) / scale


def _ids(model: LoadedModel) -> torch.Tensor:
    from horizon.core.checks.verify import _prompt_ids

    return _prompt_ids(model, CHECK_PROMPT)


def check(model: LoadedModel) -> ChunkVerdict:
    """Run the short input whole and in CHECK_CHUNKS chunks; cache and return the verdict."""
    from horizon.core.capture.capture import position_chunks
    from horizon.core.checks.verify import LOGITS_BAR

    ids = _ids(model)
    chunk = -(-ids.shape[1] // CHECK_CHUNKS)
    previous = model.extra.get(_KEY)
    model.extra[_KEY] = _CHECKING  # the engines' guards let the check's own chunks through
    # A library's warning here (transformers 5.24's "past_key_values is deprecated") is what the
    # check measures the effect of: it goes into the verdict, not onto the user's stderr.
    failure = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            errors = _errors(model, ids, chunk)
    except KeyboardInterrupt:
        model.extra[_KEY] = previous
        raise
    except Exception as exc:  # a stack whose chunked pass does not even run: no chunks, not a traceback
        errors, failure = {"chunked pass": float("nan")}, str(exc).splitlines()[0][:120] if str(exc) else repr(exc)
    worst = max(errors, key=lambda name: errors[name] if errors[name] == errors[name] else float("inf"))
    n_chunks = len(position_chunks(ids.shape[1], chunk))
    detail = f"{ids.shape[1]} tokens in {n_chunks} chunks vs whole ({', '.join(errors)}); worst: {worst}"
    if failure is not None:
        detail += f"; it failed: {failure}"
    elif caught:
        detail += f"; library warning: {str(caught[0].message).splitlines()[0][:120]}"
    verdict = ChunkVerdict(errors[worst], LOGITS_BAR.get(model.dtype, 1e-4), detail)
    model.extra[_KEY] = verdict
    return verdict


def _errors(model: LoadedModel, ids: torch.Tensor, chunk: int) -> dict[str, float]:
    """Relative error of the chunked pass per compared quantity."""
    from horizon.core.capture.capture import chunked_capture, run_capture

    sites = ("resid_pre", "final")
    whole = run_capture(model, ids, sites, keep_logits=True)
    chunked = chunked_capture(model, ids, sites, chunk, keep_logits=True)
    errors = {site: _relative(chunked[site], whole[site]) for site in sites}
    assert whole.logits is not None and chunked.logits is not None
    errors["logits"] = _relative(chunked.logits, whole.logits)
    horizon = _horizon_error(model, ids, chunk)
    if horizon is not None:
        errors["scan"] = horizon
    return errors


def _horizon_error(model: LoadedModel, ids: torch.Tensor, chunk: int) -> float | None:
    """A patched horizon's metric sums (K = 1: every block replayed with the rows' KV cache) in chunks
    against the whole prompt's; None where the horizon does not apply (parallel blocks)."""
    from horizon.core.model.prompts import batches
    from horizon.core.patching.horizon import ChunkedClean, HorizonConfig, check_model, clean_run, metric_sums

    try:
        check_model(model)
    except HorizonError:
        return None
    (batch,) = batches(model, ids.tolist(), has_bos=True)
    configs = [HorizonConfig(1)]
    whole = metric_sums(model, clean_run(model, batch), configs)
    chunked = metric_sums(model, ChunkedClean(model, batch, chunk), configs)
    return _relative(chunked[..., :3], whole[..., :3])  # losses and KL (top-1 counts may tie)


def verdict(model: LoadedModel) -> ChunkVerdict | None:
    """The model's verdict, checking now at its first use (None while the check itself runs)."""
    found = model.extra.get(_KEY)
    if found == _CHECKING:
        return None
    if isinstance(found, ChunkVerdict):
        return found
    return check(model)


def refusal(model: LoadedModel) -> str | None:
    """Why position chunks may not be used on ``model`` (None: they reproduce the whole pass)."""
    found = verdict(model)
    if found is None or found.passed:
        return None
    off = f"off by {found.measured:.2g}" if found.measured == found.measured else "a chunked pass fails"
    return f"position chunks are inexact with {stack()} ({off}; requirements.lock pins a stack where they are)"


def require_exact_chunks(model: LoadedModel) -> None:
    """Refuse, in one line, to run ``model`` in position chunks where they would give other numbers."""
    why = refusal(model)
    if why is not None:
        raise HorizonError(f"{model.spec}: {why}")
