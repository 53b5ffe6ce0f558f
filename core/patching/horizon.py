"""The effective layer horizon (docs/SCIENCE.md section 3, seed 000): a patched forward pass and its metrics.

Enforcing horizon K (in sublayers): every reader j (sublayers 1..2L, final readout 2L+1) reads the
window h_j = s_{max(0, j-K)} + ... + s_{j-1} instead of r_j. The window replaces the input of the
reader's *norm* (``ln1.hook_in`` / ``ln2.hook_in`` / ``ln_final.hook_in``); the residual stream
flowing on still carries every output.

Efficiency (why this module drives the blocks itself): every reader before the first one the
window bites (j <= K, or layers below start_layer) sees exactly the clean input, so a patched pass
starts at that reader's layer from the cached clean ``resid_pre``. The bridge's ``start_at_layer``
cannot be used for that: it still executes blocks 0..k-1 (and discards their output). Instead the
clean run records each block's call arguments (attention mask, rotary embeddings, position ids) and
the patched pass calls the bridge blocks from the first patched layer on, so every bridge hook
still fires. A scan batches many horizons into one pass as a "staircase": the row of horizon k joins
the batch at its own first patched layer, so no block is ever run on a row whose input is clean.
Windows are differences of float64 prefix sums (one subtraction per reader, exact to float32
rounding), and a scan's readout reduces each vocabulary tile of the logits to the metrics while the
tile is in cache, so no config's full logits are ever held. A long prompt can go through all of it
in position chunks with KV caches (``ChunkedClean``, ``metric_sums``): windows are per-position
sums, so only attention needs the positions before, and it reads them from the cache (on a stack
where that holds: core/checks/chunking.py checks it before the model's first chunked pass).

This module is the engine's public face and ``patch``: callers import from here. Its parts:
core/patching/horizon_config.py (``HorizonConfig``, the model check), core/patching/horizon_clean.py (the clean run,
its position chunks, ``clean_runs``), core/patching/horizon_pass.py (the patched pass and its readouts),
core/patching/staircase.py (the batched pass), core/patching/horizon_metrics.py (readout and metrics),
core/analyses/scan/engine.py (scan and the layer x k matrix), core/patching/ablation.py (mean ablation's means).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from horizon.core.capture.capture import run_capture
from horizon.core.capture.decomposition import n_readers, output_hook, reader_hook, stack_outputs, window_read
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.patching.ablation import AblationMeans, MeanAccumulator, ablation_means, needs_means
from horizon.core.patching.horizon_clean import (
    KEEP_CLEAN_BYTES,
    ChunkedClean,
    CleanRun,
    CleanRuns,
    clean_run,
    clean_runs,
    corpus_ablation_means,
)
from horizon.core.patching.horizon_config import DEFAULT_TOL, HorizonConfig, check_model, check_unit, horizon_sublayers
from horizon.core.patching.horizon_metrics import (
    CleanReference,
    TokenMetrics,
    Totals,
    apply_head,
    logits_metrics,
    token_metrics,
    unembed,
)
from horizon.core.patching.horizon_pass import (
    DEFAULT_PASS_BYTES,
    TILE_BYTES,
    _metrics_readout,
    _row_bytes,
    metric_sums,
    patched_logits,
    patched_metrics,
)


@dataclass
class PatchResult:
    """One patched pass against the clean run; per-token lists are per prompt, positions 0..T-2."""

    config: HorizonConfig
    n_tokens: int
    loss_clean: float
    loss_patched: float
    delta_loss: float
    kl: float
    top1_agreement: float
    per_token_loss_clean: list[list[float]]
    per_token_loss_patched: list[list[float]]
    per_token_kl: list[list[float]]
    logits: list[torch.Tensor] | None = None  # per prompt [T, vocab], when asked for

    @property
    def per_token(self) -> dict[str, list[list[float]]]:
        return {"loss_clean": self.per_token_loss_clean, "loss_patched": self.per_token_loss_patched,
                "kl": self.per_token_kl}


def patch(
    model: LoadedModel,
    token_ids: list[list[int]],
    config: HorizonConfig,
    keep_logits: bool = False,
    batch_size: int = 8,
    cleans: Sequence[CleanRun | ChunkedClean] | None = None,
    means: AblationMeans | None = None,
    has_bos: bool = True,
) -> PatchResult:
    """Run ``config`` on the prompts and compare with the clean run.

    ``cleans`` are the prompts' clean runs (``clean_runs``) when the caller keeps them for reuse;
    ``means`` the ablation means of a mean-ablating config (default: the prompts' own, with
    position 0 a BOS when ``has_bos``).
    """
    check_model(model)
    config.check_layers(model.n_layers)
    cleans = cleans if cleans is not None else clean_runs(model, token_ids, batch_size, has_bos)
    if config.ablation == "mean" and means is None:
        means = ablation_means(cleans)
    totals = Totals()
    per_clean: list[list[float]] = []
    per_patched: list[list[float]] = []
    per_kl: list[list[float]] = []
    kept: list[torch.Tensor] = []
    for clean in cleans:
        if not isinstance(clean, CleanRun):
            raise HorizonError("patch keeps whole logits, so it cannot run on position chunks; lower the prompt length")
        batch = clean.batch
        ((_, logits),) = list(patched_logits(model, clean, [config], means=means))  # kept: a fresh tensor
        metrics = token_metrics(clean.reference, logits)
        totals.add(metrics)
        for row, length in enumerate(batch.lengths):
            per_clean.append(metrics.loss_clean[row, : length - 1].tolist())
            per_patched.append(metrics.loss_patched[row, : length - 1].tolist())
            per_kl.append(metrics.kl[row, : length - 1].tolist())
            if keep_logits:
                kept.append(logits[row, :length].detach().clone())
    n = totals.n_tokens
    return PatchResult(
        config=config,
        n_tokens=n,
        loss_clean=totals.loss_clean / n,
        loss_patched=totals.loss_patched / n,
        delta_loss=(totals.loss_patched - totals.loss_clean) / n,
        kl=totals.kl / n,
        top1_agreement=totals.agree / n,
        per_token_loss_clean=per_clean,
        per_token_loss_patched=per_patched,
        per_token_kl=per_kl,
        logits=kept if keep_logits else None,
    )


# ----------------------------------------------------------------------------- the straightforward reference


def reference_patched_logits(
    model: LoadedModel, input_ids: torch.Tensor, config: HorizonConfig, means: AblationMeans | None = None
) -> torch.Tensor:
    """One full hooked bridge pass with the window hooks, as a new user would write it.

    No clean-prefix reuse, no batching: the benchmark's naive scan and a cross-check in tests.
    Mean ablation needs ``means`` (position 0 is taken as a BOS when ``means.has_bos``).
    """
    check_model(model)
    n_layers = model.n_layers
    config.check_layers(n_layers)
    if config.ablation == "mean" and means is None:
        raise HorizonError("mean ablation needs the ablation means")
    clean_outputs: torch.Tensor | None = None
    if config.source == "clean" or config.ablation == "mean":
        capture = run_capture(model, input_ids, ("embed", "attn_out", "mlp_out"))
        clean_outputs = stack_outputs(capture["embed"], capture["attn_out"], capture["mlp_out"])
    batch, pos = input_ids.shape
    produced = torch.empty((n_readers(n_layers), batch, pos, model.d_model), dtype=model.dtype, device=model.device)
    count = 0

    def record(activation: torch.Tensor, hook: object) -> torch.Tensor:
        nonlocal count
        produced[count] = activation
        count += 1
        return activation

    def read(j: int) -> Callable[[torch.Tensor, object], torch.Tensor]:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            if not config.patches(j, n_layers):
                return activation
            outputs = clean_outputs if config.source == "clean" else produced
            assert outputs is not None  # a clean-source pass is always given the clean outputs
            window = window_read(outputs, j, config.horizon_sublayers, config.keep_embed)
            if config.ablation == "mean":
                assert means is not None and clean_outputs is not None
                lo = j - config.horizon_sublayers
                window = window + means.fill(lo, config.keep_embed, window.dtype)
                if means.has_bos:  # position 0: the window plus the clean s_0..s_{lo-1} there
                    window[:, 0] = outputs[lo:j, :, 0].sum(dim=0) + clean_outputs[:lo, :, 0].sum(dim=0)
            return window

        return hook

    hooks: list[tuple[str, Callable[[torch.Tensor, object], torch.Tensor]]] = [("blocks.0.hook_resid_pre", record)]
    for j in range(1, n_readers(n_layers) + 1):
        hooks.append((reader_hook(j, n_layers), read(j)))
        if j <= 2 * n_layers:
            hooks.append((output_hook(j), record))
    with torch.inference_mode():
        return cast(torch.Tensor, model.bridge.run_with_hooks(input_ids, fwd_hooks=hooks, return_type="logits"))


# Every name callers import from the engine (its parts' and the metrics' too).
__all__ = [
    "DEFAULT_PASS_BYTES",
    "DEFAULT_TOL",
    "KEEP_CLEAN_BYTES",
    "TILE_BYTES",
    "AblationMeans",
    "ChunkedClean",
    "CleanReference",
    "CleanRun",
    "CleanRuns",
    "HorizonConfig",
    "MeanAccumulator",
    "PatchResult",
    "TokenMetrics",
    "_metrics_readout",
    "_row_bytes",
    "ablation_means",
    "apply_head",
    "check_model",
    "check_unit",
    "clean_run",
    "clean_runs",
    "corpus_ablation_means",
    "horizon_sublayers",
    "logits_metrics",
    "metric_sums",
    "needs_means",
    "patch",
    "patched_logits",
    "patched_metrics",
    "reference_patched_logits",
    "token_metrics",
    "unembed",
]
