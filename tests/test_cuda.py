"""The CUDA paths, for the day a GPU is lent (`make device-check`; every test here is marked ``cuda`` and
skips, saying why, where torch sees no CUDA device).

- The commands with ``--device cuda`` give the numbers of ``--device cpu`` on the tiny models
  (norms, patch, scan, truncate, attention, a sweep's report), within float32 tolerances.
- bfloat16 and float16 load on CUDA, stay close to float32, and the bundled model verifies in both.
- The memory plan's CUDA path (core/memory/budget.py): the automatic budget is a share of the free GPU
  memory, GPUs run long prompts whole, the cost model bounds each analysis's peak measured with
  ``torch.cuda.max_memory_allocated``, and a scan under ``--max-memory`` stays under it (position
  chunks, in a fresh process) with the numbers of the whole-prompt scan.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from horizon.core.memory import budget as B
from horizon.core.model.loader import LoadedModel, load_model

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."
RTOL, ATOL = 1e-3, 1e-4  # float32 on a GPU against float32 on a CPU: other kernels, other summation orders


def assert_same_numbers(cuda: object, cpu: object, path: str = "", rtol: float = RTOL, atol: float = ATOL) -> None:
    """Two JSON payloads hold the same structure, the same strings and integers, and close floats."""
    if isinstance(cpu, dict):
        assert isinstance(cuda, dict) and set(cuda) == set(cpu), (path, sorted(cuda), sorted(cpu))
        for key in cpu:
            if key == "memory":  # the plan: another device, another budget
                continue
            if key == "outliers":  # ranked by cosine: two close scores may swap places, not numbers
                cuda[key], cpu[key] = (sorted(rows, key=lambda r: (r["prompt"], r["pos"], r["length"], r["layer"]))
                                       for rows in (cuda[key], cpu[key]))
            assert_same_numbers(cuda[key], cpu[key], f"{path}.{key}", rtol, atol)
    elif isinstance(cpu, list):
        assert isinstance(cuda, list) and len(cuda) == len(cpu), (path, len(cuda), len(cpu))
        for index, (a, b) in enumerate(zip(cuda, cpu, strict=True)):
            assert_same_numbers(a, b, f"{path}[{index}]", rtol, atol)
    elif isinstance(cpu, float) and isinstance(cuda, float):
        assert math.isclose(cuda, cpu, rel_tol=rtol, abs_tol=atol) or (math.isnan(cuda) and math.isnan(cpu)), \
            f"{path}: cuda {cuda!r}, cpu {cpu!r}"
    else:
        assert cuda == cpu, f"{path}: cuda {cuda!r}, cpu {cpu!r}"


def cli_json(run_cli, *args: str) -> dict:
    code, out, err = run_cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


# ----------------------------------------------------------------------------- cuda equals cpu

COMMANDS = {
    "norms": (),
    "patch": ("--k", "1"),
    "scan": (),
    "truncate": ("--lengths", "1,2,5"),
    "attention": (),
}


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cuda_gives_the_cpu_numbers(run_cli, command: str, model: str) -> None:
    args = (command, "--model", model, "--prompt", PROMPT, *COMMANDS[command])
    cuda = cli_json(run_cli, *args, "--device", "cuda")
    cpu = cli_json(run_cli, *args, "--device", "cpu")
    assert_same_numbers(cuda, cpu)
    if command == "scan":  # the full horizon is the clean model on the GPU too
        assert abs(cuda["rows"][-1]["delta_loss"]) < 1e-5


def test_a_cuda_sweep_reports_the_cpu_numbers(run_cli, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"{PROMPT}\n\nRome is the capital of Italy.\n\nWater boils at one hundred degrees.\n")
    reports = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / device
        code, _, err = run_cli("sweep", str(corpus), "--model", "tiny-llama", "--device", device, "--out", str(out),
                               "--lengths", "1,2", "--quiet")
        assert code == 0, err
        reports[device] = cli_json(run_cli, "report", str(out))
    for analysis in ("norms", "truncate", "scan", "attention"):
        assert_same_numbers(reports["cuda"][analysis], reports["cpu"][analysis], analysis)


# ----------------------------------------------------------------------------- half precision


@pytest.mark.parametrize(("dtype", "rtol"), [("bfloat16", 5e-2), ("float16", 1e-2)])
def test_half_precision_loads_on_cuda_close_to_float32(run_cli, dtype: str, rtol: float) -> None:
    half = load_model("tiny-llama", device="cuda", dtype=dtype)
    weights = list(half.hf_model.parameters())
    assert {p.dtype for p in weights} == {getattr(torch, dtype)} and {p.device.type for p in weights} == {"cuda"}
    args = ("norms", "--model", "tiny-llama", "--prompt", PROMPT)
    low = cli_json(run_cli, *args, "--device", "cuda", "--dtype", dtype)
    full = cli_json(run_cli, *args, "--device", "cpu")
    for site in ("resid_pre", "resid_post"):
        for a, b in zip(low["sites"][site]["mean_norm"], full["sites"][site]["mean_norm"], strict=True):
            assert math.isclose(a, b, rel_tol=rtol), (site, a, b)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_bundled_model_verifies_on_cuda_in_half_precision(run_cli, dtype: str) -> None:
    payload = cli_json(run_cli, "verify", "--model", "smollm2-135m", "--device", "cuda", "--dtype", dtype)
    failed = [check for check in payload["checks"] if check["passed"] is False]
    assert payload["passed"] and payload["dtype"] == dtype and not failed, failed


# ----------------------------------------------------------------------------- the memory plan on CUDA


@pytest.fixture(scope="module")
def smol_cuda() -> LoadedModel:
    return load_model("smollm2-135m", device="cuda")


def test_the_automatic_cuda_budget_is_a_share_of_free_gpu_memory(smol_cuda: LoadedModel) -> None:
    dims = B.ModelDims.of(smol_cuda)
    budget = B.make_budget(None, dims, smol_cuda.device)
    free, _ = torch.cuda.mem_get_info(smol_cuda.device)
    assert not budget.on_cpu and "free GPU memory" in budget.source, budget.source
    assert budget.fixed >= dims.weight_bytes and budget.fixed >= torch.cuda.memory_allocated(smol_cuda.device)
    assert math.isclose(budget.total - budget.fixed, B.CUDA_FRACTION * free, rel_tol=0.05)
    # GPUs run long prompts whole (no CPU speed chunks) while the budget allows
    assert B.plan("scan", dims, [2048], budget).position_chunk is None
    assert B.plan("norms", dims, [2048], budget).position_chunk is None


def _ids(n_tokens: int) -> list[list[int]]:
    return [[1] + [(7 * i) % 40000 + 100 for i in range(n_tokens - 1)]]  # as tests/test_budget.py measures


@pytest.mark.slow
@pytest.mark.parametrize(("analysis", "tiling"), [("attention", {}), ("scan", {"rows": 2}), ("norms", {}),
                                                   ("truncate", {"windows": 64})])
def test_cost_model_bounds_the_measured_cuda_peak(smol_cuda: LoadedModel, analysis: str,
                                                  tiling: dict[str, int]) -> None:
    """What the cost model predicts is at least what the analysis adds to torch.cuda.max_memory_allocated,
    on the bundled model at 1024 tokens, and (its CPU heap slack aside) not wildly more."""
    from horizon.core.analyses.attention.engine import attention_distance
    from horizon.core.analyses.norms.engine import analyse_norms
    from horizon.core.analyses.scan.engine import scan
    from horizon.core.analyses.truncate.engine import analyse_truncation

    n_tokens, ids, device = 1024, _ids(1024), smol_cuda.device
    dims = B.ModelDims.of(smol_cuda)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    if analysis == "attention":
        attention_distance(smol_cuda, ids, True, batch_size=1)
    elif analysis == "norms":
        analyse_norms(smol_cuda, ids, True, batch_size=1)
    elif analysis == "truncate":
        analyse_truncation(smol_cuda, ids, [1, 5], batch_size=64, full_batch_size=1)
    else:
        scan(smol_cuda, ids, ks=[1, 2], batch_size=1, max_pass_bytes=B.row_bytes(dims, 1, n_tokens) * 2)
    torch.cuda.synchronize(device)
    used = torch.cuda.max_memory_allocated(device) - before
    predicted = B.peak_bytes(analysis, dims, 1, n_tokens, **tiling)
    print(f"{analysis}: measured {B.format_size(used)}, predicted {B.format_size(predicted)}")
    assert used <= predicted, f"{analysis}: measured {B.format_size(used)} > predicted {B.format_size(predicted)}"
    assert predicted - B.ALLOCATOR_SLACK <= 4 * used + (64 << 20), \
        f"{analysis}: predicted {B.format_size(predicted)} for {B.format_size(used)} measured"


MEASURED_SCAN = """
import json, sys
import torch
from horizon.tui.cli.app import main
code = main(sys.argv[1:])
sys.stderr.write(json.dumps({"code": code, "peak": torch.cuda.max_memory_allocated()}) + "\\n")
"""


@pytest.mark.slow
def test_a_scan_under_max_memory_stays_under_it_on_cuda(tmp_path: Path) -> None:
    """A 2048-token scan of the bundled model under --max-memory 2GB (in a fresh process: nothing
    else on the GPU) goes through position chunks, peaks under the budget and under the plan's
    prediction, and gives the whole-prompt scan's numbers."""
    from horizon.core.model.corpus import load_corpus

    prompt = tmp_path / "long.txt"
    prompt.write_text(" ".join(load_corpus(None).texts), encoding="utf-8")
    args = ["scan", "--model", "smollm2-135m", "--device", "cuda", "--file", str(prompt), "--max-tokens", "2048",
            "--ks", "1,2,8", "--json"]
    runs = {}
    for name, extra in (("budget", ["--max-memory", "2GB"]), ("whole", [])):
        done = subprocess.run([sys.executable, "-c", MEASURED_SCAN, *args, *extra], capture_output=True, text=True,
                              cwd=ROOT, timeout=600)
        measured = json.loads(done.stderr.strip().splitlines()[-1])
        assert measured["code"] == 0, done.stderr[-2000:]
        runs[name] = (json.loads(done.stdout), measured["peak"])
    (limited, peak), (whole, _) = runs["budget"], runs["whole"]
    memory = limited["memory"]
    print(f"peak {B.format_size(peak)}, predicted {B.format_size(memory['predicted_peak_bytes'])}, "
          f"budget {B.format_size(memory['max_memory_bytes'])}, chunk {memory.get('position_chunk')}")
    assert memory["max_memory_bytes"] == 2_000_000_000 and memory.get("position_chunk"), memory
    assert "position_chunk" not in whole["memory"], whole["memory"]
    assert peak <= memory["predicted_peak_bytes"] <= memory["max_memory_bytes"], (peak, memory)
    assert_same_numbers(limited["rows"], whole["rows"], "rows", rtol=1e-4, atol=1e-4)
