"""`horizon norms` engine vs a plain HF forward, and its peak memory on 50 prompts (issue 3)."""

from __future__ import annotations

import json
import subprocess
import sys

from horizon.core.loader import load_model
from horizon.core.norms import analyse_norms

from tests.bench.timing import interleaved, plain_hf_model, prompt_ids

MEMORY_SCRIPT = """
import json, resource, torch
from horizon.core.loader import load_model
from horizon.core.norms import analyse_norms
from tests.bench.timing import prompt_ids

torch.set_grad_enabled(False)
model = load_model("smollm2-135m", device="cpu")
after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
token_ids = [prompt_ids(128, seed=seed)[0].tolist() for seed in range(50)]
report = analyse_norms(model, token_ids, has_bos=True, batch_size=8)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"after_load_kb": after_load, "peak_kb": peak, "rate": report.growth.rate}))
"""


def bench_norms_forward_128() -> dict:
    """analyse_norms (capture + norms + aggregates + fit) on 128 tokens vs a plain HF forward."""
    model = load_model("smollm2-135m", device="cpu")
    baseline = plain_hf_model()
    ids = prompt_ids(128)
    token_ids = ids.tolist()
    times = interleaved(
        {
            "hf": lambda: baseline(ids),
            "norms": lambda: analyse_norms(model, token_ids, has_bos=True),
        },
        repeats=9,
    )
    return {"ratio": round(times["norms"] / times["hf"], 3), "target": 1.3,
            "hf_s": round(times["hf"], 4), "norms_s": round(times["norms"], 4)}


def bench_norms_memory_50_prompts() -> dict:
    """Peak resident memory of a fresh process running 50 prompts x 128 tokens; budget 2 GB."""
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], check=True, capture_output=True, text=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    peak_gb = data["peak_kb"] / 1024**2  # ru_maxrss is in KiB on Linux
    return {"ratio": round(peak_gb / 2.0, 3), "target": 1.0, "peak_gb": round(peak_gb, 3),
            "after_load_gb": round(data["after_load_kb"] / 1024**2, 3)}
