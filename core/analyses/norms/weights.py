"""Weight-side evidence for norm growth (docs/SCIENCE.md section 2; seed 002's weight analysis).

- Per head ||W_V W_O||_F (the OV circuit). With grouped-query attention query head h uses the
  W_V of its key-value group, h // (n_heads / n_kv_heads), as in the attention forward.
- Per layer Frobenius norms of W_Q, W_K, W_V, W_O (as stored: grouped K/V are not repeated),
  W_in, W_gate (gated MLPs), W_out, and ||b_O|| where the model has an attention output bias.
- MLP on random inputs: N(0, 1) vectors standardised per vector to mean 0 / variance 1 over
  d_model, the same vectors for every layer, through that layer's pre-MLP norm and MLP.
- Neuron activation rate: fraction of MLP hidden pre-activations > 0 (the gate's for gated MLPs)
  for real MLP inputs, for the random inputs, and for real inputs resampled coordinate by
  coordinate: coordinate c of a resampled vector comes from an independently drawn real position
  (any prompt, BOS and padding excluded) of the same layer. That keeps each coordinate's real
  distribution but breaks the structure between coordinates (the seed's "resampled" inputs).

Weights are read through the bridge's TransformerLens-layout accessors, so ``processing="tl"``
(``enable_compatibility_mode``: fold norms, centre writing weights, fold value biases; the
unembedding is left uncentred since nothing here reads it) shows the same quantities in the
seeds' processed basis. Processing runs on a copy: the caller's model keeps its raw weights.
"""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import torch
from horizon.core.capture.capture import run_capture
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import batches

PROCESSINGS = ("raw", "tl")
N_RANDOM = 256
MAX_POOL = 2048  # real MLP inputs kept per layer for resampling (a random subset beyond this)


def check_processing(processing: str) -> str:
    if processing not in PROCESSINGS:
        raise HorizonError(f"unknown --processing {processing!r}: use raw or tl")
    return processing


def is_processed(model: LoadedModel) -> bool:
    return bool(getattr(model.bridge, "_weights_processed", False))


def with_processing(model: LoadedModel, processing: str) -> LoadedModel:
    """The model itself for raw, or a copy in TransformerLens compatibility processing for tl."""
    check_processing(processing)
    if processing == "raw":
        if is_processed(model):
            raise HorizonError("this model's weights are already TransformerLens-processed; raw needs a fresh load")
        return model
    if is_processed(model):
        return model
    adapter = getattr(model.bridge, "adapter", None)
    if not getattr(adapter, "supports_compatibility_mode", True):
        raise HorizonError(
            f"--processing tl is not available for {model.spec} ({model.architecture}): TransformerLens "
            "compatibility processing does not support this architecture; use --processing raw"
        )
    processed = copy.deepcopy(model)
    try:
        # The unembedding is never measured here: skip centring it (a vocab-sized copy, seconds).
        processed.bridge.enable_compatibility_mode(disable_warnings=True, center_unembed=False)
    except (RuntimeError, NotImplementedError, ValueError, KeyError) as exc:
        raise HorizonError(
            f"--processing tl failed for {model.spec} ({model.architecture}): {exc}".splitlines()[0]
        ) from None
    return processed


# ----------------------------------------------------------------------------- weight norms


