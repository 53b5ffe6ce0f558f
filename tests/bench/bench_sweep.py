"""Sweep throughput on the bundled corpus vs the same analysis run prompt by prompt (issue 6).

For each analysis, side by side in one run on the bundled model:
- ``sweep``: ``run_sweep`` over the first prompts of the bundled corpus into a fresh results
  directory (tokenising, the analysis, Parquet writes, manifest updates; for truncate also the
  corpus-mean pass), with the model already loaded;
- ``per_prompt``: what the single-prompt command does for each prompt, one call per prompt
  (the engine function on one prompt, model already loaded: the CLI's model load is left out,
  which favours the baseline).

ratio = sweep seconds / per-prompt seconds (below 1: the sweep is faster). Tokens/s of both are
reported. No target: the issue asks for the ratio to be printed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from horizon.core.corpus import load_corpus, tokenize_corpus
from horizon.core.loader import load_model
from horizon.core.sweep import SweepSettings, run_sweep

_MODEL = None


def _model():
    global _MODEL
    if _MODEL is None:
        _MODEL = load_model("smollm2-135m", device="cpu")
    return _MODEL


def _compare(analysis: str, n_prompts: int, per_prompt: Callable[[list[int]], object], repeats: int = 2,
             **settings) -> dict:
    model = _model()
    corpus = load_corpus(None, max_prompts=n_prompts)
    token_ids = tokenize_corpus(model, corpus)
    n_tokens = sum(len(ids) for ids in token_ids)
    scratch = Path(tempfile.mkdtemp(prefix="bench-sweep-"))

    def sweep_once() -> None:
        out = scratch / "results"
        shutil.rmtree(out, ignore_errors=True)
        run_sweep(corpus, out, model, SweepSettings(analyses=[analysis], **settings), device="cpu")

    def baseline_once() -> None:
        with torch.inference_mode():
            for ids in token_ids:
                per_prompt(ids)

    times: dict[str, list[float]] = {"sweep": [], "per_prompt": []}
    try:
        for _ in range(repeats):  # alternated, so drift and the other engineers' load hit both alike
            for name, function in (("per_prompt", baseline_once), ("sweep", sweep_once)):
                started = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sweep_s, baseline_s = min(times["sweep"]), min(times["per_prompt"])
    return {
        "ratio": round(sweep_s / baseline_s, 3), "target": None, "prompts": n_prompts, "tokens": n_tokens,
        "sweep_s": round(sweep_s, 2), "per_prompt_s": round(baseline_s, 2),
        "sweep_tok_s": round(n_tokens / sweep_s, 1), "per_prompt_tok_s": round(n_tokens / baseline_s, 1),
    }


def bench_sweep_norms() -> dict:
    from horizon.core.norms import analyse_norms

    return _compare("norms", 16, lambda ids: analyse_norms(_model(), [ids], True))


def bench_sweep_truncate() -> dict:
    from horizon.core.truncation import analyse_truncation

    return _compare("truncate", 8, lambda ids: analyse_truncation(_model(), [ids]), repeats=1)


def bench_sweep_scan() -> dict:
    from horizon.core.horizon import scan

    ks = [1, 2, 4, 8, 16, 31]
    return _compare("scan", 4, lambda ids: scan(_model(), [ids], ks=ks), repeats=1, ks=ks)


def bench_sweep_attention() -> dict:
    from horizon.core.attention import attention_distance

    return _compare("attention", 16, lambda ids: attention_distance(_model(), [ids], True))
