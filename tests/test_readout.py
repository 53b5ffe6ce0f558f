"""The model's own head: the readout does what the model's forward does after its final norm.

Granite divides its logits by ``logits_scaling``, Gemma 2 softcaps them (``final_logit_softcapping``),
Cohere multiplies them by ``logit_scale``. Tiny models with realistic settings (Granite's multipliers
as real checkpoints use them, logits of about 10-20, where a softcap bites) are scanned and patched by
the engine and compared with the literal computation of tests/hf_reference.py: forward hooks on the
plain HF model, its own forward for the logits.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from horizon.core.analyses.scan.engine import scan
from horizon.core.capture.capture import run_capture
from horizon.core.model.loader import LoadedModel, bundled_tokenizer
from horizon.core.patching import horizon_metrics as HM
from horizon.core.patching.horizon import HorizonConfig, patch

from tests.hf_reference import HFHorizon, bridged, metrics

PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."
METRICS = ("loss", "delta_loss", "kl", "top1_agreement")


def _seeded(config: T.PretrainedConfig, head_scale: float) -> T.PreTrainedModel:
    """Seed-0 random weights, with the (untied) head scaled so the logits are as large as a trained model's."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    finally:
        torch.random.set_rng_state(state)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(head_scale)
    return model


def _common() -> dict:
    return dict(vocab_size=len(bundled_tokenizer()), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=False)


def granite_hf() -> T.PreTrainedModel:
    """Granite 3's multipliers (embedding 12, residual 0.22, attention 1/64, logits / 8)."""
    return _seeded(T.GraniteConfig(**_common(), embedding_multiplier=12.0, residual_multiplier=0.22,
                                   attention_multiplier=0.015625, logits_scaling=8.0), head_scale=100.0)


def gemma2_hf() -> T.PreTrainedModel:
    """Gemma 2's final softcap (30) with logits of about 20, where tanh is far from linear."""
    return _seeded(T.Gemma2Config(**_common(), head_dim=16, final_logit_softcapping=30.0), head_scale=35.0)


BUILDERS = {"granite": granite_hf, "gemma2": gemma2_hf}


@pytest.fixture(scope="module", params=list(BUILDERS))
def pair(request: pytest.FixtureRequest) -> tuple[LoadedModel, HFHorizon]:
    hf_model = BUILDERS[request.param]()
    return bridged(hf_model), HFHorizon(hf_model)


def _ids(model: LoadedModel) -> torch.Tensor:
    return torch.tensor([[1, *model.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]])


def test_the_post_head_steps_come_from_the_models_config(pair: tuple[LoadedModel, HFHorizon]) -> None:
    model, reference = pair
    expected = {"granite": (("divide", 8.0, "logits_scaling"),),
                "gemma2": (("softcap", 30.0, "final_logit_softcapping"),)}[model.architecture]
    assert HM.post_head(model).steps == expected
    logits, _, _ = reference.run(_ids(model))
    big = float(logits.abs().max())
    assert big > 8  # large enough for the step to matter: a readout without it is far off (below)


def test_the_readout_of_the_final_residual_is_the_models_logits(pair: tuple[LoadedModel, HFHorizon]) -> None:
    model, reference = pair
    ids = _ids(model)
    capture = run_capture(model, ids, ("final",))
    own, _, _ = reference.run(ids)
    engine = HM.readout_logits(model, capture["final"])
    assert float((engine - own).abs().max()) <= 1e-5 * float(own.abs().max())


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_scan_matches_plain_transformers(pair: tuple[LoadedModel, HFHorizon], ablation: str) -> None:
    """Every horizon K = 1..5 sublayers (L = 2: K = 5 is the clean model): clean loss, Δloss, KL, top-1."""
    model, reference = pair
    ids = _ids(model)
    result = scan(model, ids.tolist(), ks=[1, 2, 3, 4, 5], unit="sublayer", ablation=ablation)
    clean, _, _ = reference.run(ids)
    means = reference.means(ids) if ablation == "mean" else None
    for row in result.rows:
        expected = metrics(clean, reference.patched(ids, row["k"], ablation=ablation, means=means), ids)
        assert result.loss_clean == pytest.approx(expected["loss_clean"], rel=1e-6)
        for name in METRICS:
            assert row[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-5), (row["k"], name)
    assert result.rows[0]["kl"] > 1e-2  # the horizons do change the predictions


