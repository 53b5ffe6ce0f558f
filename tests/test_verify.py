"""`horizon verify` and the refusal of unverified models, on tiny random-weight models of every family.

Each family is built from transformers' own config class (no download) with seeded random
weights, bridged like ``load_model`` bridges a tiny model, and verified against a second,
independently built copy. The README's table of claimed families is generated from these results
(``python -m tests.test_verify`` prints it) and checked here.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from horizon.core import verify as V
from horizon.core.errors import HorizonError
from horizon.core.loader import LoadedModel, bundled_tokenizer, load_model

ROOT = Path(__file__).resolve().parents[1]
TABLE_START, TABLE_END = "<!-- families:start -->", "<!-- families:end -->"
CHECK_COLUMNS = ("sites", "final_norm", "decomposition", "readers", "logits", "full_horizon", "attention")


def family_config(family: str, vocab_size: int):
    """A 2-layer, d_model-64 config of ``family`` from transformers' own config class."""
    import transformers as T

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
    )
    gqa = dict(num_key_value_heads=2)
    positions = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=vocab_size)
    configs = {
        "llama": lambda: T.LlamaConfig(**common, **gqa),
        "mistral": lambda: T.MistralConfig(**common, **gqa, sliding_window=4),
        "qwen2": lambda: T.Qwen2Config(**common, **gqa),
        "qwen3": lambda: T.Qwen3Config(**common, **gqa, head_dim=16),
        "gemma2": lambda: T.Gemma2Config(**common, **gqa, head_dim=16),
        "gemma3_text": lambda: T.Gemma3TextConfig(
            **common, **gqa, head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"]
        ),
        "phi3": lambda: T.Phi3Config(**common, **gqa),
        "gpt2": lambda: T.GPT2Config(**positions),
        "gpt_neo": lambda: T.GPTNeoConfig(
            **common, attention_types=[[["local", "global"], 1]], num_layers=2, num_heads=4, window_size=4
        ),
        "opt": lambda: T.OPTConfig(**common, ffn_dim=128, word_embed_proj_dim=64),
        "gpt_neox": lambda: T.GPTNeoXConfig(**common),
        "gptj": lambda: T.GPTJConfig(**positions, rotary_dim=8),
        "phi": lambda: T.PhiConfig(**common),
        "olmo2": lambda: T.Olmo2Config(**common, **gqa),
    }
    return configs[family]()


def _hf_model(family: str, vocab_size: int):
    from transformers import AutoModelForCausalLM

    config = family_config(family, vocab_size)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    finally:
        torch.random.set_rng_state(state)
    model.config.architectures = [type(model).__name__]  # the bridge picks its adapter by this
    return model


@functools.cache
def _tokenizer():
    return bundled_tokenizer()


def family_model(family: str) -> LoadedModel:
    """A tiny ``family`` model booted into the bridge the way load_model boots tiny-llama."""
    from horizon.core.loader import _quiet
    from transformer_lens.model_bridge import TransformerBridge

    tokenizer = _tokenizer()
    hf_model = _hf_model(family, len(tokenizer))
    with _quiet():
        bridge = TransformerBridge.boot_transformers(family, hf_model=hf_model, tokenizer=tokenizer)
    bridge.eval()
    cfg = bridge.cfg
    return LoadedModel(
        spec=f"tiny-{family}",
        source="random weights (seed 0)",
        bridge=bridge,
        tokenizer=tokenizer,
        architecture=hf_model.config.model_type,
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        n_ctx=int(cfg.n_ctx),
        default_bos="<|endoftext|>",
        device=torch.device("cpu"),
        dtype=torch.float32,
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        model_hash=f"tiny-{family}",
    )


def verify_family(family: str) -> V.Verification:
    model = family_model(family)
    return V.verify(model, reference=_hf_model(family, len(model.tokenizer)))


@pytest.fixture(scope="module")
def verified() -> dict[str, V.Verification]:
    return {family: verify_family(family) for family in (*V.CLAIMED_FAMILIES, *V.REFUSED_FAMILIES)}


