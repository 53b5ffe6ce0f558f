"""The capture engine against the decomposition invariant and plain HF modules (no bridge)."""

from __future__ import annotations

import pytest
import torch
from horizon.core.capture.capture import run_capture
from horizon.core.capture.decomposition import SITES, residual_reads, stack_outputs, window_read
from horizon.core.model.gguf_files import bundled_gguf_path, gguf_cache_dir
from horizon.core.model.loader import LoadedModel, _tiny_hf_model
from horizon.core.model.prompts import batches, tokenize

from tests.conftest import SHORT_PROMPT


def fresh_hf_model(model: LoadedModel):
    """An HF model with the same weights that the bridge never touched: the independent reference."""
    if model.spec in ("tiny-llama", "tiny-gpt2"):
        return _tiny_hf_model(model.spec, len(model.tokenizer))
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(gguf_cache_dir(bundled_gguf_path())), dtype=torch.float32, attn_implementation="eager"
    ).eval()


def decoder_layers(hf_model) -> list[torch.nn.Module]:
    inner = getattr(hf_model, "model", None) or hf_model.transformer
    return list(getattr(inner, "layers", None) or inner.h)


def final_norm(hf_model) -> torch.nn.Module:
    inner = getattr(hf_model, "model", None) or hf_model.transformer
    return getattr(inner, "norm", None) or inner.ln_f


def ids_for(model: LoadedModel, text: str = SHORT_PROMPT) -> torch.Tensor:
    return torch.tensor([tokenize(model, [text])[0]])


@pytest.mark.parametrize("spec", ["tiny_llama", "tiny_gpt2", "smol"])
def test_outputs_sum_to_final_residual(spec: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(spec)
    capture = run_capture(model, ids_for(model), ["embed", "attn_out", "mlp_out", "final"])
    total = capture.outputs().sum(dim=0)
    relative = (total - capture["final"]).norm() / capture["final"].norm()
    assert relative < 1e-5


@pytest.mark.parametrize("spec", ["tiny_llama", "tiny_gpt2", "smol"])
def test_residual_sites_match_plain_hf_pre_hooks(spec: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(spec)
    ids = ids_for(model)
    capture = run_capture(model, ids, SITES, keep_logits=True)

    reference = fresh_hf_model(model)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(
            lambda module, args, kwargs, i=i: seen.__setitem__(
                f"pre{i}", (args[0] if args else kwargs["hidden_states"]).clone()
            ),
            with_kwargs=True,
        )
        for i, layer in enumerate(decoder_layers(reference))
    ]
    handles.append(
        final_norm(reference).register_forward_pre_hook(lambda m, args: seen.__setitem__("final", args[0].clone()))
    )
    with torch.inference_mode():
        logits = reference(ids).logits
    for handle in handles:
        handle.remove()

    for layer in range(model.n_layers):
        expected = seen[f"pre{layer}"]
        assert torch.allclose(capture["resid_pre"][layer], expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert torch.allclose(capture["final"], seen["final"], rtol=1e-4, atol=1e-4 * seen["final"].abs().max().item())
    assert torch.allclose(capture.logits, logits, atol=1e-3)
    # The derived reads agree with the hooked sites: reads[j-1] = r_j, resid_pre_i = r_{2i+1},
    # resid_mid_i = r_{2i+2}, resid_post_i = r_{2i+3}.
    reads = residual_reads(capture.outputs())
    scale = capture["final"].abs().max().item()
    last = model.n_layers - 1
    assert torch.allclose(reads[2 * last], capture["resid_pre"][last], atol=1e-5 * scale)
    assert torch.allclose(reads[2 * last + 1], capture["resid_mid"][last], atol=1e-5 * scale)
    assert torch.allclose(reads[2 * last + 2], capture["resid_post"][last], atol=1e-5 * scale)


def test_padded_batch_matches_single_prompts(tiny_llama: LoadedModel) -> None:
    token_ids = tokenize(tiny_llama, ["A short one.", "A much longer prompt that needs several more tokens to say."])
    batch = batches(tiny_llama, token_ids, has_bos=True, batch_size=2)[0]
    together = run_capture(tiny_llama, batch.input_ids, ["resid_pre", "final"])
    for row, ids in enumerate(token_ids):
        alone = run_capture(tiny_llama, torch.tensor([ids]), ["resid_pre", "final"])
        length = len(ids)
        assert torch.allclose(together["final"][row, :length], alone["final"][0], atol=1e-5)
        assert torch.allclose(together["resid_pre"][:, row, :length], alone["resid_pre"][:, 0], atol=1e-5)
    assert batch.mask.sum().item() == sum(len(ids) for ids in token_ids)
    assert not batch.stat_mask()[:, 0].any()


def test_reduce_keeps_only_what_is_asked(tiny_gpt2: LoadedModel) -> None:
    ids = ids_for(tiny_gpt2)
    full = run_capture(tiny_gpt2, ids, ["resid_pre"])
    norms = run_capture(tiny_gpt2, ids, ["resid_pre"], reduce=lambda site, x: x.norm(dim=-1))
    assert norms["resid_pre"].shape == full["resid_pre"].shape[:-1]
    assert torch.allclose(norms["resid_pre"], full["resid_pre"].norm(dim=-1))


def test_window_read_definition() -> None:
    outputs = torch.arange(7, dtype=torch.float32).reshape(7, 1) + 1  # s_0..s_6 = 1..7
    assert window_read(outputs, j=5, horizon_sublayers=2).item() == 4 + 5  # s_3 + s_4
    assert window_read(outputs, j=5, horizon_sublayers=2, keep_embed=True).item() == 1 + 4 + 5
    assert window_read(outputs, j=2, horizon_sublayers=9).item() == 1 + 2  # window still holds s_0
    embed, attn, mlp = torch.tensor([1.0]), torch.tensor([[2.0], [4.0]]), torch.tensor([[3.0], [5.0]])
    assert stack_outputs(embed, attn, mlp).flatten().tolist() == [1, 2, 3, 4, 5]
