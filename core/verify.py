"""Verification of an architecture: the checks that make every other number trustworthy.

A tool that silently computes the wrong decomposition on a new architecture is worse than one
that refuses it, so every model is checked against the decomposition (docs/SCIENCE.md section 1)
before an analysis runs on it. Two levels:

- ``quick_checks`` (run by ``load_model`` on every load, about two short forward passes): every
  reader and writer hook site the engine needs exists, the final norm was found, attention
  patterns are hooked, s_0 + sum of sublayer outputs equals the final residual, every reader's
  hook sees the partial sum r_j the decomposition says it reads, and the engine's readout of the
  final residual (final norm, head, and what the model's forward does after its head:
  core/horizon_metrics.py ``post_head``) gives the model's own logits, so a model whose head does
  something the engine does not reproduce is refused rather than given wrong losses.
- ``verify`` (``horizon verify``): the quick checks plus the bridge's logits against an
  independently built plain HF model, the full horizon through the whole patched path (every
  block replayed by the staircase, a window formed from the prefix sums, both readouts) against
  the clean logits, position chunks against the whole pass (core/chunking.py), and the attention
  patterns themselves (rows sum to 1, causal, sliding windows respected), with the attention
  implementation that produced them.

Each check can fail: tests/test_verify.py and tests/test_chunk_check.py inject the fault each one
exists to catch (a missed sublayer, a wrong reference, a dropped post-head step, a broken patched
path, a KV cache that drops earlier positions, a wrong window) and see it fail with the error.

Over 400 lines for a reason: each check is short, but there are eleven of them plus the stored
verdicts, and a reader auditing what "verified" means should find every check in one file.

A model failing a quick check is refused at load with one line naming the check. Verdicts are
stored under the weight cache, keyed by the model's hash, dtype, library versions and the source
of this module, core/decomposition.py, core/horizon_metrics.py and core/chunking.py: the quick
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from horizon.core.attention import sliding_windows
from horizon.core.decomposition import n_readers, output_hook, reader_hook, site_hook
from horizon.core.errors import HorizonError
from horizon.core.gguf_files import cache_root
from horizon.core.loader import LoadedModel

# A fixed prompt (23 tokens with the SmolLM2 tokenizer) for every check.
VERIFY_PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."
QUICK_PROMPT = "The capital of France is Paris, and its tower is famous."
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
POST_NORM = "post-norm only: sublayers read the raw stream, no pre-norm input to hook a reader at"
REFUSED_FAMILIES: dict[str, tuple[str, str]] = {
    "olmo2": ("Olmo2ForCausalLM", f"{POST_NORM} (sites check)"),
    "olmo3": ("Olmo3ForCausalLM", f"{POST_NORM} (sites check)"),
    "exaone4": ("Exaone4ForCausalLM", f"{POST_NORM} (sites check)"),
}

# Relative-error bars per dtype: float32 sums agree to rounding; half precision adds one
# rounding per residual addition.


def decomposition_bar(model: LoadedModel) -> float:
    """1e-5 in float32; in half precision the stream is rounded once per residual addition, so
    the error of s_0 + sum s_i grows like eps * sqrt(2L+1) (SmolLM2 in bfloat16: 4e-2 for a bar of 0.12)."""
    eps = torch.finfo(model.dtype).eps if model.dtype.is_floating_point else 0.0
    return max(1e-5, 2 * eps * (2 * model.n_layers + 1) ** 0.5)


LOGITS_BAR = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass
class Check:
    """One check: passed (None when it does not apply to this architecture), the measured error."""

    name: str
    passed: bool | None
    measured: float | None = None
    bar: float | None = None
    detail: str = ""


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


# ----------------------------------------------------------------------------- helpers


def attn_implementation(model: LoadedModel) -> str:
    config = getattr(model.hf_model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "unknown")


def _prompt_ids(model: LoadedModel, text: str) -> torch.Tensor:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    try:
        ids = [model.bos_token_id(), *ids]
    except HorizonError:
        pass  # a model without BOS or EOS is checked on the text alone
    return torch.tensor([ids[: max(2, min(len(ids), model.n_ctx))]], device=model.device)


def _reader_sites(model: LoadedModel) -> list[tuple[str, int]]:
    """(hook name, index of the partial sum r_j it must carry) for every reader the engine uses.

    Sequential blocks: reader j reads r_j. Parallel attention + MLP: both sublayers of layer i
    read resid_pre_i = r_{2i+1}; a shared norm (GPT-J, Phi) has no separate MLP reader.
    """
    names = model.bridge.hook_dict
    sites = []
    for j in range(1, n_readers(model.n_layers) + 1):
        hook = reader_hook(j, model.n_layers)
        if model.parallel_attn_mlp and j <= 2 * model.n_layers and j % 2 == 0:
            if hook not in names:
                continue
            sites.append((hook, j - 1))
        else:
            sites.append((hook, j))
    return sites


def _writer_sites(model: LoadedModel) -> list[str]:
    return [site_hook("embed")] + [output_hook(j) for j in range(1, 2 * model.n_layers + 1)]


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def _record(model: LoadedModel, ids: torch.Tensor, names: list[str], logits: bool) -> tuple[dict, Any]:
    store: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            store[name] = activation.detach().clone()
            return activation

        return hook

    hooks = [(name, recorder(name)) for name in dict.fromkeys(names)]
    with torch.inference_mode():
        if logits:
            out = model.bridge.run_with_hooks(ids, fwd_hooks=hooks, return_type="logits")
        else:
            from horizon.core.capture import stop_forward

            hooks.append((site_hook("final"), stop_forward))
            model.bridge.run_with_hooks(ids, fwd_hooks=hooks, return_type=None)
            out = None
    return store, out


# ----------------------------------------------------------------------------- checks


def _presence_check(name: str, missing: list[str], shown: int, found: str) -> Check:
    """Passes when nothing is missing: the value is how many are, the detail names the first ``shown``."""
    detail = f"missing {', '.join(missing[:shown])}" if missing else found
    return Check(name, not missing, float(len(missing)), 0.0, detail)


def _post_norm(model: LoadedModel) -> bool:
    """Blocks that norm each sublayer's output but not its input (OLMo 2/3, EXAONE 4)."""
    names = model.bridge.hook_dict
    return "blocks.0.ln1_post.hook_in" in names and "blocks.0.ln1.hook_in" not in names


