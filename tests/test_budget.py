"""Memory budgets (core/memory/budget.py): sizes, the cost model, batch and tile sizes, refusals, and the hot loops.

The cost model is checked against a measured peak (VmHWM of a fresh subprocess, reset before the
analysis), the batch sizes against the budget's direction, and the tiled/batched results against
untiled ones (to float tolerance). The hot-loop test counts host syncs (``.item()``, ``.cpu()``,
``.tolist()``, ``bool(tensor)`` ...) and asserts they do not grow with the number of layers,
staircase rows, vocabulary tiles or truncation batches.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from horizon.core.analyses.attention.engine import attention_distance
from horizon.core.analyses.norms.engine import analyse_norms
from horizon.core.analyses.scan import staircase_rows
from horizon.core.analyses.scan.engine import scan
from horizon.core.analyses.truncate import truncation_windows
from horizon.core.analyses.truncate.engine import analyse_truncation
from horizon.core.errors import HorizonError
from horizon.core.memory import budget as B
from horizon.core.model.loader import LoadedModel, load_model
from horizon.core.options import check_batch_size_text, check_max_memory
from horizon.core.patching import horizon as H

ROOT = Path(__file__).resolve().parents[1]
SMOL = B.ModelDims(n_layers=30, d_model=576, n_heads=9, d_mlp=1536, vocab=49152, element_bytes=4,
                   weight_bytes=540_000_000)
PROMPTS = [[1, *range(5, 45)], [1, *range(60, 80)], [1, *range(100, 131)]]


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(("text", "expected"), [
    ("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5G", int(1.5 * 2**30)), ("1kb", 1000), (" 3 GiB ", 3 * 2**30),
    ("4096", 4096), ("10M", 10 * 2**20), ("auto", None), ("AUTO", None), (".5TB", 5 * 10**11),
])
def test_parse_size(text: str, expected: int | None) -> None:
    assert B.parse_size(text) == expected
    assert check_max_memory(text) == expected


@pytest.mark.parametrize("text", ["nonsense", "", "-1GB", "0", "0.0001", "2XB", "GiB", "1iB", "2 G B", "1e9"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(HorizonError) as error:
        B.parse_size(text)
    message = str(error.value)
    assert "--max-memory" in message and "\n" not in message


def test_batch_size_option() -> None:
    assert check_batch_size_text("auto") is None
    assert check_batch_size_text("4") == 4
    for bad in ("0", "-2", "four", "1.5"):
        with pytest.raises(HorizonError, match="--batch-size"):
            check_batch_size_text(bad)


def test_format_size_round_trips_roughly() -> None:
    for n in (999, 12_345, 5 * 10**8, 2 * 10**9, 3 * 10**12):
        text = B.format_size(n)
        assert abs(B.parse_size(text.replace(" ", "")) - n) <= 0.01 * n


# ----------------------------------------------------------------------------- the cost model and its choices


def _budget(total: float) -> B.Budget:
    return B.Budget(total=int(total), fixed=SMOL.weight_bytes + B.RUNTIME_BYTES, source="test")


@pytest.mark.parametrize("analysis", B.ANALYSES)
def test_batch_size_follows_the_budget(analysis: str) -> None:
    budgets = [3e9, 6e9, 12e9, 48e9]
    chosen = [B.choose_batch_size(analysis, SMOL, 512, _budget(total), n_prompts=64) for total in budgets]
    assert chosen == sorted(chosen)  # more memory never means a smaller batch
    assert chosen[-1] > chosen[0]
    for total, batch in zip(budgets, chosen, strict=True):
        budget = _budget(total)
        assert budget.fixed + B.peak_bytes(analysis, SMOL, batch, 512) <= budget.total
        if batch < 64:  # the next batch would not have fitted
            assert budget.fixed + B.peak_bytes(analysis, SMOL, batch + 1, 512) > budget.total


def test_costs_grow_with_every_size() -> None:
    for analysis in B.ANALYSES:
        base = B.peak_bytes(analysis, SMOL, 2, 256)
        assert B.peak_bytes(analysis, SMOL, 4, 256) > base
        assert B.peak_bytes(analysis, SMOL, 2, 512) > base
    # attention is quadratic in T; norms linear
    attention = [B.costs("attention", SMOL, 1, t)["attention"] for t in (512, 1024)]
    assert attention[1] == 4 * attention[0]
    assert B.peak_bytes("scan", SMOL, 1, 512, rows=4) > B.peak_bytes("scan", SMOL, 1, 512, rows=1)
    assert B.peak_bytes("truncate", SMOL, 1, 512, windows=64) > B.peak_bytes("truncate", SMOL, 1, 512, windows=1)


def test_tiles_follow_the_budget() -> None:
    rows = [staircase_rows(SMOL, 1, 512, _budget(total)) for total in (3e9, 6e9, 24e9)]
    assert rows == sorted(rows) and rows[-1] > rows[0] and rows[0] >= 1
    windows = [truncation_windows(SMOL, 1, 2048, _budget(total)) for total in (1.6e9, 3e9)]
    assert windows == sorted(windows) and windows[0] >= 1
    assert B.readout_tile(1, 128) == B.VOCAB_TILE and B.readout_tile(1, 2048) < B.VOCAB_TILE


def test_plan_refuses_with_the_numbers() -> None:
    with pytest.raises(HorizonError) as error:
        B.plan("scan", SMOL, [2048], _budget(1.2e9))
    message = str(error.value)
    assert "2048-token" in message and "needs at least" in message and "budget 1.20 GB" in message
    assert "--max-memory" in message and "--max-tokens" in message and "\n" not in message
    # an explicit batch size wins when it fits, and is refused when it does not
    assert B.plan("norms", SMOL, [128] * 8, _budget(8e9), requested=3).batch_size == 3
    with pytest.raises(HorizonError, match="batch 64"):
        B.plan("attention", SMOL, [2048] * 64, _budget(4e9), requested=64)


def test_plan_json_names_the_choice() -> None:
    plan = B.plan("truncate", SMOL, [300, 500], _budget(4e9))
    payload = plan.to_json()
    assert payload["batch_size"] == plan.batch_size and payload["windows"] >= 1
    assert payload["max_memory_bytes"] == int(4e9) and payload["predicted_peak_bytes"] <= int(4e9)


def test_default_budget_is_a_share_of_what_is_free() -> None:
    fixed = 10**8
    budget = B.default_budget("cpu", fixed)
    available = B.available_bytes("cpu")
    assert budget.fixed == fixed
    # MemAvailable moves between the two reads; the share is CPU_FRACTION of it
    assert 0.5 * B.CPU_FRACTION * available < budget.working <= 1.5 * B.CPU_FRACTION * available
    assert "available RAM" in budget.source


# ----------------------------------------------------------------------------- the model bounds a measured peak

MEASURE = """
import json, sys
import torch
from horizon.core.model.loader import load_model
from horizon.core.memory import budget as B
analysis, n_tokens = sys.argv[1], int(sys.argv[2])
model = load_model("smollm2-135m", device="cpu")
ids = [[1] + [(7 * i) % 40000 + 100 for i in range(n_tokens - 1)]]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
import horizon.core.patching.horizon  # every module the analyses use is imported before the peak is reset
from horizon.core.analyses.attention.engine import attention_distance
from horizon.core.analyses.scan.engine import scan
from horizon.core.analyses.norms.engine import analyse_norms
from horizon.core.analyses.truncate.engine import analyse_truncation
with torch.inference_mode():
    model.bridge(torch.tensor([ids[0][:8]]))  # page the weights in: they are the fixed part
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current resident set
before = status("VmRSS")
if analysis == "attention":
    attention_distance(model, ids, True, batch_size=1)
