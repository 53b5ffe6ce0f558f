"""Weight analysis: OV norms two ways, weight norms, the random-input and resampled MLP probes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from horizon.core.analyses.norms.weights import (
    ov_frobenius,
    resample_coordinates,
    standardised_normal,
    weight_norms,
    weight_report,
    with_processing,
)
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel, _tiny_hf_model, load_model
from horizon.core.model.prompts import tokenize

from tests.conftest import SHORT_PROMPT


@pytest.fixture(scope="module")
def plain_tiny_llama(tiny_llama: LoadedModel):
    """A fresh HF instance with the same seeded weights (the bridge wraps its own HF modules)."""
    return _tiny_hf_model("tiny-llama", len(tiny_llama.tokenizer))


def explicit_ov_norms(hf_model, n_heads: int, n_kv_heads: int, layers: list[int]) -> np.ndarray:
    """||W_V W_O||_F per head from the full d_model x d_model product of the raw HF weights."""
    out = []
    for layer in (hf_model.model.layers[index] for index in layers):
        w_v = layer.self_attn.v_proj.weight.detach().double()  # [n_kv * d_head, d_model]
        w_o = layer.self_attn.o_proj.weight.detach().double()  # [d_model, n_heads * d_head]
        d_head = w_o.shape[1] // n_heads
        group = n_heads // n_kv_heads
        row = []
        for head in range(n_heads):
            kv = head // group
            product = w_v[kv * d_head : (kv + 1) * d_head].T @ w_o[:, head * d_head : (head + 1) * d_head].T
            row.append(float(torch.linalg.matrix_norm(product)))
        out.append(row)
    return np.array(out)


def test_ov_norms_product_and_factored_agree_with_gqa(smol: LoadedModel) -> None:
    assert smol.n_kv_heads < smol.n_heads  # the bundled model really groups its K/V heads
    norms = np.array(weight_norms(smol)["W_OV_frobenius"])
    assert norms.shape == (smol.n_layers, smol.n_heads)
    layers = [0, smol.n_layers // 2, smol.n_layers - 1]  # the full products are slow: three layers
    expected = explicit_ov_norms(smol.hf_model, smol.n_heads, smol.n_kv_heads, layers)
    np.testing.assert_allclose(norms[layers], expected, rtol=1e-5)


def test_ov_frobenius_formula() -> None:
    generator = torch.Generator().manual_seed(1)
    w_v = torch.randn(3, 16, 4, generator=generator)
    w_o = torch.randn(3, 4, 16, generator=generator)
    expected = torch.linalg.matrix_norm((w_v @ w_o).double())
    torch.testing.assert_close(ov_frobenius(w_v, w_o), expected)


def test_layer_weight_norms_match_hf(tiny_llama: LoadedModel, tiny_gpt2: LoadedModel, plain_tiny_llama) -> None:
    norms = weight_norms(tiny_llama)
    names = {"W_Q": "self_attn.q_proj", "W_K": "self_attn.k_proj", "W_V": "self_attn.v_proj",
             "W_O": "self_attn.o_proj", "W_in": "mlp.up_proj", "W_gate": "mlp.gate_proj", "W_out": "mlp.down_proj"}
    for key, module in names.items():
        expected = [float(layer.get_submodule(module).weight.detach().double().norm())
                    for layer in plain_tiny_llama.model.layers]
        np.testing.assert_allclose(norms[key], expected, rtol=1e-6, err_msg=key)
    assert norms["b_O"] is None  # Llama attention has no output bias
    gpt2 = weight_norms(tiny_gpt2)
    assert gpt2["W_gate"] is None
    expected_bias = [float(block.attn.c_proj.bias.detach().double().norm())
                     for block in tiny_gpt2.hf_model.transformer.h]
    np.testing.assert_allclose(gpt2["b_O"], expected_bias, atol=1e-12)
    assert np.array(gpt2["W_OV_frobenius"]).shape == (tiny_gpt2.n_layers, tiny_gpt2.n_heads)


def test_random_inputs_are_standardised() -> None:
    vectors = standardised_normal(64, 576, seed=3)
    assert vectors.shape == (64, 576)
    torch.testing.assert_close(vectors.mean(dim=-1), torch.zeros(64, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(vectors.var(dim=-1, correction=0), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(standardised_normal(64, 576, seed=3), vectors)
    assert not torch.allclose(standardised_normal(64, 576, seed=4), vectors)


def test_random_and_real_probes_match_plain_hf(tiny_llama: LoadedModel, plain_tiny_llama) -> None:
    token_ids = tokenize(tiny_llama, [SHORT_PROMPT, "Water boils at one hundred degrees."])
    report = weight_report(tiny_llama, "raw", token_ids, has_bos=True, batch_size=2, n_random=128)
    inputs = standardised_normal(128, tiny_llama.d_model).float()
    gates: list[list[torch.Tensor]] = [[] for _ in plain_tiny_llama.model.layers]
    handles = [
        layer.mlp.gate_proj.register_forward_hook(lambda module, args, output, i=index: gates[i].append(output[0]))
        for index, layer in enumerate(plain_tiny_llama.model.layers)
    ]
    try:
        with torch.inference_mode():
            for ids in token_ids:
                plain_tiny_llama(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    for index, layer in enumerate(plain_tiny_llama.model.layers):
        with torch.inference_mode():
            normed = layer.post_attention_layernorm(inputs)
            output = layer.mlp(normed)
            gate = layer.mlp.gate_proj(normed)
        assert report["mlp_out_random"][index] == pytest.approx(float(output.double().norm(dim=-1).mean()), rel=1e-5)
        # A gate within float noise of 0 may fall on the other side in another kernel: allow one.
        rate = float((gate > 0).double().mean())
        assert report["neuron_rate_random"][index] == pytest.approx(rate, abs=1.5 / gate.numel())
        real = torch.cat([g[1:] for g in gates[index]])  # BOS (position 0) excluded
        assert report["neuron_rate_real"][index] == pytest.approx(float((real > 0).double().mean()), abs=1e-3)
    assert report["kind"] == "gate"
    assert all(0.0 < rate < 1.0 for rate in report["neuron_rate_resampled"])


def test_resampling_draws_each_coordinate_from_its_column() -> None:
    pool = torch.arange(40, dtype=torch.float32).reshape(8, 5)  # column c holds c, c+5, ..., c+35
    resampled = resample_coordinates(pool, 100, seed=2)
    assert resampled.shape == (100, 5)
    assert torch.all(resampled.remainder(5) == torch.arange(5))
    # Coordinates are drawn independently: rows of the result are not rows of the pool.
    assert not all(any(torch.equal(row, source) for source in pool) for row in resampled)


@pytest.fixture(scope="module")
def llama_with_scaled_norms() -> LoadedModel:
    """A private tiny-llama whose RMSNorm weights are not all ones, so folding them shows."""
    model = load_model("tiny-llama", device="cpu")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.hf_model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.copy_(0.5 + 2 * torch.rand(norm.weight.shape, generator=generator))
    return model


def test_tl_processing_folds_rms_weights_on_a_copy(llama_with_scaled_norms: LoadedModel) -> None:
    model = llama_with_scaled_norms
    raw = weight_report(model, "raw", n_random=64)
    processed = weight_report(model, "tl", n_random=64)
    layers = model.hf_model.model.layers
    # fold_ln multiplies each reading weight's input dimension by its RMSNorm weight.
    with torch.no_grad():
        expected_q = [float((layer.self_attn.q_proj.weight * layer.input_layernorm.weight).double().norm())
                      for layer in layers]
        expected_in = [float((layer.mlp.up_proj.weight * layer.post_attention_layernorm.weight).double().norm())
                       for layer in layers]
    np.testing.assert_allclose(processed["W_Q"], expected_q, rtol=1e-5)
    np.testing.assert_allclose(processed["W_in"], expected_in, rtol=1e-5)
    # The caller's model keeps its raw weights.
    assert not getattr(model.bridge, "_weights_processed", False)
    np.testing.assert_allclose(weight_norms(model)["W_Q"], raw["W_Q"])
    assert not np.allclose(raw["W_Q"], processed["W_Q"])
    # Folding changes no function: the random-input MLP outputs are those of the raw model.
    np.testing.assert_allclose(processed["mlp_out_random"], raw["mlp_out_random"], rtol=1e-4)
    np.testing.assert_allclose(processed["neuron_rate_random"], raw["neuron_rate_random"], atol=1e-3)


def test_unsupported_processing_is_a_clear_error() -> None:
    model = SimpleNamespace(
        spec="odd-model", architecture="odd",
        bridge=SimpleNamespace(adapter=SimpleNamespace(supports_compatibility_mode=False), _weights_processed=False),
    )
    with pytest.raises(HorizonError, match="--processing tl is not available"):
        with_processing(model, "tl")  # type: ignore[arg-type]
    with pytest.raises(HorizonError, match="unknown --processing"):
        with_processing(model, "folded")  # type: ignore[arg-type]


def test_cli_weights_json(run_cli, tiny_llama: LoadedModel) -> None:
    code, out, _ = run_cli("norms", "-m", "tiny-llama", "--weights", "--json", "--prompt", SHORT_PROMPT)
    assert code == 0
    weights = json.loads(out)["weights"]
    n_layers = tiny_llama.n_layers
    for key in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out", "mlp_out_random", "neuron_rate_real",
                "neuron_rate_random", "neuron_rate_resampled"):
        assert len(weights[key]) == n_layers, key
    assert np.array(weights["W_OV_frobenius"]).shape == (n_layers, tiny_llama.n_heads)
    assert weights["b_O"] is None and weights["processing"] == "raw"


def test_cli_tl_processing_centres_the_residual_stream(run_cli, tiny_gpt2: LoadedModel) -> None:
    """centre_writing_weights makes every residual vector mean-zero: then std == norm / sqrt(d_model)."""
    code, out, _ = run_cli("norms", "-m", "tiny-gpt2", "--processing", "tl", "--json", "--prompt", SHORT_PROMPT)
    assert code == 0
    data = json.loads(out)
    assert data["processing"] == "tl"
    entry = data["sites"]["resid_pre"]
    norms = np.array(entry["per_position"])
    stds = np.array(entry["per_position_std"])
    np.testing.assert_allclose(stds, norms / np.sqrt(tiny_gpt2.d_model), rtol=1e-4)
