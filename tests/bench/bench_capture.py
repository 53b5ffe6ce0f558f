"""Capture pass vs a plain HF forward on the same 128-token prompt (issue 2)."""

from __future__ import annotations

from horizon.core.capture.capture import run_capture
from horizon.core.capture.decomposition import SITES
from horizon.core.model.gguf_files import cache_root
from horizon.core.model.loader import load_model

from tests.bench.timing import cold_load_seconds, interleaved, plain_hf_model, prompt_ids, warm_load_seconds


def bench_capture_all_sites() -> dict:
    model = load_model("smollm2-135m", device="cpu")
    baseline = plain_hf_model()
    ids = prompt_ids(128)
    times = interleaved(
        {
            "hf": lambda: baseline(ids),
            "capture": lambda: run_capture(model, ids, SITES, keep_logits=True),
        },
        repeats=7,
    )
    return {
        "ratio": round(times["capture"] / times["hf"], 3),
        "target": 1.3,
        "hf_s": round(times["hf"], 4),
        "capture_s": round(times["capture"], 4),
    }


def bench_load_warm() -> dict:
    """Warm load (weights cached) of the bundled model; ratio = seconds / 8 s budget."""
    seconds = warm_load_seconds("smollm2-135m")
    return {"ratio": round(seconds / 8.0, 3), "target": 1.0, "seconds": round(seconds, 2), "cache": str(cache_root())}


def bench_load_cold() -> dict:
    """Cold load (GGUF de-quantised into an empty cache) in a fresh process; budget 30 s."""
    seconds = cold_load_seconds("smollm2-135m")
    return {"ratio": round(seconds / 30.0, 3), "target": 1.0, "seconds": round(seconds, 2)}
