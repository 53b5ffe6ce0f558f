"""Horizon patch and scan vs plain HF forwards on a 128-token prompt of the bundled model (issue 4).

Every ratio is measured side by side in one run: the functions alternate, so load drift on a
shared machine hits all of them alike.
"""

from __future__ import annotations

import statistics

import torch
from horizon.core.analyses.scan.engine import scan_by_layer
from horizon.core.model.loader import load_model
from horizon.core.patching.horizon import HorizonConfig, patch, reference_patched_logits

from tests.bench.timing import (
    hf_forwards,
    interleaved,
    paired_times,
    patch_pass,
    plain_hf_model,
    prompt_ids,
    scan_vs_forwards,
    warm_up,
)

_cache: dict[str, object] = {}


def _setup() -> tuple:
    if not _cache:
        _cache["model"] = load_model("smollm2-135m", device="cpu")
        _cache["hf"] = plain_hf_model()
        _cache["ids"] = prompt_ids(128)
    return _cache["model"], _cache["hf"], _cache["ids"]


def bench_patch_pass() -> dict:
    """One patched pass (k = 1, S = 0: the window bites from attn_1 on) vs one plain HF forward."""
    return patch_pass(*_setup())


def bench_patch_with_clean() -> dict:
    """`patch()` as a caller sees it: the clean run, the patched pass and the metrics, vs one HF forward."""
    model, hf, ids = _setup()
    token_ids = ids.tolist()
    config = HorizonConfig.from_layers(1)
    times = interleaved({"hf": lambda: hf(ids), "patch": lambda: patch(model, token_ids, config)}, repeats=3)
    return {"ratio": round(times["patch"] / times["hf"], 3), "target": None,
            "hf_s": round(times["hf"], 4), "patch_s": round(times["patch"], 4)}


def _naive_scan(model, token_ids: list[list[int]]) -> list[tuple[float, float]]:
    """The clean run, then one full hooked bridge pass per k = 1..L+1: what a new user writes."""
    input_ids = torch.tensor(token_ids)
    targets = input_ids[0, 1:]
    rows = []
    with torch.inference_mode():
        clean_logp = model.bridge(input_ids)[0, :-1].log_softmax(-1)
        for k in range(1, model.n_layers + 2):
            logp = reference_patched_logits(model, input_ids, HorizonConfig.from_layers(k))[0, :-1].log_softmax(-1)
            kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1).mean()
            rows.append((float(torch.nn.functional.nll_loss(logp, targets)), float(kl)))
    return rows


def bench_scan_full() -> dict:
    """Full scan (k = 1..L+1, S = 0) vs (L+1) plain HF forwards run back to back; the naive scan's ratio too.

    The baseline is the (L+1) forwards as one timed block, so both sides span similar wall time
    and load bursts on a shared machine hit them alike. The naive scan (about twice the scan, and
    only reported) is timed once, right after the three rounds, instead of in every round: that
    saves about 20 s of ``make bench`` and leaves the targeted ratio's rounds as they were.
    """
    model, hf, ids = _setup()
    token_ids = ids.tolist()
    result, times = scan_vs_forwards(  # warm-up: one forward, a two-k scan, one reference pass
        model, hf, ids, 0.6, warm=(lambda: reference_patched_logits(model, ids, HorizonConfig.from_layers(1)),),
    )
    naive = paired_times({"naive": lambda: _naive_scan(model, token_ids)}, repeats=1, warmup=False)["naive"][0]
    return {
        **result,
        "naive_s": round(naive, 3),
        "naive_over_scan": round(naive / times["scan"], 2),
        "naive_over_forwards": round(naive / times["forwards"], 3),
    }


def bench_scan_by_layer() -> dict:
    """The layer x k matrix (every N = 0..L, every k = 1..L+1) vs (L+1) plain HF forwards, side by side.

    The floor: sum over N of N x (L - N) layer-passes plus one readout per patched cell (about
    7x the work of L+1 forwards on SmolLM2); a full hooked pass per cell would be about 15x.
    """
    model, hf, ids = _setup()
    token_ids = ids.tolist()
    n_forwards = model.n_layers + 1
    forwards = hf_forwards(hf, ids, n_forwards)
    warm_up(lambda: hf(ids), lambda: scan_by_layer(model, token_ids, ks=[1, 2]))  # a small matrix
    # One matrix between two blocks of forwards (forwards, matrix, forwards): drift on a shared
    # machine hits both sides alike, and the benchmark stays short (one matrix is ~7 blocks).
    times = paired_times({"forwards": forwards, "by_layer": lambda: scan_by_layer(model, token_ids)},
                         repeats=1, warmup=False)
    times["forwards"] += paired_times({"forwards": forwards}, repeats=1, warmup=False)["forwards"]
    times = {name: statistics.mean(values) for name, values in times.items()}
    return {
        "ratio": round(times["by_layer"] / times["forwards"], 3),
        "target": 7.5,
        "forwards": n_forwards,
        "forwards_s": round(times["forwards"], 3),
        "by_layer_s": round(times["by_layer"], 3),
    }
