"""A long prompt's scan in position chunks (core/patching/horizon.py ChunkedClean) equals the whole-prompt scan.

Chunking is how a scan fits a tight ``--max-memory``: the clean run and every staircase pass go
through the prompt a chunk of positions at a time, with KV caches of the positions before. The
windows are per-position sums and attention is the only thing that mixes positions, so every
number must be the whole-prompt scan's (to the rounding of the bridge's float32 softmax: the
models here run in float64 otherwise).
"""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from horizon.core.analyses.scan.engine import scan, scan_by_layer, scan_per_prompt
from horizon.core.capture.capture import position_chunks
from horizon.core.errors import HorizonError
from horizon.core.memory import budget as B
from horizon.core.memory import planner
from horizon.core.model.loader import LoadedModel, load_model
from horizon.core.model.prompts import batches
from horizon.core.patching.horizon import ChunkedClean, clean_run, clean_runs

METRICS = ("loss", "delta_loss", "kl", "top1_agreement")
TOL = 1e-6  # float64 models; the bridge's attention softmax is float32 in both passes


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def model64(request: pytest.FixtureRequest) -> LoadedModel:
    model = load_model(request.param, device="cpu")
    model.bridge.double()
    model.dtype = torch.float64
    return model


def _prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [[1, *torch.randint(5, 200, (40,), generator=generator).tolist()],
            [1, *torch.randint(5, 200, (29,), generator=generator).tolist()]]


def _assert_rows_equal(whole: list[dict], chunked: list[dict]) -> None:
    assert len(whole) == len(chunked)
    for row, other in zip(whole, chunked, strict=True):
        assert (row["k"], row["start_layer"]) == (other["k"], other["start_layer"])
        for name in METRICS:
            assert other[name] == pytest.approx(row[name], abs=TOL), (row["k"], name)


def test_position_chunks_cover_the_prompt_evenly() -> None:
    for n_positions, chunk in [(2048, 256), (2049, 256), (100, 7), (5, 64), (64, 64), (65, 64)]:
        parts = position_chunks(n_positions, chunk)
        assert parts[0].start == 0 and parts[-1].stop == n_positions
        assert all(a.stop == b.start for a, b in pairwise(parts))
        sizes = [part.stop - part.start for part in parts]
        assert max(sizes) <= chunk and min(sizes) >= 1
        assert max(sizes) - min(sizes) <= len(parts)  # no nearly empty last chunk
    assert len(position_chunks(2049, 256)) == 9


@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize("source", ["recursive", "clean"])
def test_chunked_scan_equals_the_whole_prompt_scan(model64: LoadedModel, ablation: str, source: str) -> None:
    """Padded batch of two prompts, chunks that do not divide the length, two start layers."""
    prompts = _prompts()
    options = {"ablation": ablation, "source": source, "batch_size": 2, "start_layers": (0, 1)}
    whole = scan(model64, prompts, **options)
    for chunk in (7, 16):
        chunked = scan(model64, prompts, position_chunk=chunk, **options)
        assert chunked.n_tokens == whole.n_tokens == sum(len(ids) - 1 for ids in prompts)
        assert chunked.loss_clean == pytest.approx(whole.loss_clean, abs=1e-12)
        _assert_rows_equal(whole.rows, chunked.rows)
        assert chunked.effective_horizon == whole.effective_horizon


def test_chunked_by_layer_matrix_and_per_prompt_rows(model64: LoadedModel) -> None:
    prompts = _prompts()
    options = {"ks": [1, 2, 3], "batch_size": 2, "keep_embed": True, "final": "full"}
    whole, chunked = (scan_by_layer(model64, prompts, **options, position_chunk=chunk) for chunk in (None, 9))
    for name in ("delta_loss", "kl", "top1_agreement"):
        assert torch.tensor(getattr(chunked, name)) == pytest.approx(torch.tensor(getattr(whole, name)), abs=TOL)
    per_whole = scan_per_prompt(model64, prompts, ks=[1, 2], batch_size=2)
    per_chunked = scan_per_prompt(model64, prompts, ks=[1, 2], batch_size=2, position_chunk=10)
    for one, other in zip(per_whole, per_chunked, strict=True):
        assert one.n_tokens == other.n_tokens
        _assert_rows_equal(one.rows, other.rows)