def _attention_sinks(model: LoadedModel) -> list[torch.Tensor | None]:
    """Per layer, the attention module's sink logits [heads] (gpt-oss), or None.

    A sink is an extra key every query may attend to, outside the sequence: HF takes the softmax
    over the scores and the sink, then drops the sink's column, so a pattern row sums to 1 minus
    the sink's share, by design.
    """
    blocks = getattr(model.bridge, "blocks", None) or []
    sinks: list[torch.Tensor | None] = []
    for block in blocks:
        original = getattr(getattr(block, "attn", None), "original_component", None)
        value = getattr(original, "sinks", None)
        sinks.append(value.detach() if isinstance(value, torch.Tensor) else None)
    return sinks


def structural_checks(model: LoadedModel) -> list[Check]:
    """Hook sites, the final norm, attention-pattern hooks: no forward pass."""
    names = model.bridge.hook_dict
    checks = []
    needed = [hook for hook, _ in _reader_sites(model)] + _writer_sites(model)
    missing = [name for name in needed if name not in names]
    blocks = getattr(model.bridge, "blocks", None)
    n_blocks = len(blocks) if blocks is not None else 0
    if n_blocks != model.n_layers:
        missing.insert(0, f"blocks ({n_blocks} of {model.n_layers})")
    sites = _presence_check("sites", missing, 3, f"{len(needed)} reader and writer hooks found")
    if missing and _post_norm(model):
        sites.detail = POST_NORM  # why the readers are missing, not which
    checks.append(sites)
    final = getattr(model.bridge, "ln_final", None)
    module = getattr(final, "original_component", None)
    kind = type(module).__name__ if module is not None else "none"
    checks.append(Check("final_norm", "norm" in kind.lower(), None, None, kind))
    patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.n_layers)]
    absent = [name for name in patterns if name not in names]
    checks.append(
        _presence_check("attention_hooks", absent, 1, f"hook_pattern on every layer ({attn_implementation(model)})")
    )
    return checks


