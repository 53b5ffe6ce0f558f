"""Verification of an architecture: the checks that make every other number trustworthy.

A tool that silently computes the wrong decomposition on a new architecture is worse than one
that refuses it, so every model is checked against the decomposition (docs/SCIENCE.md section 1)
before an analysis runs on it. Two levels:

- ``quick_checks`` (run by ``load_model`` on every load, about two short forward passes): every
  reader and writer hook site the engine needs exists, the final norm was found, attention
  patterns are hooked, s_0 + sum of sublayer outputs equals the final residual, every reader's
  hook sees the partial sum r_j the decomposition says it reads, and the engine's readout of the
  final residual (final norm, head, and what the model's forward does after its head:
  core/patching/horizon_metrics.py ``post_head``) gives the model's own logits, so a model whose head does
  something the engine does not reproduce is refused rather than given wrong losses.
- ``verify`` (``horizon verify``): the quick checks plus the bridge's logits against an
  independently built plain HF model, the full horizon through the whole patched path (every
  block replayed by the staircase, a window formed from the prefix sums, both readouts) against
  the clean logits, position chunks against the whole pass (core/checks/chunking.py), and the attention
  patterns themselves (rows sum to 1, causal, sliding windows respected), with the attention
  implementation that produced them.

Each check can fail: tests/test_verify.py and tests/test_chunk_check.py inject the fault each one
exists to catch (a missed sublayer, a wrong reference, a dropped post-head step, a broken patched
path, a KV cache that drops earlier positions, a wrong window) and see it fail with the error.

This module holds the claimed and refused families, ``verify`` (every check, in order), the
``Verification`` report, the stored verdicts and ``require_verified``; the checks themselves are in
core/checks/verify_checks.py (the quick ones) and core/checks/verify_full.py (the ones ``horizon verify`` adds).

A model failing a quick check is refused at load with one line naming the check. Verdicts are
stored under the weight cache, keyed by the model's hash, dtype, library versions and the source
of this module, core/capture/decomposition.py, core/patching/horizon_metrics.py and core/checks/chunking.py: the quick
one only for models whose hash names their content (GGUF sha256, a directory's sha256 of config
and weights, hub commit), so those are checked once per content, and a changed directory is never
judged by its old verdict; the full one by
``horizon verify``, and a stored failure is refused the same way. ``--unverified`` (or
HORIZON_UNVERIFIED=1) skips both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from horizon.core.checks.verify_checks import (
    LOGITS_BAR,
    POST_NORM,
    QUICK_PROMPT,
    VERIFY_PROMPT,
    Check,
    _presence_check,
    _prompt_ids,
    _reader_sites,
    _record,
    _rel,
    _writer_sites,
    attn_implementation,
    decomposition_bar,
    decomposition_checks,
    quick_checks,
    readout_check,
    structural_checks,
)
from horizon.core.checks.verify_full import (
    _attention_sinks,
    attention_check,
    chunking_check,
    full_horizon_check,
    independent_hf_model,
    logits_check,
)
from horizon.core.errors import HorizonError
from horizon.core.model.gguf_files import cache_root
from horizon.core.model.loader import LoadedModel

ENV_OVERRIDE = "HORIZON_UNVERIFIED"

# The architecture families the tool claims: every check passes on a tiny random-weight model of
# each (tests/test_verify.py), and the README's model table is generated from those results.
# family (HF model_type) -> HF causal-LM class, what matters about it here.
CLAIMED_FAMILIES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "pre-norm RMSNorm, GQA, rotary (SmolLM2, Llama 2/3)"),
    "mistral": ("MistralForCausalLM", "as Llama, sliding-window attention on every layer"),
    "qwen2": ("Qwen2ForCausalLM", "as Llama, with q/k/v biases"),
    "qwen3": ("Qwen3ForCausalLM", "as Llama, with q/k norms"),
    "gemma": ("GemmaForCausalLM", "scaled embedding, RMSNorm scaled by 1 + weight, GeGLU, attention biases here"),
    "gemma2": ("Gemma2ForCausalLM", "sandwich norms (post-attention / post-feedforward), scaled embedding"),
    "gemma3_text": (
        "Gemma3ForCausalLM",
        "sandwich norms, scaled embedding, q/k norms, sliding-window and global layers (Gemma 3 270M)",
    ),
    "glm": ("GlmForCausalLM", "partial rotary, fused gate/up projection, q/k/v biases"),
    "glm4": ("Glm4ForCausalLM", "sandwich norms (post-attention, post-MLP), partial rotary"),
    "nemotron": ("NemotronForCausalLM", "LayerNorm scaled by 1 + weight, partial rotary, squared-ReLU MLP"),
    "olmo": ("OlmoForCausalLM", "LayerNorm without weights, q/k/v clipping"),
    "smollm3": ("SmolLM3ForCausalLM", "as Llama, some layers without rotary (NoPE)"),
    "stablelm": ("StableLmForCausalLM", "LayerNorm, partial rotary, q/k norms, q/k/v biases (sequential blocks)"),
    "starcoder2": ("Starcoder2ForCausalLM", "LayerNorm (epsilon named norm_epsilon), biases, sliding window"),
    "phi3": ("Phi3ForCausalLM", "fused qkv and gate/up projections"),
    "gpt2": ("GPT2LMHeadModel", "LayerNorm, learned positions (s_0 includes them), fused qkv"),
    "gpt_bigcode": ("GPTBigCodeForCausalLM", "multi-query attention, learned positions"),
    "gpt_neo": ("GPTNeoForCausalLM", "alternating local (windowed) and global attention"),
    "opt": ("OPTForCausalLM", "learned positions with an offset, ReLU MLP"),
    "bloom": ("BloomForCausalLM", "ALiBi, a LayerNorm on the embedding (s_0 is its output), fused qkv"),
    "falcon": ("FalconForCausalLM", "sequential blocks (parallel_attn false), rotary or ALiBi, biases"),
    "mixtral": ("MixtralForCausalLM", "sparse MoE MLP (top 2 of 4 experts here)"),
    "phimoe": ("PhimoeForCausalLM", "sparse MoE, LayerNorm (TransformerLens spells it PhiMoEForCausalLM)"),
    "qwen2_moe": ("Qwen2MoeForCausalLM", "sparse MoE with a gated shared expert"),
    "qwen3_moe": ("Qwen3MoeForCausalLM", "sparse MoE, q/k norms"),
    "olmoe": ("OlmoeForCausalLM", "sparse MoE, q/k norms, q/k/v clipping"),
    "deepseek_v3": (
        "DeepseekV3ForCausalLM",
        "multi-head latent attention, grouped MoE routing with a shared expert, a dense first layer",
    ),
    "jetmoe": ("JetMoeForCausalLM", "mixture of attention heads and an MoE MLP"),
    "llama4_text": ("Llama4ForCausalLM", "MoE on alternate layers with a shared expert, NoPE layers"),
    "gpt_oss": ("GptOssForCausalLM", "attention sinks (pattern rows sum to < 1 by design), sliding window, MoE"),
    "gpt_neox": ("GPTNeoXForCausalLM", "parallel attention + MLP: both read resid_pre (horizon refused)"),
    "gptj": ("GPTJForCausalLM", "parallel attention + MLP with one shared norm (horizon refused)"),
    "phi": ("PhiForCausalLM", "parallel attention + MLP with one shared norm (horizon refused)"),
    "cohere": ("CohereForCausalLM", "parallel attention + MLP with one shared norm, logit scale (horizon refused)"),
}
# Bridged by TransformerLens but refused here, with the reason (also checked by the tests).
# Bridged by TransformerLens but refused here, with the reason (also checked by the tests).
REFUSED_FAMILIES: dict[str, tuple[str, str]] = {
    "olmo2": ("Olmo2ForCausalLM", f"{POST_NORM} (sites check)"),
    "olmo3": ("Olmo3ForCausalLM", f"{POST_NORM} (sites check)"),
    "exaone4": ("Exaone4ForCausalLM", f"{POST_NORM} (sites check)"),
}


@dataclass
class Verification:
    spec: str
    architecture: str
    model_hash: str
    dtype: str
    attn_implementation: str
    checks: list[Check] = field(default_factory=list)

    @classmethod
    def of(cls, model: LoadedModel) -> Verification:
        """No checks yet: the model's spec, architecture, hash, dtype and attention implementation."""
        return cls(
            model.spec,
            model.architecture,
            model.model_hash,
            str(model.dtype).removeprefix("torch."),
            attn_implementation(model),
        )

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.passed is False]

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def overridden(unverified: bool | None = None) -> bool:
    """Whether verification is switched off (an explicit flag, else HORIZON_UNVERIFIED)."""
    if unverified is not None:
        return unverified
    return os.environ.get(ENV_OVERRIDE, "").lower() in {"1", "true", "yes"}