def test_clean_chunks_are_the_whole_clean_run(model64: LoadedModel) -> None:
    """Outputs, resid_pre, logits and the scored targets of the chunks, joined, are the whole run's
    (to the float32 softmax's rounding, ~2e-7 of the logits)."""
    (batch,) = batches(model64, _prompts(), has_bos=True, batch_size=2)
    whole = clean_run(model64, batch)
    chunked = ChunkedClean(model64, batch, 12)
    parts = list(chunked.parts())
    assert [part.offset for part in parts] == [part.start for part in chunked.chunks]
    assert torch.cat([part.outputs for part in parts], dim=2) == pytest.approx(whole.outputs, abs=1e-6)
    assert torch.cat([part.resid_pre for part in parts], dim=2) == pytest.approx(whole.resid_pre, abs=1e-6)
    assert torch.cat([part.logits for part in parts], dim=1) == pytest.approx(whole.logits, abs=1e-6)
    assert torch.equal(torch.cat([part.targets for part in parts], dim=1), whole.targets)
    assert torch.equal(torch.cat([part.valid for part in parts], dim=1), whole.valid)
    # only the first chunk starts with the BOS (mean ablation's means and position 0)
    assert [part.batch.has_bos for part in parts] == [True] + [False] * (len(parts) - 1)


def test_clean_runs_chunk_only_the_long_batches(tiny_llama: LoadedModel) -> None:
    prompts = [[1, *range(5, 45)], [1, *range(60, 70)]]
    runs = clean_runs(tiny_llama, prompts, batch_size=1, position_chunk=20)
    assert isinstance(runs[0], ChunkedClean) and not isinstance(runs[1], ChunkedClean)


# ----------------------------------------------------------------------------- the plan

SMOL = B.ModelDims(n_layers=30, d_model=576, n_heads=9, d_mlp=1536, vocab=49152, element_bytes=4,
                   weight_bytes=540_000_000, kv_width=192)
FIXED = 1_060_000_000  # the bundled model's resident set once it has run


def _budget(total: float, on_cpu: bool = False) -> B.Budget:
    return B.Budget(total=int(total), fixed=FIXED, source="test", on_cpu=on_cpu)


def test_the_plan_chunks_a_long_scan_only_when_the_whole_prompt_does_not_fit() -> None:
    roomy = B.plan("scan", SMOL, [2048], _budget(16e9))
    assert "position_chunk" not in roomy.tiling
    tight = B.plan("scan", SMOL, [2048], _budget(2e9))
    chunk = tight.tiling["position_chunk"]
    assert B.MIN_POSITION_CHUNK <= chunk < 2048 and tight.peak_bytes <= 2e9
    assert tight.keep_clean_bytes == 0 and "held_tokens" not in tight.tiling
    # the longest chunk that fits: twice as long does not
    parts = B.costs("scan", SMOL, 1, 2048, rows=1, vocab_tile=B.readout_tile(1, 2 * chunk), position_chunk=2 * chunk)
    assert FIXED + sum(parts.values()) > 2e9
    # the chunk's parts grow with the chunk, the KV caches with the prompt and the rows
    small, large = (B.costs("scan", SMOL, 1, 2048, rows=2, position_chunk=c) for c in (128, 256))
    assert large["attention"] == 2 * small["attention"] and large["kv caches"] == small["kv caches"]
    assert B.costs("scan", SMOL, 1, 2048, rows=3, position_chunk=128)["kv caches"] == 4 * 2048 * SMOL.kv_bytes_per_token


def test_a_budget_below_the_shortest_chunk_is_refused_with_the_numbers() -> None:
    with pytest.raises(HorizonError) as refused:
        B.plan("scan", SMOL, [2048], _budget(1.3e9))
    message = str(refused.value)
    assert "2048-token" in message and "--max-memory" in message and "\n" not in message