def expand_kv_heads(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[L, n_kv_heads, ...] -> [L, n_heads, ...]: query head h uses kv head h // group size."""
    n_kv_heads = weight.shape[1]
    if n_kv_heads == n_heads:
        return weight
    if n_heads % n_kv_heads:
        raise HorizonError(f"{n_heads} query heads cannot share {n_kv_heads} key-value heads evenly")
    return weight.repeat_interleave(n_heads // n_kv_heads, dim=1)


def ov_frobenius(w_v: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """||W_V W_O||_F per head from the factors, never forming the d_model x d_model product.

    w_v [..., d_model, d_head], w_o [..., d_head, d_model]. ||AB||_F^2 = tr(B^T A^T A B)
    = sum((A^T A) * (B B^T)), both d_head x d_head and symmetric.
    """
    w_v, w_o = w_v.double(), w_o.double()
    gram_v = w_v.transpose(-2, -1) @ w_v
    gram_o = w_o @ w_o.transpose(-2, -1)
    return (gram_v * gram_o).sum(dim=(-2, -1)).clamp_min(0).sqrt()


def _stacked(bridge: Any, name: str) -> torch.Tensor | None:
    """A stacked weight [L, ...], or None when the model has no such parameter (bias-free, ungated)."""
    try:
        value = getattr(bridge, name)
    except AttributeError:
        return None
    return None if value is None else value.detach()


def _layer_norms(weight: torch.Tensor | None) -> list[float] | None:
    if weight is None:
        return None
    return cast(list[float], weight.double().flatten(start_dim=1).norm(dim=1).tolist())


def weight_norms(model: LoadedModel) -> dict[str, Any]:
    """Per-head OV Frobenius norms and per-layer weight norms, from the bridge's accessors."""
    bridge = model.bridge
    w_v = _stacked(bridge, "W_V")
    w_o = _stacked(bridge, "W_O")
    if w_v is None or w_o is None:
        raise HorizonError(f"{model.spec} exposes no W_V / W_O weights; the weight analysis needs them")
    ov = ov_frobenius(expand_kv_heads(w_v, w_o.shape[1]), w_o)
    return {
        "W_OV_frobenius": ov.tolist(),  # [layer][head]
        "b_O": _layer_norms(_stacked(bridge, "b_O")),  # None for bias-free attention outputs
        **{name: _layer_norms(_stacked(bridge, name)) for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate",
                                                                  "W_out")},
    }


# ----------------------------------------------------------------------------- MLP probes


def standardised_normal(n_vectors: int, d_model: int, seed: int = 0) -> torch.Tensor:
    """N(0, 1) vectors, each shifted and scaled to mean exactly 0 and (population) variance 1."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n_vectors, d_model, generator=generator, dtype=torch.float64)
    vectors = vectors - vectors.mean(dim=-1, keepdim=True)
    return vectors / vectors.std(dim=-1, correction=0, keepdim=True)


def _hidden_input_layer(block: Any) -> Any:
    """The linear map whose output is the hidden pre-activation: the gate for gated MLPs."""
    mlp = block.mlp
    return mlp.gate if hasattr(mlp, "gate") else getattr(mlp, "in")


def mlp_probe(model: LoadedModel, layer: int, inputs: torch.Tensor) -> tuple[float, float]:
    """Mean output norm and activation rate of layer's pre-MLP norm + MLP on ``inputs`` [N, d_model]."""
    block = model.bridge.blocks[layer]
    param = next(block.mlp.parameters())
    x = inputs.to(device=param.device, dtype=param.dtype).unsqueeze(0)  # [1, N, d_model]
    with torch.inference_mode():
        normed = block.ln2(x)
        hidden = _hidden_input_layer(block)(normed)
        output = block.mlp(normed)
    return float(output.double().norm(dim=-1).mean()), float((hidden > 0).double().mean())


def real_mlp_inputs(
    model: LoadedModel, token_ids: list[list[int]], has_bos: bool, batch_size: int = 8, seed: int = 0
) -> tuple[list[float], list[torch.Tensor]]:
    """Activation rate per layer on the real run, and a pool of real MLP inputs per layer.

    The MLP input is what the pre-MLP norm reads (``ln2.hook_in``): resid_mid for sequential
    blocks, resid_pre for parallel attention + MLP. BOS and padding positions are left out.
    """
    n_layers = model.n_layers
    positive = torch.zeros(n_layers, dtype=torch.float64)
    counted = 0
    pools: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    generator = torch.Generator().manual_seed(seed)
    for batch in batches(model, token_ids, has_bos, batch_size):
        keep = batch.stat_mask(include_bos=False)

        def reduce(key: str, activation: torch.Tensor) -> torch.Tensor:
            # Kept on the device and masked after the pass: a boolean index (or a host copy) per
            # layer would sync the host once per layer.
            if key == "pre":  # fraction of neurons > 0 per position
                return (activation > 0).double().mean(dim=-1)
            return activation.float()  # MLP inputs [batch, pos, d_model]

        capture = run_capture(
            model, batch.input_ids, (), reduce=reduce, stop_after_final=True,
            extra_hooks={"pre": "blocks.{layer}.mlp.hook_pre", "mlp_in": "blocks.{layer}.ln2.hook_in"},
        )
        host_keep = keep.cpu()
        positive += capture["pre"].cpu()[:, host_keep].sum(dim=1)  # [L, kept positions] summed
        counted += int(host_keep.sum())
        mlp_in = capture["mlp_in"].cpu()[:, host_keep]  # [L, kept positions, d_model]
        for layer in range(n_layers):
            pools[layer].append(mlp_in[layer])
            pooled = torch.cat(pools[layer])
            if len(pooled) > MAX_POOL:
                pooled = pooled[torch.randperm(len(pooled), generator=generator)[:MAX_POOL]]
            pools[layer] = [pooled]
    if counted == 0:
        raise HorizonError("no real position to measure neuron activation rates (every prompt is only BOS)")
    return (positive / counted).tolist(), [pool[0] for pool in pools]


def resample_coordinates(pool: torch.Tensor, n_vectors: int, seed: int = 0) -> torch.Tensor:
    """Vectors whose coordinate c is coordinate c of an independently drawn row of ``pool``."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, pool.shape[0], (n_vectors, pool.shape[1]), generator=generator)
    return torch.gather(pool, 0, rows)


def weight_report(
    model: LoadedModel,
    processing: str = "raw",
    token_ids: list[list[int]] | None = None,
    has_bos: bool = True,
    batch_size: int = 8,
    n_random: int = N_RANDOM,
    seed: int = 0,
) -> dict[str, Any]:
    """The `weights` JSON section: one list per quantity (per layer; OV norms per layer and head).

    Real and resampled activation rates need ``token_ids`` (BOS first when ``has_bos``); without
    them those entries are None.
    """
    check_processing(processing)
    if n_random < 1:
        raise HorizonError("the random-input probe needs at least one vector")
    subject = with_processing(model, processing)
    report: dict[str, Any] = {"processing": processing, **weight_norms(subject)}
    random_inputs = standardised_normal(n_random, subject.d_model, seed)
    probes = [mlp_probe(subject, layer, random_inputs) for layer in range(subject.n_layers)]
    report["mlp_out_random"] = [norm for norm, _ in probes]
    report["neuron_rate_random"] = [rate for _, rate in probes]
    report["neuron_rate_real"] = None
    report["neuron_rate_resampled"] = None
    if token_ids:
        real_rates, pools = real_mlp_inputs(subject, token_ids, has_bos, batch_size, seed)
        report["neuron_rate_real"] = real_rates
        report["neuron_rate_resampled"] = [
            mlp_probe(subject, layer, resample_coordinates(pools[layer], n_random, seed + 1 + layer))[1]
            for layer in range(subject.n_layers)
        ]
    report["n_random"] = n_random
    report["kind"] = "gate" if subject.bridge.W_gate is not None else "in"
    if any(not math.isfinite(value) for value in report["mlp_out_random"]):
        raise HorizonError("the random-input MLP probe produced non-finite outputs (overflow in this dtype?)")
    return report