def verify(model: LoadedModel, reference: Any = None, prompt: str = VERIFY_PROMPT) -> Verification:
    """Every check on ``model`` and a fixed prompt; ``reference`` is the plain HF model to compare with."""
    result = Verification.of(model)
    result.checks = structural_checks(model)
    ids = _prompt_ids(model, prompt)
    if not result.checks[0].passed:
        return result
    result.checks += decomposition_checks(model, ids)
    how = "given"
    if reference is None:
        reference, how = independent_hf_model(model)
    check = logits_check(model, ids, reference)
    check.detail += f"; reference: {how}"
    result.checks.append(check)
    result.checks.append(readout_check(model, ids))
    result.checks.append(full_horizon_check(model, ids))
    result.checks.append(chunking_check(model))
    result.checks.append(attention_check(model, ids))
    return result


# ----------------------------------------------------------------------------- the stored verdict


def _verdict_path(model: LoadedModel, level: str = "full") -> Path:
    """Where a verdict is stored: keyed by the model's hash, dtype, library versions and this code."""
    import transformer_lens
    import transformers

    core = Path(__file__).parents[1]
    # The code a verdict vouches for: the decomposition, the checks, the readout and the chunk check.
    sources = ("capture/decomposition.py", "checks/verify.py", "checks/verify_checks.py", "checks/verify_full.py",
               "patching/horizon_metrics.py", "checks/chunking.py")
    code = hashlib.sha256(b"".join((core / name).read_bytes() for name in sources))
    key = "|".join(
        [
            model.model_hash,
            str(model.dtype),
            transformers.__version__,
            getattr(transformer_lens, "__version__", "?"),
            code.hexdigest(),
        ]
    )
    return cache_root() / "verified" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.{level}.json"


