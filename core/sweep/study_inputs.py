"""What a study is given: its model specs (``check_specs``), each one's folder name, and its study file.

Each model's results go to ``DIR/<folder>/``: ``folder_names`` derives a safe, unshared folder name
from each spec. The study file (``read_study_file``) is TOML or JSON: ``models`` and optional shared
settings under the names of the command's options, each value's type checked (``STUDY_KEYS``). Part
of studies across models, whose public face is core/sweep/study.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from horizon.core.errors import HorizonError
from horizon.core.untrusted import visible

FOLDER_CHARS = 80  # longer folder names are cut and made unique with a hash of the spec
STUDY_FILE_LIMIT = 1 << 20  # a study file is a short list of models and settings

# Every key a study file may hold, with its type (a value's check below). Paths are relative to
# the file's folder.
STUDY_KEYS: dict[str, str] = {
    "models": "list of strings", "corpus": "string", "out": "string", "max_prompts": "integer",
    "max_tokens": "integer", "analyses": "list of strings", "lengths": "list of integers",
    "ks": "list of integers", "start_layers": "list of integers", "tol": "number", "ablation": "string",
    "by_layer": "boolean", "shard_size": "integer", "bos": "boolean", "bos_token": "string", "device": "string",
    "dtype": "string", "batch_size": "integer or \"auto\"", "max_memory": "string", "backend": "string",
    "workers": "integer", "ray_address": "string", "device_map": "string", "n_devices": "integer", "x": "string",
    "format": "string",
}



def folder_name(spec: str) -> str:
    """A safe folder name for a model spec: ``/`` becomes ``--`` (``org/name`` -> ``org--name``),
    anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``, no leading dot."""
    name = re.sub(r"[\\/]+", "--", spec.strip())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "model"
    if len(name) > FOLDER_CHARS:
        name = f"{name[:FOLDER_CHARS]}-{_digest(spec)}"
    return name


def _digest(spec: str) -> str:
    return hashlib.sha256(spec.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def folder_names(specs: list[str], reserved: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One folder per spec, none shared: specs whose names meet (``a/b`` and ``a--b``; ``A`` and
    ``a`` on a case-insensitive disk) or that meet a file the study writes (``reserved``) each get
    ``-<8 hex of the spec's sha256>`` appended."""
    names = [folder_name(spec) for spec in specs]
    taken = {name.casefold() for name in reserved}
    counts: dict[str, int] = {}
    for name in names:
        counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    out = [f"{name}-{_digest(spec)}" if counts[name.casefold()] > 1 or name.casefold() in taken else name
           for spec, name in zip(specs, names, strict=True)]
    if len({name.casefold() for name in out}) != len(out):  # a hash collision of 32 bits within one study
        raise HorizonError("two model specs map to one folder name even with their hashes; rename one")
    return out


def check_specs(specs: list[str]) -> list[str]:
    """The model specs, stripped; refused when empty or when one is given twice."""
    cleaned = [spec.strip() for spec in specs]
    if not cleaned:
        raise HorizonError("give at least one model (MODEL arguments, or models = [...] in --study)")
    for spec in cleaned:
        if not spec:
            raise HorizonError("an empty model spec")
        if cleaned.count(spec) > 1:
            raise HorizonError(f"model {visible(spec)!r} is given twice")
    return cleaned


# ----------------------------------------------------------------------------- the study file


def read_study_file(path: str | Path) -> dict[str, Any]:
    """A study file's keys, checked (TOML, or JSON when it ends in .json or starts with ``{``).

    Unknown keys and values of the wrong type are refused in one line; ``corpus`` and ``out`` are
    resolved against the file's folder.
    """
    file = Path(path).expanduser()
    try:
        if not file.is_file():
            raise HorizonError(f"--study {visible(path)}: not found" if not file.exists()
                               else f"--study {visible(path)}: not a regular file")
        if file.stat().st_size > STUDY_FILE_LIMIT:
            raise HorizonError(f"--study {visible(path)}: over {STUDY_FILE_LIMIT >> 20} MiB, not a study file")
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise HorizonError(f"--study {visible(path)}: not UTF-8 text") from None
    except OSError as exc:
        raise HorizonError(f"--study {visible(path)}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        if file.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HorizonError(f"--study {visible(path)}: not valid TOML or JSON ({visible(first)[:120]})") from None
    if not isinstance(data, dict):
        raise HorizonError(f"--study {visible(path)}: must hold a table of keys (models = [...], ...)")
    for key, value in data.items():
        if key not in STUDY_KEYS:
            raise HorizonError(f"--study {visible(path)}: unknown key {visible(key)!r} (known: "
                               f"{', '.join(STUDY_KEYS)})")
        if not _fits(value, STUDY_KEYS[key]):
            raise HorizonError(f"--study {visible(path)}: {key} must be a {STUDY_KEYS[key]} "
                               f"(got {visible(json.dumps(value, default=str))[:60]})")
    for key in ("corpus", "out"):
        if key in data and data[key] != "-":
            data[key] = str((file.parent / Path(data[key]).expanduser()).resolve()) \
                if not Path(data[key]).expanduser().is_absolute() else str(Path(data[key]).expanduser())
    return data


def _fits(value: Any, kind: str) -> bool:
    def integer(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return integer(value)
    if kind == "number":
        return (integer(value) or isinstance(value, float))
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "list of strings":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind == "list of integers":
        return isinstance(value, list) and all(integer(item) for item in value)
    if kind.startswith("integer or"):
        return integer(value) or value == "auto"
    raise ValueError(kind)
