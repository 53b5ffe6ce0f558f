"""Side-by-side timing helpers for the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def best_of(function: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``function`` in seconds, after warm-up runs."""
    with torch.inference_mode():
        for _ in range(warmup):
            function()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def paired_times(
    functions: dict[str, Callable[[], object]], repeats: int = 5, warmup: bool = True
) -> dict[str, list[float]]:
    """Every function once per round, in alternation (after a warm-up round): the raw seconds.

    Alternating means load drift on a shared machine hits every function alike.
    """
    times: dict[str, list[float]] = {name: [] for name in functions}
    with torch.inference_mode():
        if warmup:
            for function in functions.values():
                function()
        for _ in range(repeats):
            for name, function in functions.items():
                started = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - started)
    return times


def interleaved(functions: dict[str, Callable[[], object]], repeats: int = 5, warmup: bool = True) -> dict[str, float]:
    """Median seconds of several functions measured in alternation."""
    times = paired_times(functions, repeats, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


def plain_hf_model(spec: str = "smollm2-135m"):
    """An HF model for the baseline, not booted into a bridge (the bridge wraps modules in place)."""
    from horizon.core.loader import bundled_gguf_path, gguf_cache_dir
    from transformers import AutoModelForCausalLM

    if spec != "smollm2-135m":
        raise ValueError("benchmarks use the bundled model")
    return AutoModelForCausalLM.from_pretrained(
        str(gguf_cache_dir(bundled_gguf_path())), dtype=torch.float32, attn_implementation="eager"
    ).eval()


def prompt_ids(n_tokens: int = 128, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Real text tokens from the bundled tokenizer, BOS first, exactly n_tokens long."""
    from horizon.core.loader import BUNDLED_BOS, bundled_tokenizer
    from horizon.tui.cli.common import DEFAULT_PROMPT

    tokenizer = bundled_tokenizer()
    text = (DEFAULT_PROMPT + " ") * 8
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.convert_tokens_to_ids(BUNDLED_BOS)
    rows = [[bos, *ids[seed + row : seed + row + n_tokens - 1]] for row in range(batch)]
    return torch.tensor(rows, dtype=torch.long)
