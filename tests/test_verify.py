"""`horizon verify` and the refusal of unverified models, on tiny random-weight models of every family.

Each family is built from transformers' own config class (no download) with seeded random
weights and non-default config values (tests/families.py), bridged like ``load_model`` bridges
every model, verified against a second, independently built copy, and its residual norms and
patched losses held to that copy's plain HF hooks. The README's table of claimed families is
generated from these results (``python -m tests.test_verify`` prints it) and checked here.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from horizon.core.checks import verify as V
from horizon.core.checks import verify_checks, verify_full
from horizon.core.errors import HorizonError
from horizon.core.model.loader import load_model

from tests.families import family_model, hf_family_model, plain_run

__all__ = ["family_model"]  # tests/test_position_chunks.py builds its family models here

ROOT = Path(__file__).resolve().parents[1]
TABLE_START, TABLE_END = "<!-- families:start -->", "<!-- families:end -->"
CHECK_COLUMNS = ("sites", "final_norm", "decomposition", "readers", "logits", "readout", "full_horizon", "chunking",
                 "attention")


@dataclass
class FamilyResult:
    """Everything measured on one tiny family model against its independently built plain HF copy."""

    verification: V.Verification
    parallel: bool
    norm_error: float  # worst relative error of our per-position stream norms vs the plain HF hooks'
    clean_loss: tuple[float, float]  # (ours, plain HF)
    # (K, our loss, plain loss, our logits' error vs plain, how far plain's logits moved from clean)
    patched: list[tuple[int, float, float, float, float]] = field(default_factory=list)


def _mean_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    return float(F.cross_entropy(logits[0, :-1].double(), input_ids[0, 1:]))


def measure_family(family: str) -> FamilyResult:
    """Verify ``family`` and hold its norms and patched losses to plain HF hooks (tests/families.py)."""
    from horizon.core.analyses.norms.engine import analyse_norms
    from horizon.core.patching.horizon import HorizonConfig, clean_runs, patch

    model = family_model(family)
    reference = hf_family_model(family, len(model.tokenizer))
    verification = V.verify(model, reference=reference)
    result = FamilyResult(verification, model.parallel_attn_mlp, float("nan"), (float("nan"), float("nan")))
    if not verification.checks[0].passed:  # refused: no reader sites to measure at
        return result
    ids = V._prompt_ids(model, V.VERIFY_PROMPT)
    clean_logits, stream = plain_run(reference, ids, model.parallel_attn_mlp)
    # Readers' inputs: resid_pre_i (sequential: then resid_mid_i) per layer, then the final residual.
    per_layer = 1 if model.parallel_attn_mlp else 2
    assert len(stream) == per_layer * model.n_layers + 1, "a plain norm module ran more than once"
    expected = {"resid_pre": [stream[per_layer * i] for i in range(model.n_layers)] + [stream[-1]]}
    expected["resid_post"] = expected["resid_pre"][1:]
    if not model.parallel_attn_mlp:
        expected["resid_mid"] = [stream[2 * i + 1] for i in range(model.n_layers)]
    report = analyse_norms(model, ids.tolist(), has_bos=True, include_bos=True)
    result.norm_error = max(
        float(np.abs(report.norms[site][0][row] - plain[0].double().norm(dim=-1).numpy()).max()
              / plain[0].double().norm(dim=-1).max())
        for site, rows in expected.items() for row, plain in enumerate(rows)
    )
    if model.parallel_attn_mlp:
        return result  # the horizon is refused on parallel blocks
    token_ids = ids.tolist()
    cleans = clean_runs(model, token_ids)  # one clean run for every K
    plain_logits, _ = plain_run(reference, ids, horizons=list(HORIZONS))  # one batch row per K
    for row, horizon in enumerate(HORIZONS):
        ours = patch(model, token_ids, HorizonConfig(horizon), keep_logits=True, cleans=cleans)
        plain = plain_logits[row : row + 1].double()
        scale = plain[0].abs().max()
        error = float((ours.logits[0].double() - plain[0]).abs().max() / scale)
        moved = float((plain[0] - clean_logits[0].double()).abs().max() / scale)
        result.patched.append((horizon, ours.loss_patched, _mean_ce(plain, ids), error, moved))
        result.clean_loss = (ours.loss_clean, _mean_ce(clean_logits, ids))
    return result


# K = 1..4 sublayers on 2 layers: every reader from the first MLP on reads a window, the last
# (K = 4 = 2L) drops only the embedding.
HORIZONS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def measured() -> dict[str, FamilyResult]:
    """Every family built once (and its plain copy once), measured once, for all the tests below."""
    return {family: measure_family(family) for family in (*V.CLAIMED_FAMILIES, *V.REFUSED_FAMILIES)}


@pytest.fixture(scope="module")
def verified(measured: dict[str, FamilyResult]) -> dict[str, V.Verification]:
    return {family: result.verification for family, result in measured.items()}


def verify_family(family: str) -> V.Verification:
    model = family_model(family)
    return V.verify(model, reference=hf_family_model(family, len(model.tokenizer)))


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
def test_claimed_family_passes_every_check(family: str, measured: dict[str, FamilyResult]) -> None:
    result = measured[family].verification
    assert result.passed, [(c.name, c.measured, c.detail) for c in result.failed]
    names = {check.name for check in result.checks}
    assert set(CHECK_COLUMNS) <= names
    horizon = next(check for check in result.checks if check.name == "full_horizon")
    parallel = measured[family].parallel
    assert horizon.passed is (None if parallel else True)
    assert parallel == ("parallel attention" in V.CLAIMED_FAMILIES[family][1])  # the table says which


@pytest.mark.parametrize("family", list(V.CLAIMED_FAMILIES))
def test_claimed_family_gives_plain_hf_numbers(family: str, measured: dict[str, FamilyResult]) -> None:
    """Per-position norms of every stream site, the clean loss and the patched losses at K = 1..4
    equal an independent computation with plain HF hooks on a second copy of the model."""
    result = measured[family]
    assert result.norm_error <= 1e-5, result.norm_error
    if result.parallel:
        assert result.patched == []
        return
    ours, plain = result.clean_loss
    assert ours == pytest.approx(plain, abs=1e-5)
    assert [k for k, *_ in result.patched] == list(HORIZONS)
    for horizon, loss, plain_loss, logit_error, moved in result.patched:
        assert logit_error <= 1e-5, (horizon, logit_error)
        assert loss == pytest.approx(plain_loss, abs=1e-5), horizon
        # The comparison can fail: every patch moves the logits 100x beyond the tolerance.
        assert moved > 1e-3, (horizon, moved)


@pytest.mark.parametrize("family", list(V.REFUSED_FAMILIES))
def test_refused_family_fails_a_named_check(family: str, measured: dict[str, FamilyResult]) -> None:
    result = measured[family].verification
    assert [check.name for check in result.failed] == ["sites"]
    assert result.failed[0].detail == V.POST_NORM


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
    monkeypatch.setattr(verify_full, "sliding_windows", lambda m: [2, None])
    assert V.attention_check(model, ids).passed is False


def test_attention_check_understands_sinks(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpt-oss rows sum to 1 minus the sink's share; a check blind to sinks sees rows far from 1."""
    model = family_model("gpt_oss")
    ids = V._prompt_ids(model, V.VERIFY_PROMPT)
    check = V.attention_check(model, ids)
    assert check.passed and "sinks on 2 layer(s)" in check.detail, check
    monkeypatch.setattr(verify_full, "_attention_sinks", lambda m: [None] * m.n_layers)
    blind = V.attention_check(model, ids)
    assert blind.passed is False and blind.measured > 0.1  # HF's rows sum to 0.49-0.96 by design


