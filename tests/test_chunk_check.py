"""Position chunks never give other numbers than the whole pass (core/checks/chunking.py).

On the pinned stack a chunked pass equals the whole one, and a prompt over 512 tokens on a CPU (the
default speed chunks of 256) gives the norms and scan of an independent computation with plain HF
forward hooks (tests/hf_reference.py). With a KV cache that drops the earlier positions (what
transformers 5.24 did to TransformerLens 4.3's attention) the self-check fails: speed chunks fall
back to the whole pass (right numbers), chunks that memory requires are refused in one line naming
the versions, an engine asked for chunks refuses, and `horizon verify` fails its chunking check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
from horizon.core.analyses.scan.engine import scan
from horizon.core.capture.capture import run_capture
from horizon.core.checks import chunking
from horizon.core.checks import verify as V
from horizon.core.errors import HorizonError
from horizon.core.memory import budget as B
from horizon.core.memory import planner
from horizon.core.model.loader import LoadedModel, bundled_tokenizer
from horizon.core.model.prompts import batches
from horizon.core.patching.horizon import ChunkedClean

from tests.hf_reference import HFHorizon, metrics

WORDS = ("the of and to in is was for on that with as by at from his her it an were are which this be or has had "
         "not but also first one their its new after who they two have more river city music paper light").split()


def long_text(n_words: int = 620) -> str:
    """A deterministic text of a few hundred tokens (the bundled tokenizer: one token a word, about)."""
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(0, len(WORDS), (n_words,), generator=generator).tolist()
    return " ".join(WORDS[index] for index in picks)


def forget_earlier_positions(monkeypatch: pytest.MonkeyPatch, *models: LoadedModel) -> None:
    """Every KV cache hands attention only the positions it was just given (and keeps nothing): a
    chunk no longer sees the chunks before, as when the attention layers do not get the cache."""
    monkeypatch.setattr(T.DynamicCache, "update", lambda self, keys, values, layer_idx, *args, **kwargs: (keys, values))
    for model in models:
        monkeypatch.setitem(model.extra, "chunking", None)  # checked again, and forgotten after the test


@pytest.fixture
def fresh_verdict(tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> LoadedModel:
    monkeypatch.setitem(tiny_llama.extra, "chunking", None)
    return tiny_llama


# ----------------------------------------------------------------------------- the self-check


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_chunks_equal_the_whole_pass_on_this_stack(name: str, request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = request.getfixturevalue(name)
    monkeypatch.setitem(model.extra, "chunking", None)
    verdict = chunking.check(model)
    assert verdict.passed and verdict.measured < 1e-5, verdict
    assert "resid_pre, final, logits, scan" in verdict.detail and "3 chunks" in verdict.detail
    assert chunking.refusal(model) is None
    assert model.extra["chunking"] is verdict  # once per loaded model


def test_the_check_runs_at_the_first_chunked_pass_only(fresh_verdict: LoadedModel,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[LoadedModel] = []
    real = chunking.check
    monkeypatch.setattr(chunking, "check", lambda model: calls.append(model) or real(model))
    ids = torch.arange(5, 45).unsqueeze(0)
    run_capture(fresh_verdict, ids, ("resid_pre",), position_chunk=256)  # shorter than a chunk: whole, no check
    assert calls == []
    for _ in range(2):
        run_capture(fresh_verdict, ids, ("resid_pre",), position_chunk=16)
    assert calls == [fresh_verdict]


def test_a_cache_that_drops_earlier_positions_fails_the_check(fresh_verdict: LoadedModel,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    forget_earlier_positions(monkeypatch, fresh_verdict)
    verdict = chunking.check(fresh_verdict)
    assert not verdict.passed and verdict.measured > 1e-2, verdict
    why = chunking.refusal(fresh_verdict)
    assert why is not None and f"transformers {T.__version__}" in why and "TransformerLens" in why


def test_the_library_warning_of_a_broken_cache_goes_into_the_verdict(fresh_verdict: LoadedModel,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 5.24 warned "past_key_values is deprecated" as the chunks went wrong: the warning
    names the cause in the verdict and does not reach the user's stderr."""
    import warnings

    def warn_and_forget(self, keys, values, layer_idx, *args, **kwargs):
        warnings.warn("`past_key_values` is deprecated and will be removed. Use `cache` instead.", FutureWarning,
                      stacklevel=2)
        return keys, values

    monkeypatch.setattr(T.DynamicCache, "update", warn_and_forget)
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        verdict = chunking.check(fresh_verdict)
    assert escaped == [] and not verdict.passed
    assert "library warning: `past_key_values` is deprecated" in verdict.detail