def decomposition_checks(model: LoadedModel, ids: torch.Tensor) -> list[Check]:
    """s_0 + sum of outputs = final residual, and every reader sees its partial sum r_j."""
    readers = _reader_sites(model)
    writers = _writer_sites(model)
    store, _ = _record(model, ids, [hook for hook, _ in readers] + writers, logits=False)
    bar = decomposition_bar(model)
    missing = [name for name in [hook for hook, _ in readers] + writers if name not in store]
    if missing:
        detail = f"hook {missing[0]} did not fire"
        return [Check("decomposition", False, None, bar, detail), Check("readers", False, None, bar, detail)]
    outputs = torch.stack([store[name].double() for name in writers])
    partial = outputs.cumsum(dim=0)  # partial[j-1] = r_j
    final = store[site_hook("final")]
    decomposition = _rel(partial[-1], final)
    errors = [(_rel(store[hook], partial[j - 1]), hook) for hook, j in readers]
    # The worst reader; a NaN (an overflowed stream) counts as the worst of all.
    worst, where = next(((error, hook) for error, hook in errors if error != error), max(errors))
    detail = "max relative error of s_0 + sum s_i vs final"
    if not bool(torch.isfinite(final).all()):
        detail = f"non-finite values in the residual stream: it overflows {str(model.dtype).removeprefix('torch.')}"
    return [
        Check("decomposition", decomposition <= bar, decomposition, bar, detail),
        Check("readers", worst <= bar, worst, bar, f"worst reader {where}"),
    ]


def quick_checks(model: LoadedModel) -> list[Check]:
    """What load_model runs on every load: structure, one short pass stopped before the readout, and
    the readout of one short pass."""
    checks = structural_checks(model)
    if checks[0].passed:
        ids = _prompt_ids(model, QUICK_PROMPT)
        checks += decomposition_checks(model, ids)
        checks.append(readout_check(model, ids))
    return checks


def readout_check(model: LoadedModel, ids: torch.Tensor) -> Check:
    """The engine's logits from the clean final residual (the final norm's input) against the logits
    the model's own forward returned in the same pass."""
    from horizon.core.horizon_metrics import post_head, readout_logits

    store, own = _record(model, ids, [site_hook("final")], logits=True)
    engine = readout_logits(model, store[site_hook("final")])
    error = _max_relative(engine, own)
    bar = LOGITS_BAR.get(model.dtype, 1e-4)
    after = post_head(model).describe()
    detail = f"max |engine readout - model's logits| / max |model's logits|; after the head: {after}"
    return Check("readout", error <= bar, error, bar, detail)


def _max_relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (NaN, which fails every bar, on a shape mismatch)."""
    if actual.shape != expected.shape:
        return float("nan")
    expected = expected.double()
    return float((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def independent_hf_model(model: LoadedModel) -> tuple[Any, str]:
    """A plain HF model with the same weights that the bridge never wrapped, and how it was built."""
    from horizon.core.loader import TINY_MODELS, _quiet, _tiny_hf_model

    reload = model.extra.get("reload")
    if reload in TINY_MODELS:
        return _tiny_hf_model(reload, len(model.tokenizer)).to(model.device, model.dtype), "rebuilt (seed 0)"
    if reload is not None and not getattr(model.hf_model, "hf_device_map", None):
        from transformers import AutoModelForCausalLM

        try:
            with _quiet():
                fresh: Any = AutoModelForCausalLM.from_pretrained(
                    reload, dtype=model.dtype, attn_implementation="eager", local_files_only=Path(reload).exists()
                )
            return fresh.to(model.device).eval(), "reloaded from the same files"
        except Exception:
            pass
    return model.hf_model, "the bridge's own HF modules (no independent copy could be built)"


def logits_check(model: LoadedModel, ids: torch.Tensor, reference: Any) -> Check:
    with torch.inference_mode():
        bridge_logits = model.bridge(ids).double()
        plain = reference(ids).logits.double()
    error = float((bridge_logits - plain).abs().max() / plain.abs().max().clamp_min(1e-30))
    bar = LOGITS_BAR.get(model.dtype, 1e-4)
    return Check("logits", error <= bar, error, bar, "max |bridge - HF| / max |HF| over the prompt")


def full_horizon_check(model: LoadedModel, ids: torch.Tensor) -> Check:
    """The full horizon through the whole patched path must be the clean model.

    Two staircase rows (core/staircase.py) against the clean run: K = 2L+1 forced in at layer 0, so
    every block is replayed with the clean run's recorded arguments (masks, rotary tables) and each
    reader reads the stream the replayed blocks produce; and K = 2L with s_0 kept, whose final
    reader reads the window s_0 + s_1 + ... + s_2L formed from the engine's prefix sums of the
    outputs, i.e. the whole stream. Both go through the logits readout (``patch``) and the tiled
    metrics readout (``scan``). Measured: the worst of the logits' relative error against the
    model's own clean logits and the per-prediction |Δloss| and KL (nats) of the metrics.
    """
    if model.parallel_attn_mlp:
        return Check("full_horizon", None, None, None, "not applicable: parallel attention + MLP (horizon refused)")
    from horizon.core.horizon import HorizonConfig, _metrics_readout, clean_run
    from horizon.core.horizon_metrics import linear_head
    from horizon.core.prompts import batches
    from horizon.core.staircase import StaircasePass

    n_layers = model.n_layers
    (batch,) = batches(model, ids.tolist(), has_bos=True)
    clean = clean_run(model, batch)
    rows = [(0, 0, HorizonConfig(2 * n_layers + 1)), (n_layers, 1, HorizonConfig(2 * n_layers, keep_embed=True))]
    errors = [_max_relative(logits, clean.logits) for _, logits in StaircasePass(model, clean, rows).run()]
    readout, per_readout = _metrics_readout(model, clean, linear_head(model))
    for _, metrics in StaircasePass(model, clean, rows, readout, rows_per_readout=per_readout).run():
        errors.append(float((metrics.loss_patched - metrics.loss_clean).abs().max()))
        errors.append(float(metrics.kl.abs().max()))
    error = next((value for value in errors if value != value), max(errors))  # a NaN is the worst
    bar = LOGITS_BAR.get(model.dtype, 1e-4)
    detail = (f"k = {n_layers + 1} through every block, k = {n_layers} + s_0 at the final reader; "
              "vs the clean logits (relative), |Δloss| and KL")
    return Check("full_horizon", error <= bar, error, bar, detail)


def chunking_check(model: LoadedModel) -> Check:
    """Position chunks (a KV cache) against the whole pass: core/chunking.py's self-check, run again."""
    from horizon.core import chunking

    verdict = chunking.check(model)
    return Check("chunking", verdict.passed, verdict.measured, verdict.bar, verdict.detail)