def test_attention_check_catches_wrong_sinks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink term is measured, not assumed: other sink logits than the model's fail the check."""
    model = family_model("gpt_oss")
    ids = V._prompt_ids(model, V.VERIFY_PROMPT)
    real = verify_full._attention_sinks
    monkeypatch.setattr(verify_full, "_attention_sinks", lambda m: [sink + 1.0 for sink in real(m)])
    assert V.attention_check(model, ids).passed is False


def test_norm_epsilons_come_from_the_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """StarCoder2 names its epsilon norm_epsilon, which the bridge does not read: without the
    loader's alignment every norm used 1e-5 instead of the model's 1e-4 and the logits were off."""
    from horizon.core.model import loaded_model

    model = family_model("starcoder2")
    reference = hf_family_model("starcoder2", len(model.tokenizer))
    ids = V._prompt_ids(model, V.VERIFY_PROMPT)
    assert V.logits_check(model, ids, reference).passed
    monkeypatch.setattr(loaded_model, "_align_norm_epsilons", lambda bridge: None)
    unaligned = V.logits_check(family_model("starcoder2"), ids, reference)
    assert unaligned.passed is False and unaligned.measured > 1e-2


def test_a_config_that_breaks_the_decomposition_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BLOOM with apply_residual_connection_post_layernorm adds the *normed* stream back: the
    residual is not the sum of the sublayer outputs, and the load checks say so."""
    monkeypatch.setattr(V, "cache_root", lambda: tmp_path)
    monkeypatch.delenv(V.ENV_OVERRIDE, raising=False)
    with pytest.raises(HorizonError, match="failed the decomposition check") as caught:
        V.require_verified(family_model("bloom_post_ln_residual"))
    assert "\n" not in str(caught.value) and len(str(caught.value)) <= 200


@pytest.mark.parametrize("family", list(V.REFUSED_FAMILIES))
def test_refused_family_is_one_line_saying_why(family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(V, "cache_root", lambda: tmp_path)
    monkeypatch.delenv(V.ENV_OVERRIDE, raising=False)
    with pytest.raises(HorizonError) as caught:
        V.require_verified(family_model(family))
    message = str(caught.value)
    assert "\n" not in message and len(message) <= 200, message
    assert "post-norm" in message and "ln1.hook_in" not in message


@pytest.mark.parametrize("family", ["biogpt", "falcon_new_decoder"])
def test_an_unbridgeable_architecture_is_one_short_line(family: str) -> None:
    """BioGPT has no TransformerLens adapter (the old message listed 180 architectures, 4,200
    characters); Falcon's new decoder architecture has one that fails on it."""
    with pytest.raises(HorizonError) as caught:
        family_model(family)
    message = str(caught.value)
    assert "\n" not in message and len(message) <= 200, message
    assert "BioGptForCausalLM" in message if family == "biogpt" else "cannot bridge" in message