@pytest.mark.parametrize("source", ["recursive", "clean"])
def test_patch_logits_match_plain_transformers(pair: tuple[LoadedModel, HFHorizon], source: str) -> None:
    model, reference = pair
    ids = _ids(model)
    for ablation in ("zero", "mean"):
        means = reference.means(ids) if ablation == "mean" else None
        expected = reference.patched(ids, 2, source=source, ablation=ablation, means=means)
        result = patch(model, ids.tolist(), HorizonConfig(2, source=source, ablation=ablation), keep_logits=True)
        assert result.logits is not None
        assert float((result.logits[0] - expected[0]).abs().max()) <= 1e-4 * float(expected.abs().max())
        clean, _, _ = reference.run(ids)
        assert result.kl == pytest.approx(metrics(clean, expected, ids)["kl"], rel=1e-4, abs=1e-6)


def test_without_the_post_head_step_the_numbers_are_wrong(pair: tuple[LoadedModel, HFHorizon],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What the tests above would catch: the readout without the model's step (the engine before)."""
    model, reference = pair
    ids = _ids(model)
    monkeypatch.setattr(HM, "POST_HEAD", ())
    row = scan(model, ids.tolist(), ks=[1], unit="sublayer").rows[0]
    clean, _, _ = reference.run(ids)
    expected = metrics(clean, reference.patched(ids, 1), ids)
    assert abs(row["loss"] - expected["loss"]) > 0.1


def test_cohere_multiplies_by_its_logit_scale() -> None:
    """Cohere's head: logits * logit_scale (its blocks are parallel, so only the readout applies)."""
    config = T.CohereConfig(**{**_common(), "tie_word_embeddings": True}, logit_scale=0.125)
    hf_model = _seeded(config, head_scale=50.0)
    model = bridged(hf_model)
    assert HM.post_head(model).describe() == "logits * 0.125 (logit_scale)"
    ids = _ids(model)
    capture = run_capture(model, ids, ("final",))
    with torch.inference_mode():
        own = hf_model(ids).logits
    assert float((HM.readout_logits(model, capture["final"]) - own).abs().max()) <= 1e-5 * float(own.abs().max())


# ----------------------------------------------------------------------------- verify catches a wrong readout


def test_verify_passes_the_right_readout_and_fails_a_dropped_step(pair: tuple[LoadedModel, HFHorizon],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the model's post-head step the readout and the full horizon fail, with the error."""
    from horizon.core.checks import verify as V

    model, reference = pair
    result = V.verify(model, reference=reference.hf)
    assert result.passed, [(c.name, c.measured, c.detail) for c in result.failed]
    checks = {check.name: check for check in result.checks}
    assert checks["readout"].measured < 1e-6 and HM.post_head(model).describe() in checks["readout"].detail
    assert checks["full_horizon"].measured < 1e-4
    monkeypatch.setattr(HM, "POST_HEAD", ())
    failed = {check.name: check for check in V.verify(model, reference=reference.hf).failed}
    assert sorted(failed) == ["full_horizon", "readout"]
    assert all(check.measured > 100 * check.bar for check in failed.values()), failed


def test_a_model_whose_head_is_not_reproduced_is_refused_at_load(pair: tuple[LoadedModel, HFHorizon],
                                                                 monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The quick checks (every load) include the readout: an unknown post-head step is one line, not wrong losses."""
    from horizon.core.checks import verify as V
    from horizon.core.errors import HorizonError

    model, _ = pair
    monkeypatch.setattr(V, "cache_root", lambda: tmp_path / "horizon")  # verdicts only
    monkeypatch.delenv(V.ENV_OVERRIDE, raising=False)
    monkeypatch.setitem(model.extra, "verified", None)
    V.require_verified(model)
    monkeypatch.setattr(V, "cache_root", lambda: tmp_path / "other")  # no stored quick verdict to answer
    monkeypatch.setattr(HM, "POST_HEAD", ())
    assert [check.name for check in V.quick_checks(model) if check.passed is False] == ["readout"]
    with pytest.raises(HorizonError, match="failed the readout check") as refused:
        V.require_verified(model)
    assert "\n" not in str(refused.value) and "measured" in str(refused.value)