def family_table(results: dict[str, V.Verification]) -> str:
    """The README's markdown table of claimed (and refused) families, from verification results."""
    mark = {True: "pass", False: "FAIL", None: "n/a"}
    header = ["family (`model_type`)", "HF class", *CHECK_COLUMNS, "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for family, (hf_class, note) in {**V.CLAIMED_FAMILIES, **V.REFUSED_FAMILIES}.items():
        checks = {check.name: check.passed for check in results[family].checks}
        cells = [mark[checks[name]] if name in checks else "-" for name in CHECK_COLUMNS]
        status = "" if family in V.CLAIMED_FAMILIES else "**refused**: "
        lines.append(f"| `{family}` | `{hf_class}` | " + " | ".join(cells) + f" | {status}{note} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- families


@pytest.mark.parametrize("family", list(V.CLAIMED_FAMILIES))
def test_claimed_family_passes_every_check(family: str, verified: dict[str, V.Verification]) -> None:
    result = verified[family]
    assert result.passed, [(c.name, c.measured, c.detail) for c in result.failed]
    names = {check.name for check in result.checks}
    assert set(CHECK_COLUMNS) <= names
    horizon = next(check for check in result.checks if check.name == "full_horizon")
    parallel = "parallel" in V.CLAIMED_FAMILIES[family][1]
    assert horizon.passed is (None if parallel else True)


def test_refused_family_fails_a_named_check(verified: dict[str, V.Verification]) -> None:
    result = verified["olmo2"]
    assert [check.name for check in result.failed] == ["sites"]
    assert "ln1.hook_in" in result.failed[0].detail


def test_sliding_windows_are_seen_in_the_patterns(verified: dict[str, V.Verification]) -> None:
    """Gemma 3 alternates windowed and global layers; GPT-Neo too; Mistral windows every layer."""
    details = {
        family: next(c.detail for c in verified[family].checks if c.name == "attention")
        for family in V.CLAIMED_FAMILIES
    }
    assert "1 sliding-window layer(s) (window 4), 1 global" in details["gemma3_text"]
    assert "1 sliding-window layer(s) (window 4), 1 global" in details["gpt_neo"]
    assert "2 sliding-window layer(s) (window 4), 0 global" in details["mistral"]
    assert "all global" in details["llama"]


def test_attention_check_catches_a_wrong_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is real: claiming a narrower window than the model uses fails it."""
    model = family_model("gemma3_text")
    ids = V._prompt_ids(model, V.VERIFY_PROMPT)
    assert V.attention_check(model, ids).passed
    monkeypatch.setattr(V, "sliding_windows", lambda m: [2, None])
    assert V.attention_check(model, ids).passed is False


def test_attention_report_marks_windowed_and_global_layers() -> None:
    """On a Gemma 3 layout (window 4, then a global layer) the windowed layer has no mass beyond it."""
    from horizon.core.attention import attention_distance
    from horizon.core.prompts import tokenize

    model = family_model("gemma3_text")
    report = attention_distance(model, tokenize(model, [V.VERIFY_PROMPT]), has_bos=True)
    assert report.windows == [4, None]
    assert [report.layer_label(layer) for layer in range(2)] == ["0 w4", "1 global"]
    assert report.to_json()["sliding_window"] == [4, None]
    assert report.mass["6-10"][0].max() == 0 and report.mass[">10"][0].max() == 0
    assert report.mass[">10"][1].min() > 0
    assert attention_distance(family_model("llama"), [[0, 5, 6]], has_bos=True).layer_label(0) == "0"


def test_readme_lists_the_verified_families(verified: dict[str, V.Verification]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(re.escape(TABLE_START) + r"\n(.*?)\n" + re.escape(TABLE_END), readme, re.S)
    assert found, "README.md has no families table (python -m tests.test_verify prints it)"
    assert found.group(1).strip() == family_table(verified)


# ----------------------------------------------------------------------------- refusal


@pytest.fixture
def broken_decomposition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the engine hooked the MLP outputs at the wrong site (as if an alias were missing)."""
    monkeypatch.delenv(V.ENV_OVERRIDE, raising=False)
    real = V.output_hook
    monkeypatch.setattr(V, "output_hook", lambda j: real(j).replace("hook_mlp_out", "mlp.hook_in"))


def test_a_failing_model_is_refused_with_one_line(broken_decomposition) -> None:
    with pytest.raises(HorizonError, match="failed the decomposition check") as caught:
        load_model("tiny-gpt2", device="cpu")
    assert "\n" not in str(caught.value) and "--unverified" in str(caught.value)
    assert load_model("tiny-gpt2", device="cpu", unverified=True).extra["verified"] == "skipped"


def test_cli_refuses_and_unverified_overrides(broken_decomposition, run_cli, monkeypatch) -> None:
    code, out, err = run_cli("norms", "--model", "tiny-gpt2", "--device", "cpu", "--json")
    assert code == 2 and "failed the decomposition check" in err and err.count("\n") == 1
    monkeypatch.setenv(V.ENV_OVERRIDE, "0")  # restored after the test: --unverified sets it for the process
    code, out, err = run_cli("norms", "--model", "tiny-gpt2", "--device", "cpu", "--json", "--unverified")
    assert code == 0 and json.loads(out)["n_layers"] == 3


def test_verify_command_table_json_and_stored_verdict(run_cli, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(V, "cache_root", lambda: tmp_path / "horizon")  # verdicts only
    code, out, _ = run_cli("verify", "--model", "tiny-gpt2", "--device", "cpu", "--reference", "loaded")
    assert code == 0 and "verified" in out and "full_horizon" in out
    code, out, _ = run_cli("verify", "--model", "tiny-gpt2", "--device", "cpu", "--json")
    payload = json.loads(out)
    assert code == 0 and payload["passed"] and payload["attn_implementation"] == "eager"
    assert {check["name"] for check in payload["checks"]} >= set(CHECK_COLUMNS)
    assert len(list((tmp_path / "horizon" / "verified").glob("*.full.json"))) == 1  # one model, one verdict


def test_a_stored_failed_verdict_is_refused(tiny_gpt2, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(V, "cache_root", lambda: tmp_path / "horizon")  # verdicts only
    monkeypatch.delenv(V.ENV_OVERRIDE, raising=False)
    result = V.verify(tiny_gpt2)
    result.checks[-1].passed = False  # as if the attention check had failed
    V.store_verdict(tiny_gpt2, result)
    with pytest.raises(HorizonError, match="failed the attention check of `horizon verify`"):
        V.require_verified(tiny_gpt2)
    V.require_verified(tiny_gpt2, unverified=True)


def test_half_precision_bar_scales_with_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    """bfloat16 rounds the stream at every addition: SmolLM2's 61 additions still pass (error 4e-2)."""
    monkeypatch.delenv(V.ENV_OVERRIDE, raising=False)
    model = load_model("smollm2-135m", device="cpu", dtype="bfloat16", unverified=True)
    checks = {check.name: check for check in V.quick_checks(model)}
    assert checks["decomposition"].passed and checks["decomposition"].bar == pytest.approx(2 * 2**-7 * 61**0.5)
    assert V.decomposition_bar(load_model("tiny-gpt2", device="cpu", unverified=True)) == 1e-5


def test_quick_verdict_is_cached_for_content_keyed_models(smol, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(V, "cache_root", lambda: tmp_path / "horizon")  # verdicts only
    monkeypatch.delenv(V.ENV_OVERRIDE, raising=False)
    V.require_verified(smol)
    stored = V.stored_verdict(smol, "quick")
    assert stored is not None and stored["passed"]
    calls = []
    monkeypatch.setattr(V, "quick_checks", lambda model: calls.append(model) or [])
    V.require_verified(smol)
    assert calls == []  # the stored verdict answered


# ----------------------------------------------------------------------------- every check can fail


def test_a_decomposition_that_misses_a_sublayer_fails(tiny_llama, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last MLP's output missed (the attention output before it hooked in its place): s_0 + sum s_i
    no longer reaches the final residual."""
    real = V._writer_sites
    monkeypatch.setattr(V, "_writer_sites", lambda model: [*real(model)[:-1], real(model)[-2]])
    checks = {check.name: check for check in V.verify(tiny_llama).checks}
    assert checks["decomposition"].passed is False and checks["decomposition"].measured > 1e-2


def test_a_reader_hooked_at_the_wrong_place_fails_the_readers_check(tiny_llama, monkeypatch) -> None:
    """Attention 1's reader hooked where the MLP before it reads: it sees r_2, not r_3."""
    real = V.reader_hook
    monkeypatch.setattr(V, "reader_hook", lambda j, n_layers: real(j - 1 if j == 3 else j, n_layers))
    checks = {check.name: check for check in V.quick_checks(tiny_llama)}
    assert checks["readers"].passed is False and checks["readers"].measured > 1e-2
    assert "blocks.0.ln2.hook_in" in checks["readers"].detail


def test_missing_structure_fails_the_structural_checks(tiny_llama, monkeypatch) -> None:
    """No final norm module, no attention-pattern hooks, no reader site: each presence check fails."""
    bridge_type = type(tiny_llama.bridge)
    real_names = bridge_type.hook_dict.fget(tiny_llama.bridge)
    without = {name: hook for name, hook in real_names.items()
               if "hook_pattern" not in name and name != "blocks.1.ln2.hook_in"}
    monkeypatch.setattr(bridge_type, "hook_dict", property(lambda self: without))
    monkeypatch.setattr(tiny_llama.bridge, "ln_final", None)
    checks = {check.name: check for check in V.structural_checks(tiny_llama)}
    assert checks["sites"].passed is False and "blocks.1.ln2.hook_in" in checks["sites"].detail
    assert checks["final_norm"].passed is False and checks["final_norm"].detail == "none"
    assert checks["attention_hooks"].passed is False and checks["attention_hooks"].measured == tiny_llama.n_layers


def test_a_wrong_reference_fails_the_logits_check(tiny_llama) -> None:
    reference, _ = V.independent_hf_model(tiny_llama)
    ids = V._prompt_ids(tiny_llama, V.VERIFY_PROMPT)
    assert V.logits_check(tiny_llama, ids, reference).passed
    with torch.no_grad():
        reference.lm_head.weight[:, 0] += 0.05  # one column of the head off
    check = V.logits_check(tiny_llama, ids, reference)
    assert check.passed is False and check.measured > check.bar


def test_a_patched_path_that_misses_a_sublayer_fails_the_full_horizon(tiny_llama, monkeypatch) -> None:
    """The engine's outputs without attention 1's (its prefix sums miss it): the full horizon is not
    the clean model any more, while the hooks themselves still decompose."""
    from horizon.core import horizon as H

    ids = V._prompt_ids(tiny_llama, V.VERIFY_PROMPT)
    assert V.full_horizon_check(tiny_llama, ids).measured < 1e-5
    real = H.stack_outputs

    def missing_one(embed, attn, mlp):
        outputs = real(embed, attn, mlp)
        outputs[3] = 0
        return outputs

    monkeypatch.setattr(H, "stack_outputs", missing_one)
    failed = {check.name: check for check in V.verify(tiny_llama).failed}
    assert "full_horizon" in failed and failed["full_horizon"].measured > 1e-2
    assert "decomposition" not in failed and "readout" not in failed


def test_a_wrong_block_replay_fails_the_full_horizon(tiny_llama, monkeypatch) -> None:
    """The staircase replays every block with the clean run's arguments: with the rotary tables of
    the wrong positions the replayed stream is not the clean one."""
    from horizon.core.horizon import CleanRun

    real = CleanRun.block_call

    def shifted(self, layer, copies, cache=None):
        args, kwargs = real(self, layer, copies, cache)
        cos, sin = kwargs["position_embeddings"]
        return args, {**kwargs, "position_embeddings": (cos.roll(1, dims=1), sin.roll(1, dims=1))}

    monkeypatch.setattr(CleanRun, "block_call", shifted)
    check = V.full_horizon_check(tiny_llama, V._prompt_ids(tiny_llama, V.VERIFY_PROMPT))
    assert check.passed is False and check.measured > 1e-3


# ----------------------------------------------------------------------------- versions


def test_verify_and_analyses_record_the_versions_and_device(run_cli, tmp_path, monkeypatch) -> None:
    import importlib.metadata

    import transformers

    monkeypatch.setattr(V, "cache_root", lambda: tmp_path / "horizon")  # verdicts only
    code, out, _ = run_cli("verify", "--model", "tiny-gpt2", "--device", "cpu", "--reference", "loaded")
    assert code == 0 and f"transformers {transformers.__version__}" in out and "TransformerLens 4." in out
    expected = {name: importlib.metadata.version(name)
                for name in ("horizon-inspector", "torch", "transformers", "transformer-lens")}
    for args in (("verify", "--reference", "loaded"), ("norms",), ("scan", "--ks", "1"), ("patch", "--k", "1"),
                 ("attention",), ("truncate", "--lengths", "4")):
        code, out, err = run_cli(*args, "--model", "tiny-gpt2", "--device", "cpu", "--json")
        assert code == 0, (args, err)
        payload = json.loads(out)
        assert {name: payload["versions"][name] for name in expected} == expected, args
        assert payload["device"] == "cpu", args


if __name__ == "__main__":  # print the README table
    sys.stdout.write(family_table({f: verify_family(f) for f in (*V.CLAIMED_FAMILIES, *V.REFUSED_FAMILIES)}) + "\n")