def _content_keyed(model: LoadedModel) -> bool:
    """Whether the model hash names the weights' content (a GGUF's or a directory's sha256, a hub commit)."""
    from horizon.core.model.loader import TINY_MODELS

    return not (model.model_hash.endswith(":unknown") or model.spec in TINY_MODELS)


def store_verdict(model: LoadedModel, result: Verification, level: str = "full") -> Path:
    """Write a verification's verdict atomically next to the weight cache."""
    path = _verdict_path(model, level)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    staging.write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
    os.replace(staging, path)
    return path


def stored_verdict(model: LoadedModel, level: str = "full") -> dict[str, Any] | None:
    try:
        return cast("dict[str, Any] | None", json.loads(_verdict_path(model, level).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


REFUSAL_WIDTH = 200


def _named(model: LoadedModel) -> str:
    """'spec (architecture)', both cut short: a refusal is one line of about 200 characters at most."""
    from horizon.core.model.model_files import short_text

    return f"{short_text(model.spec, 40)} ({short_text(model.architecture, 20)})"


def _refusal(model: LoadedModel, check: dict[str, Any], where: str) -> HorizonError:
    detail = str(check.get("detail", ""))
    if check.get("name") == "sites" and detail == POST_NORM:
        return HorizonError(f"{_named(model)} cannot be analysed here: {POST_NORM}")
    measured, bar = check.get("measured"), check.get("bar")
    numbers = "" if measured is None or bar is None else f" (measured {measured:.3g}, bar {bar:g})"
    head = f"{_named(model)} failed the {check.get('name')} check{where}{numbers}: "
    tail = "; refused (--unverified overrides)"
    room = max(20, REFUSAL_WIDTH - len(head) - len(tail))  # the detail gives way: the line stays one line
    return HorizonError(head + (detail if len(detail) <= room else detail[: room - 1] + "…") + tail)


def require_verified(model: LoadedModel, unverified: bool | None = None) -> None:
    """Refuse a model that fails a quick check or a stored `horizon verify` (one line naming the check).

    The quick checks' verdict is stored for models whose hash names their content (the GGUFs,
    hub commits), so a model is checked once per cache, not once per command.
    """
    if overridden(unverified):
        model.extra["verified"] = "skipped"
        return
    full = stored_verdict(model)
    if full is not None:
        failed = [check for check in full.get("checks", []) if check.get("passed") is False]
        if failed:
            raise _refusal(model, failed[0], " of `horizon verify`")
    cacheable = _content_keyed(model)
    quick = stored_verdict(model, "quick") if cacheable else None
    if quick is None:
        result = Verification.of(model)
        try:
            result.checks = quick_checks(model)
        except Exception as exc:  # a model whose own forward fails is bad input, not a bug here
            from horizon.core.errors import library_reason

            raise HorizonError(f"{_named(model)} fails a forward pass on a short prompt: "
                               f"{type(exc).__name__}: {library_reason(exc, 80, with_type=False)}") from None
        quick = result.to_dict()
        if cacheable:
            with contextlib.suppress(OSError):  # a read-only cache only costs the next load a pass
                store_verdict(model, result, "quick")
    failed = [check for check in quick.get("checks", []) if check.get("passed") is False]
    model.extra["verified"] = "failed" if failed else ("full" if full is not None else "quick")
    if failed:
        raise _refusal(model, failed[0], "")


# Every name callers and tests use from here (the checks' modules' too).
__all__ = [
    "CLAIMED_FAMILIES",
    "ENV_OVERRIDE",
    "LOGITS_BAR",
    "POST_NORM",
    "QUICK_PROMPT",
    "REFUSAL_WIDTH",
    "REFUSED_FAMILIES",
    "VERIFY_PROMPT",
    "Check",
    "Verification",
    "_attention_sinks",
    "_presence_check",
    "_prompt_ids",
    "_reader_sites",
    "_record",
    "_rel",
    "_writer_sites",
    "attention_check",
    "attn_implementation",
    "chunking_check",
    "decomposition_bar",
    "decomposition_checks",
    "full_horizon_check",
    "independent_hf_model",
    "logits_check",
    "overridden",
    "quick_checks",
    "readout_check",
    "require_verified",
    "store_verdict",
    "stored_verdict",
    "structural_checks",
    "verify",
]
