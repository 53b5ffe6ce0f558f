"""The quick checks of an architecture (``load_model`` runs them on every load, about two short forward
passes): the hook sites the engine needs, the final norm and the attention-pattern hooks
(``structural_checks``), s_0 + sum of sublayer outputs against the final residual and every
reader's partial sum (``decomposition_checks``), and the engine's readout against the model's own
logits (``readout_check``); with ``Check``, the bars and the helpers every check uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from horizon.core.capture.decomposition import n_readers, output_hook, reader_hook, site_hook
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel

# A fixed prompt (23 tokens with the SmolLM2 tokenizer) for every check.
VERIFY_PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."
QUICK_PROMPT = "The capital of France is Paris, and its tower is famous."

POST_NORM = "post-norm only: sublayers read the raw stream, no pre-norm input to hook a reader at"

# Relative-error bars per dtype: float32 sums agree to rounding; half precision adds one
# rounding per residual addition.


def decomposition_bar(model: LoadedModel) -> float:
    """1e-5 in float32; in half precision the stream is rounded once per residual addition, so
    the error of s_0 + sum s_i grows like eps * sqrt(2L+1) (SmolLM2 in bfloat16: 4e-2 for a bar of 0.12)."""
    eps = torch.finfo(model.dtype).eps if model.dtype.is_floating_point else 0.0
    return max(1e-5, 2 * eps * float((2 * model.n_layers + 1) ** 0.5))


LOGITS_BAR = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

@dataclass
class Check:
    """One check: passed (None when it does not apply to this architecture), the measured error."""

    name: str
    passed: bool | None
    measured: float | None = None
    bar: float | None = None
    detail: str = ""


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


def _record(model: LoadedModel, ids: torch.Tensor, names: list[str],
            logits: bool) -> tuple[dict[str, torch.Tensor], Any]:
    store: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable[[torch.Tensor, object], torch.Tensor]:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            store[name] = activation.detach().clone()
            return activation

        return hook

    hooks = [(name, recorder(name)) for name in dict.fromkeys(names)]
    with torch.inference_mode():
        if logits:
            out = model.bridge.run_with_hooks(ids, fwd_hooks=hooks, return_type="logits")
        else:
            from horizon.core.capture.capture import stop_forward

            hooks.append((site_hook("final"), stop_forward))
            model.bridge.run_with_hooks(ids, fwd_hooks=hooks, return_type=None)
            out = None
    return store, out


def _presence_check(name: str, missing: list[str], shown: int, found: str) -> Check:
    """Passes when nothing is missing: the value is how many are, the detail names the first ``shown``."""
    detail = f"missing {', '.join(missing[:shown])}" if missing else found
    return Check(name, not missing, float(len(missing)), 0.0, detail)


def _post_norm(model: LoadedModel) -> bool:
    """Blocks that norm each sublayer's output but not its input (OLMo 2/3, EXAONE 4)."""
    names = model.bridge.hook_dict
    return "blocks.0.ln1_post.hook_in" in names and "blocks.0.ln1.hook_in" not in names


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
    from horizon.core.patching.horizon_metrics import post_head, readout_logits

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
