"""Loading an HF model: from a directory, a GGUF's converted cache or the hub (refused, in one line,
when its weights do not fill its config), and placing it over several devices.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from horizon.core.errors import HorizonError, library_reason
from horizon.core.model.gguf_files import (
    _quiet,
)
from horizon.core.model.model_files import short_text

if TYPE_CHECKING:  # torch is imported where it is used: the CLI and the app start without it
    pass


def _reason(exc: BaseException) -> str:
    """A library's failure in one line that fits a refusal (about 200 characters in all)."""
    return library_reason(exc, 100, with_type=False)


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
