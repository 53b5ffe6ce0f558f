"""The checks ``horizon verify`` adds to the quick ones: the bridge's logits against an independently
built HF model (``logits_check``), the full horizon through the whole patched path
(``full_horizon_check``), position chunks against the whole pass (``chunking_check``) and the
attention patterns themselves: rows sum to 1 (or 1 minus a sink's share), causal, sliding windows
respected (``attention_check``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from horizon.core.analyses.attention.engine import sliding_windows
from horizon.core.checks.verify_checks import LOGITS_BAR, Check, _max_relative, _record, attn_implementation
from horizon.core.model.loader import LoadedModel


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


def independent_hf_model(model: LoadedModel) -> tuple[Any, str]:
    """A plain HF model with the same weights that the bridge never wrapped, and how it was built."""
    from horizon.core.model.loader import TINY_MODELS, _quiet, _tiny_hf_model

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

    Two staircase rows (core/patching/staircase.py) against the clean run: K = 2L+1 forced in at layer 0, so
    every block is replayed with the clean run's recorded arguments (masks, rotary tables) and each
    reader reads the stream the replayed blocks produce; and K = 2L with s_0 kept, whose final
    reader reads the window s_0 + s_1 + ... + s_2L formed from the engine's prefix sums of the
    outputs, i.e. the whole stream. Both go through the logits readout (``patch``) and the tiled
    metrics readout (``scan``). Measured: the worst of the logits' relative error against the
    model's own clean logits and the per-prediction |Δloss| and KL (nats) of the metrics.
    """
    if model.parallel_attn_mlp:
        return Check("full_horizon", None, None, None, "not applicable: parallel attention + MLP (horizon refused)")
    from horizon.core.model.prompts import batches
    from horizon.core.patching.horizon import HorizonConfig, _metrics_readout, clean_run
    from horizon.core.patching.horizon_metrics import linear_head
    from horizon.core.patching.staircase import StaircasePass

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
    """Position chunks (a KV cache) against the whole pass: core/checks/chunking.py's self-check, run again."""
    from horizon.core.checks import chunking

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
