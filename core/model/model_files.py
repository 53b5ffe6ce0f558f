"""A local HF model directory read before anything is built from it: its config, its weight files,
what they can hold, and a hash of their content.

A directory may come from anyone, so nothing in it is trusted before it is bounded:

- ``config.json`` and the weight files must be regular files (a FIFO would block the reader
  forever); symbolic links to regular files are followed (the HF cache's snapshots are links);
- ``config.json`` is at most ``MAX_CONFIG_BYTES`` and plain JSON (deep nesting is refused);
- what the config claims is bounded by what the weight files can hold, before transformers
  allocates a single tensor: a config that claims a million layers, or a vocabulary or width the
  files cannot fill, is refused in one line instead of growing memory without end.

``content_hash`` names the model by what it is (config plus weight bytes), not by where it is:
``horizon verify``'s verdicts are keyed by it, so a directory that changes gets a fresh verdict.
Each weight file's sha256 is cached by (path, size, mtime, ctime, inode): hashed once, then
looked up in microseconds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from horizon.core.errors import HorizonError, library_reason
from horizon.core.model.gguf_files import cache_root

MAX_CONFIG_BYTES = 4 << 20
MAX_HEADER_BYTES = 100 << 20  # a safetensors header (names, dtypes, shapes) of a huge model is a few MB
# The weights must hold at least this many bytes per parameter the config describes (4 bits: the
# most compressed checkpoints transformers loads here); below it the config claims more than exists.
MIN_BYTES_PER_PARAMETER = 0.5
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
INDEX_PATTERNS = ("*.safetensors.index.json", "pytorch_model*.bin.index.json")
# A transformer layer's index in a weight name: model.layers.3., transformer.h.3., gpt_neox.layers.3.
LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
SAFETENSORS_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                     "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


def short_text(text: object, width: int = 60) -> str:
    """A spec, path or name cut to its last ``width`` characters: refusals stay one short line."""
    text = str(text)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def regular_file(path: Path, what: str) -> os.stat_result:
    """The stat of ``path`` after following links; refuse anything but a regular file."""
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HorizonError(f"{what} {short_text(path)} is a symbolic link loop") from None
        raise HorizonError(f"cannot read {what} {short_text(path)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise HorizonError(f"{what} {short_text(path)} is not a regular file (a FIFO, socket or device): refused")
    return info


def read_config(directory: Path) -> dict[str, Any]:
    """``config.json`` as a dict, bounded in size and nesting."""
    path = directory / "config.json"
    info = regular_file(path, "config")
    if info.st_size > MAX_CONFIG_BYTES:
        raise HorizonError(f"{short_text(path)} is {info.st_size:,} bytes: a model config is at most "
                           f"{MAX_CONFIG_BYTES:,}; refused")
    try:
        with path.open("rb") as handle:
            config = json.loads(handle.read(MAX_CONFIG_BYTES + 1))
    except RecursionError:
        raise HorizonError(f"{short_text(path)} is nested too deeply to be a model config") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HorizonError(f"{short_text(path)} is not valid JSON: {str(exc).splitlines()[0][:80]}") from None
    if not isinstance(config, dict):
        raise HorizonError(f"{short_text(path)} is not a JSON object, so not a model config")
    return config


def weight_files(directory: Path) -> list[Path]:
    """The weight files transformers would read (safetensors first, as it does), each a regular file."""
    for pattern in WEIGHT_PATTERNS:
        found = sorted(directory.glob(pattern))
        if found:
            for path in found:
                regular_file(path, "weight file")
            return found
    raise HorizonError(f"{short_text(directory)} has a config.json but no weight files (*.safetensors or "
                       "pytorch_model*.bin)")


def safetensors_shapes(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) from a safetensors header, without reading the tensors."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise HorizonError(f"weight file {short_text(path)} is truncated (no safetensors header)")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise HorizonError(f"weight file {short_text(path)} claims a {length:,}-byte header in a {size:,}-byte "
                               "file: damaged or not safetensors")
        try:
            header = json.loads(handle.read(length))
        except (RecursionError, ValueError, UnicodeDecodeError):
            raise HorizonError(f"weight file {short_text(path)} has an unreadable safetensors header") from None
    if not isinstance(header, dict):
        raise HorizonError(f"weight file {short_text(path)} has an unreadable safetensors header")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
            raise HorizonError(f"weight file {short_text(path)} has an unreadable safetensors header")
        shapes[name] = (str(entry.get("dtype")), tuple(shape))
    return shapes


def _claimed(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """The first of ``keys`` that the config (or its text_config) sets to an integer."""
    for scope in (config, config.get("text_config")):
        if isinstance(scope, dict):
            for key in keys:
                value = scope.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
    return None


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.3g} GB"


def check_claims(directory: Path, config: dict[str, Any], files: list[Path]) -> None:
    """Refuse a config that claims more than its weight files can hold, before anything is built.

    Three bounds, cheapest first: the layer count against the layers named in the safetensors
    headers; layers x width^2 (every layer has at least an output projection of width^2) against
    the files' bytes; then the exact parameter count of the model built on the meta device (no
    memory) against the files' bytes, at ``MIN_BYTES_PER_PARAMETER``.
    """
    n_bytes = sum(path.stat().st_size for path in files)
    n_layers, width = _claimed(config, LAYER_KEYS), _claimed(config, WIDTH_KEYS)
    if any(value is not None and value < 1 for value in (n_layers, width)):
        raise HorizonError(f"{short_text(directory)}: config.json claims {n_layers} layers of width {width}")
    named = [name for path in files if path.suffix == ".safetensors" for name in safetensors_shapes(path)]
    indices = [int(found.group(1)) for name in named if (found := LAYER_INDEX.search(name))]
    if n_layers is not None and indices and n_layers > max(indices) + 1:
        raise HorizonError(f"{short_text(directory)}: config.json claims {n_layers:,} layers, the weight files hold "
                           f"{max(indices) + 1}: refused before building it")
    if n_layers is not None and width is not None:
        needed = n_layers * width * width * MIN_BYTES_PER_PARAMETER
        if needed > n_bytes:
            raise HorizonError(f"{short_text(directory)}: config.json claims {n_layers:,} layers of width {width:,} "
                               f"(at least {_gb(needed)} of weights), the files hold {_gb(n_bytes)}: refused")
    n_parameters = meta_parameter_count(directory)
    if n_parameters * MIN_BYTES_PER_PARAMETER > n_bytes:
        raise HorizonError(f"{short_text(directory)}: config.json describes {n_parameters:,} parameters, more than "
                           f"the {_gb(n_bytes)} of weight files can hold: refused before allocating")


def meta_parameter_count(directory: Path) -> int:
    """The parameters of the model config.json describes, built on the meta device (no memory)."""
    import torch
    from horizon.core.model.gguf_files import _quiet
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with _quiet(), torch.device("meta"):
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise HorizonError(f"{short_text(directory)}: transformers cannot build the model config.json "
                           f"describes: {library_reason(exc, 90, with_type=False)}") from None
    return sum(parameter.numel() for parameter in model.parameters())


def special_entries(directory: Path) -> None:
    """Refuse a FIFO, socket, device or dangling link among the files transformers may open here:
    opening a FIFO blocks forever (a tokenizer.json, a generation_config.json)."""
    for entry in sorted(directory.iterdir()):
        if entry.is_dir():
            continue
        regular_file(entry, "file")


def inspect_directory(directory: Path) -> list[Path]:
    """Bound a model directory before loading it: its config and weight files; returns the files."""
    special_entries(directory)
    config = read_config(directory)
    files = weight_files(directory)
    check_claims(directory, config, files)
    return files


# ----------------------------------------------------------------------------- content hash


def _file_sha256(path: Path) -> str:
    """A file's sha256, cached by its identity (path, size, times, inode): hashed once."""
    info = path.stat()
    identity = f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}|{info.st_ctime_ns}|{info.st_ino}"
    cached = cache_root() / "content" / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.sha256"
    with contextlib.suppress(OSError, ValueError):
        if cached.is_file() and not cached.is_symlink():
            value = cached.read_text(encoding="ascii").strip()
            if re.fullmatch(r"[0-9a-f]{64}", value):
                return value
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    value = digest.hexdigest()
    with contextlib.suppress(OSError):  # a read-only cache only costs the next load a hash
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = cached.with_name(f".tmp-{os.getpid()}-{cached.name}")
        staging.write_text(value + "\n", encoding="ascii")
        os.replace(staging, cached)
    return value


def content_hash(directory: Path, files: list[Path]) -> str:
    """sha256 over config.json and every weight (and index) file's content, in name order."""
    digest = hashlib.sha256()
    indexes = [path for pattern in INDEX_PATTERNS for path in sorted(directory.glob(pattern)) if path.is_file()]
    for path in [directory / "config.json", *indexes, *files]:
        digest.update(f"{path.name}\0{_file_sha256(path)}\0".encode())
    return digest.hexdigest()
