"""The second bundled model, Gemma 3 270M: patch and scan vs plain HF forwards, cold and warm load.

Its 262,144-token vocabulary at d_model 640 makes the readout a larger share of every pass than
on SmolLM2, so the bars are patch <= 1.3x one forward and scan <= 0.75x of L+1 forwards. Every
ratio is measured side by side in one run (the two sides alternate).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import torch
from horizon.core.horizon import HorizonConfig, clean_run, patched_logits, scan
from horizon.core.loader import GEMMA_MODEL, load_model
from horizon.core.prompts import make_batch

from tests.bench.timing import interleaved

_cache: dict[str, object] = {}


def _setup() -> tuple:
    if not _cache:
        from transformers import AutoModelForCausalLM

        model = load_model(GEMMA_MODEL, device="cpu")
        _cache["model"] = model
        # The baseline: the same weights, not booted into a bridge (the bridge wraps modules in place).
        _cache["hf"] = AutoModelForCausalLM.from_pretrained(
            model.extra["reload"], dtype=torch.float32, attn_implementation="eager"
        ).eval()
        _cache["ids"] = _prompt_ids(model, 128)
    return _cache["model"], _cache["hf"], _cache["ids"]


def _prompt_ids(model, n_tokens: int) -> torch.Tensor:
    from horizon.tui.cli.common import DEFAULT_PROMPT

    ids = model.tokenizer((DEFAULT_PROMPT + " ") * 8, add_special_tokens=False)["input_ids"]
    return torch.tensor([[model.bos_token_id(), *ids[: n_tokens - 1]]], dtype=torch.long)


def bench_patch_pass_gemma3() -> dict:
    """One patched pass (k = 1, S = 0) vs one plain HF forward of Gemma 3 270M, 128 tokens."""
    model, hf, ids = _setup()
    clean = clean_run(model, make_batch(ids.tolist(), 0, True, model.device))
    config = HorizonConfig.from_layers(1)
    times = interleaved(
        {"hf": lambda: hf(ids), "patched": lambda: list(patched_logits(model, clean, [config]))}, repeats=5
    )
    return {
        "ratio": round(times["patched"] / times["hf"], 3),
        "target": 1.3,
        "hf_s": round(times["hf"], 4),
        "patched_s": round(times["patched"], 4),
    }


def bench_scan_full_gemma3() -> dict:
    """Full scan (k = 1..L+1 = 19, S = 0) vs 19 plain HF forwards run back to back, Gemma 3 270M."""
    model, hf, ids = _setup()
    token_ids = ids.tolist()
    n_forwards = model.n_layers + 1

    def forwards() -> None:
        for _ in range(n_forwards):
            hf(ids)

    with torch.inference_mode():  # warm-up
        hf(ids)
        scan(model, token_ids, ks=[1, model.n_layers])
    times = interleaved({"forwards": forwards, "scan": lambda: scan(model, token_ids)}, repeats=3, warmup=False)
    return {
        "ratio": round(times["scan"] / times["forwards"], 3),
        "target": 0.75,
        "forwards": n_forwards,
        "forwards_s": round(times["forwards"], 3),
        "scan_s": round(times["scan"], 3),
    }


def bench_load_warm_gemma3() -> dict:
    """Warm load (assembled file, float weights and quick verdict cached); ratio = seconds / 8 s."""
    load_model(GEMMA_MODEL, device="cpu")  # makes sure the cache exists
    started = time.perf_counter()
    load_model(GEMMA_MODEL, device="cpu")
    seconds = time.perf_counter() - started
    return {"ratio": round(seconds / 8.0, 3), "target": 1.0, "load_s": round(seconds, 2)}


def bench_load_cold_gemma3() -> dict:
    """Cold load in a fresh process and an empty cache: join the chunks, de-quantise, boot; budget 45 s."""
    with tempfile.TemporaryDirectory() as empty_cache:
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"from horizon.core.loader import load_model; load_model({GEMMA_MODEL!r}, device='cpu')",
            ],
            check=True,
            env={**os.environ, "XDG_CACHE_HOME": empty_cache},
        )
        seconds = time.perf_counter() - started
    return {"ratio": round(seconds / 45.0, 3), "target": 1.0, "load_s": round(seconds, 2)}
