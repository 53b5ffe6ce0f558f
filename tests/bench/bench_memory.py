"""Peak memory of each analysis on a 2048-token prompt under `--max-memory 2GB` (issue 16).

Each measurement runs in a fresh interpreter (VmHWM is the process's own high-water mark): load
the bundled model, plan the run with core/memory/budget.py under a 2 GB budget, run the real analysis
with the planned batch and tiles, and report VmHWM / 2 GB (target <= 1.0). The prompt is the
bundled corpus (core/data/corpus.jsonl) concatenated and cut to 2048 tokens, BOS first.

A run the plan refuses reports the refusal and its numbers, and runs once more under the budget
the plan asks for, so its real peak is still measured (ratio = that peak / 2 GB). The scan fits:
its whole-prompt run would need 4.9 GB, so the plan goes through the prompt in position chunks
(core/patching/horizon.py ChunkedClean; ``position_chunk`` in the result). Only k = 1, 2 are scanned (two
staircase rows), to stay fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUDGET = "2GB"
N_TOKENS = 2048
SCAN_KS = (1, 2)

SCRIPT = """
import json, sys
import torch
from horizon.core.memory import budget as B
from horizon.core.errors import HorizonError
from horizon.core.model.loader import load_model
from tests.bench.bench_memory import corpus_prompt

analysis, max_memory, n_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
ks = [int(k) for k in sys.argv[4].split(",")]
torch.set_grad_enabled(False)
model = load_model("smollm2-135m", device="cpu")
ids = [corpus_prompt(model, n_tokens)]
dims = B.ModelDims.of(model)

def run(max_memory):
    plan = B.plan(analysis, dims, [len(ids[0])], B.make_budget(B.parse_size(max_memory), dims, "cpu"))
    if analysis == "norms":
        from horizon.core.analyses.norms.engine import analyse_norms
        analyse_norms(model, ids, True, batch_size=plan.batch_size)
    elif analysis == "attention":
        from horizon.core.analyses.attention.engine import attention_distance
        attention_distance(model, ids, True, batch_size=plan.batch_size)
    elif analysis == "truncate":
        from horizon.core.analyses.truncate.engine import analyse_truncation
        analyse_truncation(model, ids, [1], batch_size=plan.tiling["windows"], full_batch_size=plan.batch_size)
    else:
        import horizon.core.patching.horizon as H
        from horizon.core.analyses.scan.engine import scan
        cleans = H.clean_runs(model, ids, plan.batch_size, keep_bytes=plan.keep_clean_bytes,
                              position_chunk=plan.position_chunk)
        scan(model, ids, ks=ks, batch_size=plan.batch_size, max_pass_bytes=plan.pass_bytes, cleans=cleans)
    return plan

out = {}
try:
    plan = run(max_memory)
except HorizonError as refused:
    out["refused"] = str(refused)
    need = B.fixed_bytes(dims, "cpu") + B.peak_bytes(analysis, dims, 1, n_tokens, rows=len(ks),
                                                     vocab_tile=B.readout_tile(1, n_tokens))
    out["planned_need_bytes"] = need
    plan = run(str(need))  # measure the real peak under the budget the plan asks for
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        out["vmhwm_bytes"] = int(line.split()[1]) * 1024
out["predicted_peak_bytes"] = plan.peak_bytes
out["batch_size"] = plan.batch_size
out.update({key: value for key, value in plan.tiling.items()})
print(json.dumps(out))
"""


def corpus_prompt(model, n_tokens: int) -> list[int]:
    """BOS then the bundled corpus's texts, concatenated (repeated as needed), cut to n_tokens."""
    texts = [json.loads(line)["text"] for line in (ROOT / "core" / "data" / "corpus.jsonl").read_text().splitlines()
             if line.strip()]
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += list(model.tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"])
    return [model.bos_token_id(None), *ids[: n_tokens - 1]]


def _measure(analysis: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, analysis, BUDGET, str(N_TOKENS),
                           ",".join(map(str, SCAN_KS))], capture_output=True,
                          text=True, cwd=ROOT, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    budget = 2 * 10**9
    result = {
        "ratio": round(out["vmhwm_bytes"] / budget, 3),
        "target": 1.0,
        "vmhwm_gb": round(out["vmhwm_bytes"] / 1e9, 3),
        "predicted_gb": round(out["predicted_peak_bytes"] / 1e9, 3),
        "batch_size": out["batch_size"],
        **{key: out[key] for key in ("rows", "windows", "vocab_tile", "position_chunk") if key in out},
    }
    if "refused" in out:
        result["refused_at_2GB"] = True
        result["planned_need_gb"] = round(out["planned_need_bytes"] / 1e9, 3)
    return result


def bench_memory_scan_2048() -> dict:
    return {**_measure("scan"), "ks": ",".join(map(str, SCAN_KS))}


def bench_memory_truncate_2048() -> dict:
    return {**_measure("truncate"), "lengths": "1"}


def bench_memory_attention_2048() -> dict:
    return _measure("attention")