def test_a_chunked_pass_that_crashes_is_a_failed_check_not_a_traceback(fresh_verdict: LoadedModel,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from horizon.core.capture import capture

    def no_cache(model):
        raise TypeError("DynamicCache.__init__() got an unexpected keyword argument 'config'")

    monkeypatch.setattr(capture, "new_cache", no_cache)
    verdict = chunking.check(fresh_verdict)
    assert not verdict.passed and "it failed: DynamicCache.__init__()" in verdict.detail
    assert "a chunked pass fails" in (chunking.refusal(fresh_verdict) or "")
    dims = B.ModelDims.of(fresh_verdict)
    assert B.plan("norms", dims, [1024], B.Budget(total=64 << 30, fixed=1 << 30, source="test")).position_chunk is None


def test_engines_refuse_chunks_that_would_be_wrong(fresh_verdict: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from horizon.core.analyses.norms.engine import analyse_norms

    forget_earlier_positions(monkeypatch, fresh_verdict)
    ids = [[1, *range(5, 45)]]
    for run in (lambda: run_capture(fresh_verdict, torch.tensor(ids), ("resid_pre",), position_chunk=16),
                lambda: analyse_norms(fresh_verdict, ids, True, position_chunk=16),
                lambda: scan(fresh_verdict, ids, ks=[1], position_chunk=16),
                lambda: ChunkedClean(fresh_verdict, batches(fresh_verdict, ids, True)[0], 16)):
        with pytest.raises(HorizonError, match="position chunks are inexact with transformers") as refused:
            run()
        assert "\n" not in str(refused.value) and len(str(refused.value)) <= 200
    # the whole pass is unaffected by the fault: it is what the fallback runs
    whole = scan(fresh_verdict, ids, ks=[1])
    assert whole.n_tokens == 40


def test_the_plan_falls_back_to_the_whole_pass_or_refuses(fresh_verdict: LoadedModel,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    dims = B.ModelDims.of(fresh_verdict)
    roomy = B.Budget(total=64 << 30, fixed=1 << 30, source="test", on_cpu=True)
    for analysis in ("norms", "scan"):
        assert B.plan(analysis, dims, [1024], roomy).position_chunk == B.CPU_POSITION_CHUNK
    forget_earlier_positions(monkeypatch, fresh_verdict)
    for analysis in ("norms", "scan"):  # speed chunks: the whole pass instead
        assert B.plan(analysis, dims, [1024], roomy).position_chunk is None
    monkeypatch.setattr(planner, "position_chunk", lambda analysis, dims, n_tokens, budget: 64)  # as if only chunks fit
    with pytest.raises(HorizonError, match="only in position chunks, and position chunks are inexact") as refused:
        B.plan("scan", dims, [1024], roomy)
    assert "\n" not in str(refused.value) and "transformers" in str(refused.value) and len(str(refused.value)) <= 210


def test_verify_fails_its_chunking_check(fresh_verdict: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = {check.name: check for check in V.verify(fresh_verdict).checks}
    assert checks["chunking"].passed and checks["chunking"].measured < 1e-5
    forget_earlier_positions(monkeypatch, fresh_verdict)
    result = V.verify(fresh_verdict)
    failed = {check.name: check for check in result.failed}
    assert list(failed) == ["chunking"], [(c.name, c.measured) for c in result.failed]
    assert failed["chunking"].measured > 1e-2 and failed["chunking"].bar == 1e-4


# ----------------------------------------------------------------------------- against plain transformers


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with room for 1024 positions, saved as an HF directory (`horizon -m DIR`)."""
    tokenizer = bundled_tokenizer()
    config = T.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           tie_word_embeddings=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = T.LlamaForCausalLM(config).eval()
    finally:
        torch.random.set_rng_state(state)
    with torch.no_grad():  # logits of a trained model's size
        model.lm_head.weight.mul_(30.0)
    path = tmp_path_factory.mktemp("long-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _reference(path: Path) -> HFHorizon:
    from horizon.core.model.loader import _quiet

    with _quiet():  # its progress bar would be read as the CLI's stderr
        return HFHorizon(T.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval())


def test_a_long_prompt_on_a_cpu_gives_the_norms_and_scan_of_plain_transformers(long_model_dir: Path, run_cli,
                                                                               tmp_path: Path) -> None:
    """The issue's case: over 512 tokens on a CPU norms and scan run in chunks of 256 (their JSON says
    so), and every number is the one forward hooks on the plain HF model give (before the fix the
    chunks lost the earlier positions: norms up to 50% off)."""
    prompt = tmp_path / "long.txt"
    prompt.write_text(long_text(), encoding="utf-8")
    common = ("-m", str(long_model_dir), "-f", str(prompt), "--device", "cpu", "--json")
    code, out, err = run_cli("norms", *common)
    assert code == 0 and err == "", err
    payload = json.loads(out)
    assert payload["memory"]["position_chunk"] == B.CPU_POSITION_CHUNK
    ids = torch.tensor(payload["token_ids"])  # the tokenizer's BOS, then the text's tokens
    assert ids.shape == (1, len(ids[0])) and 512 < ids.shape[1] <= 1024
    reference = _reference(long_model_dir)
    logits, _, resid = reference.run(ids)
    engine = torch.tensor(payload["sites"]["resid_pre"]["per_position"][0], dtype=torch.float64)  # [L+1, T]
    expected = resid[:, 0].double().norm(dim=-1)
    assert float(((engine - expected).abs() / expected).max()) < 1e-5

    code, out, err = run_cli("scan", *common, "--ks", "1,2,3", "--unit", "sublayer")
    assert code == 0 and err == "", err
    payload = json.loads(out)
    assert payload["memory"]["position_chunk"] == B.CPU_POSITION_CHUNK
    for row in payload["rows"]:
        expected_row = metrics(logits, reference.patched(ids, row["k"]), ids)
        for name in ("loss", "delta_loss", "kl", "top1_agreement"):
            assert row[name] == pytest.approx(expected_row[name], rel=1e-4, abs=1e-5), (row["k"], name)


def test_with_a_faulty_cache_the_long_prompt_runs_whole_with_the_same_numbers(
        long_model_dir: Path, run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = tmp_path / "long.txt"
    prompt.write_text(long_text(), encoding="utf-8")
    forget_earlier_positions(monkeypatch)  # the CLI loads its own model: its verdict starts empty
    code, out, err = run_cli("norms", "-m", str(long_model_dir), "-f", str(prompt), "--device", "cpu", "--json")
    assert code == 0 and err == "", err
    payload = json.loads(out)
    _, _, resid = _reference(long_model_dir).run(torch.tensor(payload["token_ids"]))
    assert "position_chunk" not in payload["memory"]  # the fallback: the whole pass
    engine = torch.tensor(payload["sites"]["resid_pre"]["per_position"][0], dtype=torch.float64)
    expected = resid[:, 0].double().norm(dim=-1)
    assert float(((engine - expected).abs() / expected).max()) < 1e-5
    # what the self-check prevents: the same run with chunks anyway is far off (the 50%)
    with monkeypatch.context() as unchecked:
        unchecked.setattr(chunking, "refusal", lambda model: None)
        code, out, _ = run_cli("norms", "-m", str(long_model_dir), "-f", str(prompt), "--device", "cpu", "--json")
    wrong = torch.tensor(json.loads(out)["sites"]["resid_pre"]["per_position"][0], dtype=torch.float64)
    assert code == 0 and float(((wrong - expected).abs() / expected).max()) > 0.05
    # a scan that fits only in chunks is refused in one line, exit 2, nothing on stdout
    monkeypatch.setattr(planner, "position_chunk", lambda analysis, dims, n_tokens, budget: 128)
    code, out, err = run_cli("scan", "-m", str(long_model_dir), "-f", str(prompt), "--device", "cpu", "--json")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "only in position chunks" in err and f"transformers {T.__version__}" in err
