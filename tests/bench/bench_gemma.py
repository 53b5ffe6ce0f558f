"""The second bundled model, Gemma 3 270M: patch and scan vs plain HF forwards, cold and warm load.

Its 262,144-token vocabulary at d_model 640 makes the readout a larger share of every pass than
on SmolLM2, so the bars are patch <= 1.3x one forward and scan <= 0.75x of L+1 forwards. Every
ratio is measured side by side in one run (the two sides alternate).
"""

from __future__ import annotations

import torch
from horizon.core.model.loader import GEMMA_MODEL, load_model

from tests.bench.timing import cold_load_seconds, patch_pass, scan_vs_forwards, warm_load_seconds

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
    return patch_pass(*_setup())


def bench_scan_full_gemma3() -> dict:
    """Full scan (k = 1..L+1 = 19, S = 0) vs 19 plain HF forwards run back to back, Gemma 3 270M.

    Two rounds, not three: the ratio (0.54-0.73 against 0.75) is stable, and a round costs ~20 s
    of ``make bench``.
    """
    return scan_vs_forwards(*_setup(), 0.75, repeats=2)[0]


def bench_load_warm_gemma3() -> dict:
    """Warm load (assembled file, float weights and quick verdict cached); ratio = seconds / 8 s."""
    seconds = warm_load_seconds(GEMMA_MODEL)
    return {"ratio": round(seconds / 8.0, 3), "target": 1.0, "load_s": round(seconds, 2)}


def bench_load_cold_gemma3() -> dict:
    """Cold load in a fresh process and an empty cache: join the chunks, de-quantise, boot; budget 45 s."""
    seconds = cold_load_seconds(GEMMA_MODEL)
    return {"ratio": round(seconds / 45.0, 3), "target": 1.0, "load_s": round(seconds, 2)}