elif analysis == "norms":
    analyse_norms(model, ids, True, batch_size=1)
elif analysis == "truncate":
    analyse_truncation(model, ids, [1, 5], batch_size=64, full_batch_size=1)
else:
    rows = 2
    plan_bytes = B.row_bytes(B.ModelDims.of(model), 1, n_tokens) * rows
    scan(model, ids, ks=[1, 2], batch_size=1, max_pass_bytes=plan_bytes)
peak = status("VmHWM")
print(json.dumps({"used": peak - before}))
"""


@pytest.mark.parametrize(("analysis", "tiling"), [("attention", {}), ("scan", {"rows": 2}), ("norms", {}),
                                                   ("truncate", {"windows": 64})])
def test_cost_model_bounds_the_measured_peak(analysis: str, tiling: dict[str, int]) -> None:
    """The working bytes the cost model predicts are at least what the analysis really adds to the
    resident set (VmHWM after a reset), on the bundled model at 1024 tokens, and not wildly more."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.fail("this test needs Linux's /proc/self/clear_refs to reset the peak")
    n_tokens = 1024
    done = subprocess.run([sys.executable, "-c", MEASURE, analysis, str(n_tokens)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    used = json.loads(done.stdout.strip().splitlines()[-1])["used"]
    predicted = B.peak_bytes(analysis, SMOL, 1, n_tokens, **tiling)
    assert used <= predicted, f"{analysis}: measured {B.format_size(used)} > predicted {B.format_size(predicted)}"
    assert predicted <= 4 * used + (64 << 20), f"{analysis}: predicted {B.format_size(predicted)} for " \
                                               f"{B.format_size(used)} measured"


# ----------------------------------------------------------------------------- results do not depend on the tiling


def _close(a: object, b: object) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=2e-4, atol=2e-5)


def test_scan_is_the_same_at_any_batch_and_pass_size(tiny_llama: LoadedModel) -> None:
    small = scan(tiny_llama, PROMPTS, batch_size=1, max_pass_bytes=1)  # one prompt, one row per pass
    large = scan(tiny_llama, PROMPTS, batch_size=3, max_pass_bytes=1 << 40)
    assert [row["k"] for row in small.rows] == [row["k"] for row in large.rows]
    for name in ("loss", "delta_loss", "kl", "top1_agreement"):
        _close([row[name] for row in small.rows], [row[name] for row in large.rows])
    assert small.n_tokens == large.n_tokens
    # clean runs made batch by batch (not kept) give the same numbers as kept ones
    lazy = H.clean_runs(tiny_llama, PROMPTS, batch_size=1, keep_bytes=0)
    assert isinstance(lazy, H.CleanRuns) and len(lazy) == 3
    again = scan(tiny_llama, PROMPTS, batch_size=1, cleans=lazy, ablation="mean")
    kept = scan(tiny_llama, PROMPTS, batch_size=1, ablation="mean")
    _close([row["delta_loss"] for row in again.rows], [row["delta_loss"] for row in kept.rows])


def test_narrow_vocabulary_tiles_change_nothing(tiny_llama: LoadedModel) -> None:
    clean = H.clean_runs(tiny_llama, PROMPTS[:2], batch_size=2)[0]
    configs = [H.HorizonConfig(2), H.HorizonConfig(4)]
    wide = dict(H.patched_metrics(tiny_llama, clean, configs))
    narrow = dict(H.patched_metrics(tiny_llama, clean, configs, vocab_tile=4099))  # 12 tiles, the last short
    for index in wide:
        for name in ("loss_patched", "kl", "top1_agree"):
            _close(getattr(narrow[index], name), getattr(wide[index], name))


def test_other_analyses_are_the_same_at_any_batch(tiny_llama: LoadedModel) -> None:
    one, three = (attention_distance(tiny_llama, PROMPTS, True, batch_size=b) for b in (1, 3))
    _close(one.mean_distance, three.mean_distance)
    _close(one.mass_no_bos["0"], three.mass_no_bos["0"])
    one, three = (analyse_norms(tiny_llama, PROMPTS, True, batch_size=b) for b in (1, 3))
    _close(one.stats["resid_pre"].mean_norm, three.stats["resid_pre"].mean_norm)
    one, many = (analyse_truncation(tiny_llama, PROMPTS, [1, 5], batch_size=w, full_batch_size=f)
                 for w, f in ((1, 1), (64, 3)))
    # records come in (full batch, length) order: compare them by (prompt, length, position)
    order = [np.lexsort((r.record_pos, r.record_length, r.record_prompt)) for r in (one, many)]
    for name in ("record_prompt", "record_pos", "record_length"):
        assert (getattr(one, name)[order[0]] == getattr(many, name)[order[1]]).all()
    _close(one.cos[order[0]], many.cos[order[1]])
    _close(one.cos_raw[order[0]], many.cos_raw[order[1]])


# ----------------------------------------------------------------------------- the CLI


def test_cli_refuses_a_bad_size(run_cli) -> None:
    code, out, err = run_cli("norms", "-m", "tiny-llama", "--max-memory", "nonsense")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--max-memory" in err


@pytest.mark.parametrize("command", [["norms"], ["scan", "--ks", "1"], ["patch", "--k", "1"], ["truncate"],
                                     ["attention"]])
def test_cli_refuses_what_cannot_fit_before_any_forward(run_cli, monkeypatch: pytest.MonkeyPatch,
                                                         command: list[str]) -> None:
    forwards = collections.Counter()
    original = torch.nn.Module.__call__

    def counted(module: torch.nn.Module, *args: object, **kwargs: object) -> object:
        forwards[type(module).__name__] += 1
        return original(module, *args, **kwargs)

    import horizon.tui.cli.common as common

    load_first = common.prepare_inputs

    def load_then_count(*args: object, **kwargs: object) -> object:
        inputs = load_first(*args, **kwargs)  # the load (and its verification) may run the model
        monkeypatch.setattr(torch.nn.Module, "__call__", counted)  # from here on, every module call counts
        return inputs

    for module in ("norms_cmd", "horizon_cmd", "truncate_cmd", "attention_cmd"):
        monkeypatch.setattr(f"horizon.tui.cli.{module}.prepare_inputs", load_then_count)
    code, out, err = run_cli(*command, "-m", "tiny-llama", "--max-memory", "1KB", "--json")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "needs at least" in err and "budget 1.00 KB" in err
    assert sum(forwards.values()) == 0


def test_cli_json_reports_the_plan(run_cli, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat sat on the mat.\n\nThe dog lay on the rug.\n\nA bird sang.\n")
    code, out, _ = run_cli("attention", "-m", "tiny-llama", "-f", str(prompts), "--max-memory", "8GB",
                           "--batch-size", "2", "--json")
    assert code == 0
    memory = json.loads(out)["memory"]
    assert memory["batch_size"] == 2 and memory["max_memory_bytes"] == 8 * 10**9


# ----------------------------------------------------------------------------- no host sync per layer or tile

SYNCS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


def _tiny_llama_with(n_layers: int) -> LoadedModel:
    original = transformers.LlamaConfig

    class Config(original):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: object) -> None:
            kwargs["num_hidden_layers"] = n_layers
            super().__init__(**kwargs)

    transformers.LlamaConfig = Config
    try:
        return load_model("tiny-llama", device="cpu")
    finally:
        transformers.LlamaConfig = original


def _count_syncs(monkeypatch: pytest.MonkeyPatch, run: Callable[[], object]) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()

    def wrap(name: str) -> Callable:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            counts[name] += 1
            return original(self, *args, **kwargs)

        return counted

    with monkeypatch.context() as patch:
        for name in SYNCS:
            patch.setattr(torch.Tensor, name, wrap(name))
        run()
    return dict(counts)


@pytest.fixture(scope="module")
def layered() -> Iterator[dict[int, LoadedModel]]:
    yield {n: _tiny_llama_with(n) for n in (2, 5)}


ANALYSES: dict[str, Callable[[LoadedModel], object]] = {
    "scan": lambda model: scan(model, PROMPTS, batch_size=3),
    "patch": lambda model: H.patch(model, PROMPTS, H.HorizonConfig(2), batch_size=3),
    "attention": lambda model: attention_distance(model, PROMPTS, True, batch_size=3),
    "norms": lambda model: analyse_norms(model, PROMPTS, True, batch_size=3),
    "truncate": lambda model: analyse_truncation(model, PROMPTS, [1, 5], batch_size=4, full_batch_size=3),
}


@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_no_host_sync_per_layer(monkeypatch: pytest.MonkeyPatch, layered: dict[int, LoadedModel],
                                analysis: str) -> None:
    two, five = (_count_syncs(monkeypatch, lambda n=n: ANALYSES[analysis](layered[n])) for n in (2, 5))
    assert two == five, f"{analysis}: host syncs grow with the layers: {two} at 2, {five} at 5"


def test_no_host_sync_per_row_tile_or_window_batch(monkeypatch: pytest.MonkeyPatch, tiny_llama: LoadedModel) -> None:
    # staircase rows and passes: one k against every k, one row per pass against all in one
    few = _count_syncs(monkeypatch, lambda: scan(tiny_llama, PROMPTS, ks=[1], batch_size=3))
    many = _count_syncs(monkeypatch, lambda: scan(tiny_llama, PROMPTS, batch_size=3, max_pass_bytes=1))
    assert few == many
    # vocabulary tiles: 1 against 12 tiles of the readout
    clean = H.clean_runs(tiny_llama, PROMPTS, batch_size=3)[0]
    configs = [H.HorizonConfig(2), H.HorizonConfig(4)]
    wide = _count_syncs(monkeypatch, lambda: list(H.patched_metrics(tiny_llama, clean, configs, vocab_tile=1 << 20)))
    narrow = _count_syncs(monkeypatch, lambda: list(H.patched_metrics(tiny_llama, clean, configs, vocab_tile=4099)))
    assert wide == narrow
    # truncation: one window per forward against all at once
    one = _count_syncs(monkeypatch, lambda: analyse_truncation(tiny_llama, PROMPTS, [1], batch_size=1))
    all_at_once = _count_syncs(monkeypatch, lambda: analyse_truncation(tiny_llama, PROMPTS, [1], batch_size=256))
    assert one == all_at_once