def test_class_names_are_matched_without_case() -> None:
    """transformers builds PhimoeForCausalLM; TransformerLens registers PhiMoEForCausalLM."""
    from horizon.core.model.loader import adapter_architecture

    from tests.families import tokenizer

    hf = hf_family_model("phimoe", len(tokenizer()))
    assert type(hf).__name__ == "PhimoeForCausalLM" and adapter_architecture(hf) == "PhiMoEForCausalLM"


def test_attention_report_marks_windowed_and_global_layers() -> None:
    """On a Gemma 3 layout (window 4, then a global layer) the windowed layer has no mass beyond it."""
    from horizon.core.analyses.attention.engine import attention_distance
    from horizon.core.model.prompts import tokenize

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
    real = verify_checks.output_hook
    monkeypatch.setattr(verify_checks, "output_hook", lambda j: real(j).replace("hook_mlp_out", "mlp.hook_in"))


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


def test_a_directory_is_judged_by_its_content_not_its_path(run_cli, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Verdicts follow the weights: the same directory gets the same answer whether or not
    `verify` ran first, and a stored verdict of other content never answers for it.

    The break is real: BLOOM's apply_residual_connection_post_layernorm adds the normed stream back,
    so the decomposition fails (same weights, one config flag)."""
    from horizon.core.model import model_files

    from tests.families import save_family_dir

    monkeypatch.setattr(V, "cache_root", lambda: tmp_path / "cache")  # verdicts
    monkeypatch.setattr(model_files, "cache_root", lambda: tmp_path / "cache")  # content hashes
    monkeypatch.delenv(V.ENV_OVERRIDE, raising=False)
    directory = save_family_dir("bloom", tmp_path / "bloom")
    config_file = directory / "config.json"
    good = config_file.read_bytes()

    def set_config(broken: bool) -> None:
        changed = {**json.loads(good), "apply_residual_connection_post_layernorm": True}
        config_file.write_bytes(json.dumps(changed).encode() if broken else good)

    def status() -> str:
        try:
            return load_model(str(directory), device="cpu").extra["verified"]
        except HorizonError as exc:
            assert "\n" not in str(exc) and len(str(exc)) <= 200
            return "refused: " + str(exc)

    assert status() == "quick"  # never verified: the load checks pass
    code, _, _ = run_cli("verify", "--model", str(directory), "--device", "cpu")
    assert code == 0 and status() == "full"
    set_config(broken=True)
    assert "failed the decomposition check" in status()  # the stored pass is of other content
    code, _, _ = run_cli("verify", "--model", str(directory), "--device", "cpu")
    assert code == 1  # stored: a failed verdict of the broken content
    set_config(broken=False)
    assert status() == "full"  # fixed: its own verdict answers, not the broken content's
    set_config(broken=True)
    assert "failed the decomposition check of `horizon verify`" in status()  # broken again, no verify run
    stored = sorted(path.name for path in (tmp_path / "cache" / "verified").glob("*.full.json"))
    assert len(stored) == 2  # one full verdict per content


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
    real = verify_checks._writer_sites
    monkeypatch.setattr(verify_checks, "_writer_sites", lambda model: [*real(model)[:-1], real(model)[-2]])
    checks = {check.name: check for check in V.verify(tiny_llama).checks}
    assert checks["decomposition"].passed is False and checks["decomposition"].measured > 1e-2


def test_a_reader_hooked_at_the_wrong_place_fails_the_readers_check(tiny_llama, monkeypatch) -> None:
    """Attention 1's reader hooked where the MLP before it reads: it sees r_2, not r_3."""
    real = verify_checks.reader_hook
    monkeypatch.setattr(verify_checks, "reader_hook", lambda j, n_layers: real(j - 1 if j == 3 else j, n_layers))
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
    from horizon.core.patching import horizon_clean

    ids = V._prompt_ids(tiny_llama, V.VERIFY_PROMPT)
    assert V.full_horizon_check(tiny_llama, ids).measured < 1e-5
    real = horizon_clean.stack_outputs

    def missing_one(embed, attn, mlp):
        outputs = real(embed, attn, mlp)
        outputs[3] = 0
        return outputs

    monkeypatch.setattr(horizon_clean, "stack_outputs", missing_one)
    failed = {check.name: check for check in V.verify(tiny_llama).failed}
    assert "full_horizon" in failed and failed["full_horizon"].measured > 1e-2
    assert "decomposition" not in failed and "readout" not in failed


def test_a_wrong_block_replay_fails_the_full_horizon(tiny_llama, monkeypatch) -> None:
    """The staircase replays every block with the clean run's arguments: with the rotary tables of
    the wrong positions the replayed stream is not the clean one."""
    from horizon.core.patching.horizon import CleanRun

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
