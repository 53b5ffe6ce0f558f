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
    from horizon.core.model.gguf_files import bundled_gguf_path, gguf_cache_dir
    from transformers import AutoModelForCausalLM

    if spec != "smollm2-135m":
        raise ValueError("benchmarks use the bundled model")
    return AutoModelForCausalLM.from_pretrained(
        str(gguf_cache_dir(bundled_gguf_path())), dtype=torch.float32, attn_implementation="eager"
    ).eval()


def prompt_ids(n_tokens: int = 128, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Real text tokens from the bundled tokenizer, BOS first, exactly n_tokens long."""
    from horizon.core.model.loader import BUNDLED_BOS, bundled_tokenizer
    from horizon.tui.cli.common import DEFAULT_PROMPT

    tokenizer = bundled_tokenizer()
    text = (DEFAULT_PROMPT + " ") * 8
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.convert_tokens_to_ids(BUNDLED_BOS)
    rows = [[bos, *ids[seed + row : seed + row + n_tokens - 1]] for row in range(batch)]
    return torch.tensor(rows, dtype=torch.long)


def hf_forwards(hf, ids: torch.Tensor, n: int) -> Callable[[], None]:
    """``n`` plain HF forwards back to back: the baseline block a scan is measured against."""

    def forwards() -> None:
        for _ in range(n):
            hf(ids)

    return forwards


def warm_up(*functions: Callable[[], object]) -> None:
    """One call of each function, in order, before a measurement that runs with ``warmup=False``."""
    with torch.inference_mode():
        for function in functions:
            function()


def patch_pass(model, hf, ids: torch.Tensor) -> dict:
    """One patched pass (k = 1, S = 0) vs one plain HF forward, side by side; target 1.3x."""
    from horizon.core.model.prompts import make_batch
    from horizon.core.patching.horizon import HorizonConfig, clean_run, patched_logits

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


def scan_vs_forwards(
    model,
    hf,
    ids: torch.Tensor,
    target: float,
    others: dict[str, Callable[[], object]] | None = None,
    warm: tuple[Callable[[], object], ...] = (),
    repeats: int = 3,
) -> tuple[dict, dict[str, float]]:
    """Full scan (k = 1..L+1, S = 0) vs (L+1) plain HF forwards as one timed block, in alternation.

    ``others`` are timed in the same rounds after the scan, ``warm`` runs after the standard warm-up
    (one forward, a two-k scan). Returns the result dict and the median seconds by name.
    """
    from horizon.core.analyses.scan.engine import scan

    token_ids = ids.tolist()
    n_forwards = model.n_layers + 1
    warm_up(lambda: hf(ids), lambda: scan(model, token_ids, ks=[1, model.n_layers]), *warm)
    functions = {"forwards": hf_forwards(hf, ids, n_forwards), "scan": lambda: scan(model, token_ids), **(others or {})}
    times = interleaved(functions, repeats=repeats, warmup=False)
    result = {
        "ratio": round(times["scan"] / times["forwards"], 3),
        "target": target,
        "forwards": n_forwards,
        "forwards_s": round(times["forwards"], 3),
        "scan_s": round(times["scan"], 3),
    }
    return result, times


def warm_load_seconds(spec: str) -> float:
    """Seconds of a warm ``load_model(spec)`` (one load first makes sure the cache exists)."""
    from horizon.core.model.loader import load_model

    load_model(spec, device="cpu")
    started = time.perf_counter()
    load_model(spec, device="cpu")
    return time.perf_counter() - started


def cold_load_seconds(spec: str) -> float:
    """Seconds of ``load_model(spec)`` in a fresh process with an empty cache."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as empty_cache:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "from horizon.core.model.loader import load_model; "
             f"load_model({spec!r}, device='cpu')"],
            check=True,
            env={**os.environ, "XDG_CACHE_HOME": empty_cache},
        )
        return time.perf_counter() - started
