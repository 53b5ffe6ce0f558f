"""Tiny models of every architecture family, and the same numbers computed with plain HF hooks.

Each family is built from transformers' own config class (no download) with seeded random
weights: 2 layers, d_model 64, and values away from the defaults where the family has them
(biases, partial rotary, rope scaling, norm epsilons, head counts, sinks, expert counts), so a
bridge that ignored one would give other numbers. ``family_model`` boots it the way
``load_model`` does (core/model/loader.py ``bridged_model``); ``plain_run`` computes the residual
stream and a horizon patch with nothing but torch hooks on a second, independently built copy.

The plain computation does not use the sublayer outputs at all: reader j's input (the input of
its norm) *is* the stream r_j, so the window of the last K outputs is r_j - r_{j-K} (docs/
SCIENCE.md section 3, recursive source, zero ablation), with r taken in the patched pass itself.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from horizon.core.model.loader import LoadedModel, bridged_model, bundled_tokenizer

LAYERS = 2


def family_config(family: str, vocab_size: int) -> Any:
    """A 2-layer, d_model-64 config of ``family`` (or of a variant such as ``falcon_parallel``)."""
    import transformers as T

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
    )
    gqa = dict(num_key_value_heads=2)
    # Default pad ids of some families lie outside this vocabulary (GLM's 151329).
    no_pad = dict(pad_token_id=None)
    positions = dict(n_embd=64, n_layer=LAYERS, n_head=4, n_positions=256, vocab_size=vocab_size)
    moe = dict(num_local_experts=4, num_experts_per_tok=2)
    configs = {
        "llama": lambda: T.LlamaConfig(**common, **gqa),
        "mistral": lambda: T.MistralConfig(**common, **gqa, sliding_window=4),
        "qwen2": lambda: T.Qwen2Config(**common, **gqa),
        "qwen3": lambda: T.Qwen3Config(**common, **gqa, head_dim=16),
        "gemma": lambda: T.GemmaConfig(**common, **gqa, head_dim=16, rms_norm_eps=1e-5, attention_bias=True),
        "gemma2": lambda: T.Gemma2Config(**common, **gqa, head_dim=16),
        "gemma3_text": lambda: T.Gemma3TextConfig(
            **common, **gqa, head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"]
        ),
        "glm": lambda: T.GlmConfig(**common, **gqa, **no_pad, head_dim=16, partial_rotary_factor=0.5,
                                   attention_bias=True, rms_norm_eps=1e-5),
        "glm4": lambda: T.Glm4Config(**common, **gqa, **no_pad, head_dim=16, partial_rotary_factor=0.5,
                                     attention_bias=True),
        "nemotron": lambda: T.NemotronConfig(**common, **gqa, head_dim=16, partial_rotary_factor=0.5, norm_eps=1e-4),
        "olmo": lambda: T.OlmoConfig(**common, **gqa, clip_qkv=4.0, attention_bias=True),
        "smollm3": lambda: T.SmolLM3Config(**common, **gqa, **no_pad, no_rope_layers=[1, 0]),
        "stablelm": lambda: T.StableLmConfig(**common, **gqa, use_qkv_bias=True, qk_layernorm=True,
                                             partial_rotary_factor=0.5, layer_norm_eps=1e-4),
        "starcoder2": lambda: T.Starcoder2Config(**common, **gqa, use_bias=True, norm_epsilon=1e-4, sliding_window=4),
        "phi3": lambda: T.Phi3Config(**common, **gqa),
        "gpt2": lambda: T.GPT2Config(**positions),
        "gpt_bigcode": lambda: T.GPTBigCodeConfig(**positions, multi_query=True, layer_norm_epsilon=1e-4),
        "gpt_neo": lambda: T.GPTNeoConfig(
            **common, attention_types=[[["local", "global"], 1]], num_layers=LAYERS, num_heads=4, window_size=4
        ),
        "opt": lambda: T.OPTConfig(**common, ffn_dim=128, word_embed_proj_dim=64),
        "bloom": lambda: T.BloomConfig(vocab_size=vocab_size, hidden_size=64, n_layer=LAYERS, n_head=4,
                                       layer_norm_epsilon=1e-4),
        "falcon": lambda: T.FalconConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=LAYERS,
                                         num_attention_heads=4, parallel_attn=False, new_decoder_architecture=False,
                                         bias=True, alibi=True, layer_norm_epsilon=1e-4),
        "mixtral": lambda: T.MixtralConfig(**common, **gqa, **moe,
                                           rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
        "phimoe": lambda: T.PhimoeConfig(**common, **gqa, **moe),
        "qwen2_moe": lambda: T.Qwen2MoeConfig(**common, **gqa, num_experts=4, num_experts_per_tok=2,
                                              moe_intermediate_size=32, shared_expert_intermediate_size=64),
        "qwen3_moe": lambda: T.Qwen3MoeConfig(**common, **gqa, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                              moe_intermediate_size=32, rms_norm_eps=1e-5),
        "olmoe": lambda: T.OlmoeConfig(**common, **gqa, num_experts=4, num_experts_per_tok=2, clip_qkv=4.0),
        "deepseek_v3": lambda: T.DeepseekV3Config(
            **common, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
            moe_intermediate_size=32, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
            qk_nope_head_dim=8, v_head_dim=16, n_group=2, topk_group=1,
        ),
        "jetmoe": lambda: T.JetMoeConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=LAYERS,
                                         num_key_value_heads=2, kv_channels=16, intermediate_size=64, **moe),
        "llama4_text": lambda: T.Llama4TextConfig(
            **common, **gqa, head_dim=16, intermediate_size_mlp=128, num_local_experts=2, interleave_moe_layer_step=2,
            no_rope_layers=[1, 0], attention_chunk_size=8,
        ),
        "gpt_oss": lambda: T.GptOssConfig(
            **common, **gqa, **moe, head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                             "truncate": False, "original_max_position_embeddings": 64, "rope_theta": 150000.0},
        ),
        "gpt_neox": lambda: T.GPTNeoXConfig(**common),
        "gptj": lambda: T.GPTJConfig(**positions, rotary_dim=8),
        "phi": lambda: T.PhiConfig(**common),
        "cohere": lambda: T.CohereConfig(**common, **gqa, logit_scale=0.5, layer_norm_eps=1e-4),
        "olmo2": lambda: T.Olmo2Config(**common, **gqa),
        "olmo3": lambda: T.Olmo3Config(**common, **gqa),
        "exaone4": lambda: T.Exaone4Config(**common, **gqa, head_dim=16),
        # Variants: the parallel-residual forms of two sequential families (norms only), forms the
        # checks must refuse, and architectures that cannot be bridged.
        "bloom_post_ln_residual": lambda: T.BloomConfig(vocab_size=vocab_size, hidden_size=64, n_layer=LAYERS,
                                                        n_head=4, apply_residual_connection_post_layernorm=True),
        "falcon_new_decoder": lambda: T.FalconConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=LAYERS,
                                                     num_attention_heads=4, num_kv_heads=2, alibi=False,
                                                     new_decoder_architecture=True),
        "biogpt": lambda: T.BioGptConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=LAYERS,
                                         num_attention_heads=4, intermediate_size=128),
        "falcon_parallel": lambda: T.FalconConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=LAYERS,
                                                  num_attention_heads=4, parallel_attn=True,
                                                  new_decoder_architecture=False, alibi=False),
        "stablelm_parallel": lambda: T.StableLmConfig(**common, **gqa, use_parallel_residual=True),
    }
    return configs[family]()


def hf_family_model(family: str, vocab_size: int) -> Any:
    """A plain HF model of ``family`` with seeded random weights (the same weights every call)."""
    from transformers import AutoModelForCausalLM

    config = family_config(family, vocab_size)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    finally:
        torch.random.set_rng_state(state)
    return model


@functools.cache
def tokenizer() -> Any:
    return bundled_tokenizer()


def family_model(family: str) -> LoadedModel:
    """A tiny ``family`` model booted into the bridge the way load_model boots every model."""
    hf_model = hf_family_model(family, len(tokenizer()))
    return bridged_model(f"tiny-{family}", family, hf_model, tokenizer(), torch.float32,
                         source="random weights (seed 0)", model_hash=f"tiny-{family}", default_bos="<|endoftext|>",
                         device=torch.device("cpu"))


# ----------------------------------------------------------------------------- plain HF hooks


def _first(owner: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        found = owner
        for part in name.split("."):
            found = getattr(found, part, None)
        if found is not None:
            return found
    return None


def plain_readers(hf_model: Any, parallel: bool) -> list[Any]:
    """The norm modules readers 1..2L+1 read through: per layer the attention's and the MLP's
    pre-norm (parallel blocks: the attention's only, both read resid_pre), then the final norm."""
    base = _first(hf_model, ("model.decoder", "model", "transformer", "gpt_neox"))
    layers = _first(base, ("layers", "h"))
    final = _first(base, ("norm", "ln_f", "final_layer_norm", "final_layernorm"))
    readers = []
    for layer in layers:
        readers.append(_first(layer, ("input_layernorm", "ln_1", "self_attn_layer_norm")))
        if not parallel:
            # Gemma 2/3's pre_feedforward_layernorm before post_attention_layernorm: theirs is a post-norm.
            readers.append(_first(layer, ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2",
                                          "final_layer_norm")))
    assert None not in readers and final is not None, type(hf_model).__name__
    return [*readers, final]