def test_the_scan_command_passes_the_chunk_to_the_engine(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced to chunk (the plan says 16 positions), `horizon scan` gives the whole-prompt rows."""
    import json

    args = ("scan", "-m", "tiny-llama", "-p", "The capital of France is Paris, and the capital of Italy is Rome.",
            "--ks", "1,2", "--json")
    code, whole, _ = run_cli(*args)
    assert code == 0
    monkeypatch.setattr(planner, "position_chunk", lambda analysis, dims, n_tokens, budget: 16)
    code, chunked, _ = run_cli(*args)
    assert code == 0
    whole_json, chunked_json = json.loads(whole), json.loads(chunked)
    assert chunked_json["memory"]["position_chunk"] == 16 and "position_chunk" not in whole_json["memory"]
    for row, other in zip(whole_json["rows"], chunked_json["rows"], strict=True):
        for name in METRICS:
            assert other[name] == pytest.approx(row[name], abs=1e-5)


def test_on_a_cpu_long_prompts_are_chunked_for_speed() -> None:
    """norms and scan of prompts over CPU_CHUNK_FROM tokens run in chunks of CPU_POSITION_CHUNK on a CPU
    (eager attention's T x T scores leave the caches), not on other devices nor for short prompts."""
    for analysis in ("norms", "scan"):
        long_cpu = B.plan(analysis, SMOL, [1024], _budget(16e9, on_cpu=True))
        assert long_cpu.tiling["position_chunk"] == B.CPU_POSITION_CHUNK
        assert "position_chunk" not in B.plan(analysis, SMOL, [B.CPU_CHUNK_FROM], _budget(16e9, on_cpu=True)).tiling
        assert "position_chunk" not in B.plan(analysis, SMOL, [1024], _budget(16e9)).tiling
    tight = B.plan("scan", SMOL, [2048], _budget(2e9, on_cpu=True))  # memory's chunk wins when it is shorter
    assert tight.tiling["position_chunk"] == B.plan("scan", SMOL, [2048], _budget(2e9)).tiling["position_chunk"] < 256
    assert B.make_budget(None, SMOL, "cpu").on_cpu and not B.make_budget(2 << 30, SMOL, "cuda:0", measured=False).on_cpu


@pytest.mark.parametrize("has_bos", [True, False])
def test_chunked_norms_equal_the_whole_pass(model64: LoadedModel, has_bos: bool) -> None:
    from horizon.core.analyses.norms.engine import analyse_norms

    prompts = _prompts()
    whole = analyse_norms(model64, prompts, has_bos, batch_size=2)
    chunked = analyse_norms(model64, prompts, has_bos, batch_size=2, position_chunk=9)
    for site, stats in whole.stats.items():
        other = chunked.stats[site]
        assert other.mean_norm == pytest.approx(stats.mean_norm, rel=1e-6)
        assert other.std == pytest.approx(stats.std, rel=1e-6)
        for one, two in zip(whole.norms[site], chunked.norms[site], strict=True):
            assert two == pytest.approx(one, rel=1e-6)
    assert chunked.growth.rate == pytest.approx(whole.growth.rate, rel=1e-6)


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neo", "opt",
            "gpt_neox", "gptj", "phi")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_verified_family_chunks_like_its_whole_pass(family: str) -> None:
    """Position chunks with the family's own KV cache (sliding windows, learned positions with an
    offset, parallel blocks) give the whole pass's residuals, and its horizon scan where it has one."""
    from horizon.core.capture.capture import run_capture

    from tests.test_verify import family_model

    model = family_model(family)
    ids = torch.randint(5, 200, (2, 40), generator=torch.Generator().manual_seed(0))
    whole = run_capture(model, ids, ("resid_pre", "final"), stop_after_final=True)
    chunked = run_capture(model, ids, ("resid_pre", "final"), stop_after_final=True, position_chunk=9)
    for site in ("resid_pre", "final"):
        scale = float(whole[site].abs().max())
        assert float((chunked[site] - whole[site]).abs().max()) <= 1e-5 * scale, site
    if not model.parallel_attn_mlp:  # the horizon is refused on parallel blocks
        rows, chunked_rows = (scan(model, ids.tolist(), ks=[1, 2], position_chunk=chunk).rows for chunk in (None, 9))
        for row, other in zip(rows, chunked_rows, strict=True):
            assert other["loss"] == pytest.approx(row["loss"], abs=1e-5)
            assert other["kl"] == pytest.approx(row["kl"], abs=1e-5)
