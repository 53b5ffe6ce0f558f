"""Truncation analysis vs a plain batched HF forward over the same tokens (issue 5).

The analysis of one 128-token prompt at lengths 1, 5, 10 (mu, full-context residuals, every
truncated prompt, summaries, outliers) against plain HF forwards of exactly the same batches:
the full prompt once, then the truncated prompts of each length in batches of 32. The ratio
against a per-token loop (same hooks, one forward per truncated prompt) is reported too.
"""

from __future__ import annotations

import time

import torch
from horizon.core.analyses.truncate.engine import analyse_truncation, residual_rows, truncation_windows
from horizon.core.model.loader import load_model

from tests.bench.timing import interleaved, plain_hf_model, prompt_ids

LENGTHS = (1, 5, 10)
BATCH = 32
# The per-token loop (only reported, about 7x the analysis) runs every sixth truncated prompt of
# each length and is scaled to all of them: each forward costs the same within a length, and this
# saves about 40 s of ``make bench``.
LOOP_STRIDE = 6


def bench_truncate_vs_hf() -> dict:
    model = load_model("smollm2-135m", device="cpu")
    baseline = plain_hf_model()
    full = prompt_ids(128)
    token_ids = full.tolist()
    windows = [truncation_windows(token_ids, c)[2] for c in LENGTHS]
    n_windows = sum(len(w) for w in windows)

    def hf_batched() -> None:
        baseline(full)
        for tensor in windows:
            for start in range(0, len(tensor), BATCH):
                baseline(tensor[start : start + BATCH])

    def analysis() -> None:
        analyse_truncation(model, token_ids, LENGTHS, batch_size=BATCH)

    def per_token_loop() -> None:
        # The naive engine: the same hooks and full-prompt pass, but one forward per truncated
        # prompt; every LOOP_STRIDE-th one of each length is run (scaled below), see the docstring.
        residual_rows(model, full, lambda activation: activation[:, -1])
        for tensor in windows:
            for row in tensor[::LOOP_STRIDE]:
                residual_rows(model, row[None], lambda activation: activation[:, -1])

    times = interleaved({"hf": hf_batched, "analysis": analysis}, repeats=3)
    # The loop is ~10x slower and only reported: timed once, right after the side-by-side pair.
    started = time.perf_counter()
    with torch.inference_mode():
        per_token_loop()
    run = sum(len(w[::LOOP_STRIDE]) for w in windows)
    times["loop"] = (time.perf_counter() - started) * n_windows / run  # the loop's time over every window
    return {
        "ratio": round(times["analysis"] / times["hf"], 3),
        "target": 1.5,
        "loop_over_analysis": round(times["loop"] / times["analysis"], 2),
        "hf_s": round(times["hf"], 3),
        "analysis_s": round(times["analysis"], 3),
        "loop_s": round(times["loop"], 3),
        "truncated_prompts": n_windows,
        "tokens": sum(w.numel() for w in windows) + full.numel(),
    }


def bench_truncate_attention_vs_hf() -> dict:
    """Attention-distance pass (streamed per-layer reduction) vs a plain HF forward, 128 tokens; reported only."""
    from horizon.core.analyses.attention.engine import attention_distance

    model = load_model("smollm2-135m", device="cpu")
    baseline = plain_hf_model()
    full = prompt_ids(128)
    times = interleaved(
        {"hf": lambda: baseline(full), "attention": lambda: attention_distance(model, full.tolist(), True)},
        repeats=3,
    )
    return {"ratio": round(times["attention"] / times["hf"], 3), "target": None,
            "hf_s": round(times["hf"], 4), "attention_s": round(times["attention"], 4)}


if __name__ == "__main__":  # pragma: no cover
    print(bench_truncate_attention_vs_hf(), flush=True)
    print(bench_truncate_vs_hf(), flush=True)
