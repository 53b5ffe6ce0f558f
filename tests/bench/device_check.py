"""`make device-check`'s benchmarks: the headline ratios of `make bench`, quick, on the best device here.

The same measurements as tests/bench/ (the bundled model, a 128-token prompt, the sides alternating
in each round) with fewer rounds, so that the whole check takes a few minutes of a lent GPU:

- ``capture_all_sites``: a capture pass of every site vs a plain HF forward (bar 1.3x);
- ``patch_pass``: one patched pass vs a plain HF forward (bar 1.3x);
- ``scan_full``: the scan k = 1..L+1 vs L+1 plain forwards (bar 0.6x);
- ``truncate_vs_hf``: truncation at c = 1, 5, 10 vs plain batched forwards over the same tokens (bar 1.5x);
- ``sweep_batched_vs_sequential``: a sweep of 8 prompts (norms, scan, attention) with automatic
  batches vs batch 1 (bar 1.0).

On CUDA every timed call ends with ``torch.cuda.synchronize`` (a kernel launch returns before the
work is done). Without CUDA the same code runs on the CPU with a smaller setting (32-token prompts,
a sweep of 2 prompts: CPU numbers are `make bench`'s), so the check is known to run before a GPU
day. Writes bench-results.json with the device and the setting named; the bars are the CPU's, so a
ratio over its bar is reported, not failed (exit 1 only when a benchmark cannot run).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# (prompt tokens, sweep prompts, the sweep's --max-tokens): make bench's setting on a GPU, a smaller one on a CPU
SETTINGS = {"cuda": (128, 8, None), "cpu": (32, 2, 32)}


def describe_device(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {"device": str(device), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_bytes=props.total_memory, cuda=torch.version.cuda,
                    capability=f"{props.major}.{props.minor}")
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def synced(device: torch.device, function: Callable[[], object]) -> Callable[[], object]:
    """``function`` that returns only once the device has finished its work."""
    if device.type != "cuda":
        return function

    def run() -> object:
        result = function()
        torch.cuda.synchronize(device)
        return result

    return run


def ratio_result(times: dict[str, float], measured: str, baseline: str, target: float) -> dict[str, object]:
    return {"ratio": round(times[measured] / times[baseline], 3), "target": target,
            **{f"{name}_s": round(seconds, 4) for name, seconds in times.items()}}


def main() -> int:
    from horizon.core.analyses.scan.engine import scan
    from horizon.core.analyses.truncate.engine import analyse_truncation, truncation_windows
    from horizon.core.capture.capture import run_capture
    from horizon.core.capture.decomposition import SITES
    from horizon.core.model.corpus import load_corpus
    from horizon.core.model.loader import load_model
    from horizon.core.model.prompts import make_batch
    from horizon.core.patching.horizon import HorizonConfig, clean_run, patched_logits
    from horizon.core.sweep.sweep import SweepSettings, run_sweep
    from transformers.utils import logging as transformers_logging

    from tests.bench.timing import hf_forwards, interleaved, plain_hf_model, prompt_ids, warm_up

    transformers_logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_tokens, n_prompts, sweep_tokens = SETTINGS[device.type]
    started = time.perf_counter()
    info = {**describe_device(device), "prompt_tokens": n_tokens, "sweep_prompts": n_prompts}
    print(f"device-check benchmarks on {info['device']} ({info['name']}), the bundled model, {n_tokens}-token "
          f"prompts, a sweep of {n_prompts}", flush=True)
    model = load_model("smollm2-135m", device=str(device))
    hf = plain_hf_model().to(device)
    ids = prompt_ids(n_tokens).to(device)
    token_ids = ids.tolist()

    def capture() -> dict[str, object]:
        times = interleaved({"hf": synced(device, lambda: hf(ids)),
                             "capture": synced(device, lambda: run_capture(model, ids, SITES, keep_logits=True))},
                            repeats=3)
        return ratio_result(times, "capture", "hf", 1.3)

    def patch() -> dict[str, object]:
        clean = clean_run(model, make_batch(token_ids, 0, True, model.device))
        config = HorizonConfig.from_layers(1)
        times = interleaved({"hf": synced(device, lambda: hf(ids)),
                             "patched": synced(device, lambda: list(patched_logits(model, clean, [config])))},
                            repeats=3)
        return ratio_result(times, "patched", "hf", 1.3)

    def scan_full() -> dict[str, object]:
        forwards = synced(device, hf_forwards(hf, ids, model.n_layers + 1))
        whole = synced(device, lambda: scan(model, token_ids))
        warm_up(lambda: hf(ids), lambda: scan(model, token_ids, ks=[1, model.n_layers]))
        times = interleaved({"forwards": forwards, "scan": whole}, repeats=1, warmup=False)
        return {**ratio_result(times, "scan", "forwards", 0.6), "forwards": model.n_layers + 1}

    def truncate() -> dict[str, object]:
        lengths = (1, 5, 10)
        windows = [truncation_windows(token_ids, c)[2].to(device) for c in lengths]

        def hf_batched() -> None:
            hf(ids)
            for tensor in windows:
                for start in range(0, len(tensor), 32):
                    hf(tensor[start : start + 32])

        times = interleaved({"hf": synced(device, hf_batched),
                             "analysis": synced(device, lambda: analyse_truncation(model, token_ids, lengths,
                                                                                   batch_size=32))},
                            repeats=1)
        return ratio_result(times, "analysis", "hf", 1.5)

    def sweep_batched() -> dict[str, object]:
        corpus = load_corpus(None, max_prompts=n_prompts)
        scratch = Path(tempfile.mkdtemp(prefix="device-check-sweep-"))
        settings = SweepSettings(analyses=["norms", "scan", "attention"], ks=[1, 2, 4, 8, 16, 31],
                                 max_tokens=sweep_tokens)

        def timed(batch_size: int | None) -> float:
            shutil.rmtree(scratch / "results", ignore_errors=True)
            begin = time.perf_counter()
            run_sweep(corpus, scratch / "results", model, settings, device=str(device), batch_size=batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - begin

        try:
            timed(None)  # warm-up
            times = {"sequential": timed(1), "batched": timed(None)}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return {**ratio_result(times, "batched", "sequential", 1.0), "prompts": len(corpus)}

    results: dict[str, object] = {"device": info}
    broken = 0
    for name, benchmark in (("capture_all_sites", capture), ("patch_pass", patch), ("scan_full", scan_full),
                            ("truncate_vs_hf", truncate), ("sweep_batched_vs_sequential", sweep_batched)):
        begin = time.perf_counter()
        try:
            result = benchmark()
        except Exception as exc:  # one broken benchmark is reported; the others still run
            traceback.print_exc()
            result, broken = {"ratio": None, "target": None, "error": f"{type(exc).__name__}: {exc}"}, broken + 1
        result["seconds"] = round(time.perf_counter() - begin, 2)
        result["device"] = info["device"]
        results[name] = result
        ratio, target = result.get("ratio"), result.get("target")
        verdict = "error" if ratio is None else "within" if ratio <= target else "over"
        print(f"  {name}: {ratio} (bar {target}, {verdict}) in {result['seconds']} s", flush=True)
    (ROOT / "bench-results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {ROOT / 'bench-results.json'} ({time.perf_counter() - started:.0f} s)")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