def plain_run(hf_model: Any, input_ids: torch.Tensor, parallel: bool = False,
              horizons: list[int | None] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, the stream at every reader) of a plain HF model on one prompt [1, T].

    ``horizons``: one batch row per entry, each under its own horizon K (None: clean); the default
    is one clean row. In a row under K, every reader j > K reads r_j - r_{j-K} instead of r_j: its
    norm's input is replaced in a forward pre-hook, while the stream flowing on is left alone.
    """
    horizons = horizons or [None]
    stream: list[torch.Tensor] = []

    def pre_hook(module: Any, args: tuple, kwargs: dict) -> Any:
        given = args[0] if args else kwargs["hidden_states"]
        # [rows, T, d]; OPT flattens its MLP's input to [rows * T, d].
        reading = given.reshape(len(horizons), -1, given.shape[-1])
        stream.append(reading.detach().clone())
        j = len(stream)
        window = reading.clone()
        for row, horizon in enumerate(horizons):
            if horizon is not None and j > horizon:
                window[row] = reading[row] - stream[j - 1 - horizon][row]
        window = window.reshape(given.shape)
        return ((window, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": window})

    handles = [module.register_forward_pre_hook(pre_hook, with_kwargs=True)
               for module in plain_readers(hf_model, parallel)]
    try:
        with torch.inference_mode():
            logits = hf_model(input_ids.expand(len(horizons), -1)).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, stream


def save_family_dir(family: str, directory: Any) -> Any:
    """The tiny ``family`` model as a local HF model directory (config, safetensors, tokenizer)."""
    from horizon.core.model.gguf_files import _quiet

    with _quiet():
        hf_family_model(family, len(tokenizer())).save_pretrained(directory)
        tokenizer().save_pretrained(directory)
    return directory