def attention_check(model: LoadedModel, ids: torch.Tensor) -> Check:
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.n_layers)]
    sinks = _attention_sinks(model)
    scores = {layer: f"blocks.{layer}.attn.hook_attn_scores" for layer, sink in enumerate(sinks) if sink is not None}
    store, _ = _record(model, ids, names + list(scores.values()), logits=False)
    implementation = attn_implementation(model)
    if len(store) != len(names) + len(scores):
        return Check("attention", False, None, None, f"patterns not produced ({implementation} attention)")
    windows = sliding_windows(model)
    worst = 0.0
    n_pos = ids.shape[1]
    query = torch.arange(n_pos, device=ids.device).unsqueeze(1)
    key = torch.arange(n_pos, device=ids.device).unsqueeze(0)
    for layer, (name, window) in enumerate(zip(names, windows, strict=True)):
        pattern = store[name].double()  # [batch, head, query, key]
        row_sum: torch.Tensor | float = 1.0
        if layer in scores:  # 1 minus the sink's share of the softmax over [scores, sink]
            logits = store[scores[layer]].double()
            sink_logit = sinks[layer]
            assert sink_logit is not None  # scores are hooked only on the layers that have sinks
            sink = sink_logit.double().to(logits.device).view(1, -1, 1, 1).expand(*logits.shape[:3], 1)
            row_sum = 1 - torch.cat((logits, sink), dim=-1).softmax(dim=-1)[..., -1]
        worst = max(worst, float((pattern.sum(dim=-1) - row_sum).abs().max()))
        forbidden = key > query
        if window is not None:
            forbidden = forbidden | (query - key >= window)
        worst = max(worst, float(pattern[..., forbidden].abs().max()) if forbidden.any() else 0.0)
    local = [layer for layer, window in enumerate(windows) if window is not None]
    layout = "all global"
    if local:
        layout = (
            f"{len(local)} sliding-window layer(s) (window {windows[local[0]]}), {model.n_layers - len(local)} global"
        )
    if scores:
        layout += f"; sinks on {len(scores)} layer(s) (rows sum to 1 minus the sink's share)"
    bar = LOGITS_BAR.get(model.dtype, 1e-4)
    return Check("attention", worst <= bar, worst, bar, f"{implementation} attention; {layout}")


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

    here = Path(__file__).parent
    # The code a verdict vouches for: the decomposition, the checks, the readout and the chunk check.
    sources = ("decomposition.py", "verify.py", "horizon_metrics.py", "chunking.py")
    code = hashlib.sha256(b"".join((here / name).read_bytes() for name in sources))
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
    from horizon.core.loader import TINY_MODELS

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
        return json.loads(_verdict_path(model, level).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


REFUSAL_WIDTH = 200


def _named(model: LoadedModel) -> str:
    """'spec (architecture)', both cut short: a refusal is one line of about 200 characters at most."""
    from horizon.core.model_files import short_text

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
