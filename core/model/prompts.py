"""Prompts in, token batches out: the one prompt-file reader (text/JSONL/stdin), BOS, context limits, padding.

Batches are right-padded: with causal attention, pad tokens after a prompt cannot affect its
real positions, and every prompt keeps positions 0..T-1, so no position-id bookkeeping is needed.
``mask`` marks real tokens; statistics skip padding (and BOS, position 0) through it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError

if TYPE_CHECKING:  # torch loads where batches are built: reading prompts and corpora stays light
    import torch
    from horizon.core.model.loader import LoadedModel


def read_prompts(path: str) -> list[str]:
    """The prompts of a prompt file (``-``: stdin), in the one format of every --file and corpus file."""
    return read_prompt_file(path)[0]


def read_prompt_file(path: str) -> tuple[list[str], list[str]]:
    """Prompts and their kinds from a file, or stdin for ``-``: the one reader of prompt files.

    - ``*.jsonl`` (or a text whose first non-blank line starts with ``{``): one JSON object per
      line with a ``"text"`` string (and optionally a ``"kind"`` label); blank lines are ignored.
    - anything else: plain text, prompts separated by one or more blank lines; a prompt may span
      several lines and keeps its inner line breaks; each prompt is stripped.

    ``kinds`` holds each prompt's ``"kind"`` (JSONL), else "". Special inputs (a device, a closed
    stdin, more than MAX_INPUT_BYTES) and a file without a prompt are one-line HorizonErrors.
    """
    if path == "-":
        raw = read_stdin()
        name = "stdin"
    else:
        file = Path(path).expanduser()
        if not file.exists():
            raise HorizonError(f"file not found: {path}")
        if file.is_dir():
            raise HorizonError(f"{path} is a directory, not a prompt file")
        raw = read_limited(file, path)
        name = path
    text = decode_utf8(raw, name)
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if name.endswith(".jsonl") or first.lstrip().startswith("{"):
        records = jsonl_records(lines, name)
        texts = [record["text"] for record in records]
        kinds = [kind if isinstance(kind := record.get("kind", ""), str) else "" for record in records]
    else:
        texts = split_blank_lines(text)
        kinds = [""] * len(texts)
    if not texts:
        raise HorizonError(f"{name} holds no prompt")
    return texts, kinds


def split_blank_lines(text: str) -> list[str]:
    """Prompts separated by blank (or whitespace-only) lines; each prompt is stripped."""
    prompts: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            prompts.append("\n".join(current).strip())
            current = []
    if current:
        prompts.append("\n".join(current).strip())
    return prompts


def decode_utf8(raw: bytes, name: str) -> str:
    """The text of a prompt file; a leading UTF-8 byte-order mark (which editors add) is not part of it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HorizonError(f"{name} is not UTF-8 text (bad byte at offset {exc.start})") from None
    return text.removeprefix("\ufeff")


MAX_INPUT_BYTES = 256 * 1024 * 1024  # a prompt file or corpus larger than this is a mistake (or /dev/zero)


def read_limited(file: Path, name: str) -> bytes:
    """The bytes of a prompt file or corpus file: a regular file or a pipe, at most MAX_INPUT_BYTES."""
    import stat

    try:
        mode = file.stat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
            raise HorizonError(f"{name} is a device, not a text file")
        with open(file, "rb") as handle:
            return _limited(handle, name)
    except OSError as exc:
        raise HorizonError(f"cannot read {name}: {exc.strerror or type(exc).__name__}") from None


def read_stdin() -> bytes:
    """All of stdin (``--file -``, ``sweep -``), with a clear error when it is closed."""
    stream = getattr(sys.stdin, "buffer", None)
    if sys.stdin is None or stream is None:
        raise HorizonError("stdin is closed, so - has nothing to read")
    try:
        return _limited(stream, "stdin")
    except (OSError, ValueError) as exc:
        raise HorizonError(f"stdin cannot be read for - ({getattr(exc, 'strerror', None) or exc})") from None


def _limited(handle: Any, name: str) -> bytes:
    raw: bytes = handle.read(MAX_INPUT_BYTES + 1)
    if len(raw) > MAX_INPUT_BYTES:
        raise HorizonError(f"{name} holds more than {MAX_INPUT_BYTES // (1024 * 1024)} MiB; split it into "
                           "smaller files")
    return raw


def jsonl_records(lines: list[str], name: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL text, each checked to have a non-empty "text" string.

    One parser for every JSONL input (prompt files and sweep corpora); errors name the line.
    """
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HorizonError(f"{name} line {number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise HorizonError(f"{name} line {number}: its JSON is nested too deeply to be a prompt record") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise HorizonError(f'{name} line {number}: no "text" string field')
        for field in ("text", "kind"):
            if isinstance(record.get(field), str) and _has_surrogate(record[field]):
                raise HorizonError(f"{name} line {number}: the {field} holds a lone surrogate escape (such as "
                                   "\\ud800), which is not a character: it cannot be tokenised or stored")
        if not record["text"].strip():
            raise HorizonError(f"{name} line {number}: the text is empty")
        records.append(record)
    return records


def _has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (JSON can escape one; UTF-8 cannot encode it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def gather_prompts(prompt: str | None, file: str | None, default: str | None = None) -> list[str]:
    """The prompts of one command: --prompt, or --file, or the command's default."""
    if prompt is not None and file is not None:
        raise HorizonError("give --prompt or --file, not both")
    if file is not None:
        prompts = read_prompts(file)
    elif prompt is not None:
        prompts = [prompt]
    elif default is not None:
        prompts = [default]
    else:
        raise HorizonError("no input: give --prompt TEXT or --file PATH")
    for index, text in enumerate(prompts):
        where = "the prompt" if len(prompts) == 1 else f"prompt {index + 1}"
        if not text.strip():
            raise HorizonError(f"{where} is empty or whitespace only")
        if _has_surrogate(text):  # bytes that are not UTF-8 on the command line, or a JSON surrogate escape
            raise HorizonError(f"{where} holds bytes that are not UTF-8 text (or a lone surrogate); give UTF-8 text")
    return prompts


@dataclass
class TokenBatch:
    """Right-padded token ids with a mask of real tokens."""

    token_ids: list[list[int]]  # per prompt, BOS included, no padding
    input_ids: torch.Tensor  # [batch, T_max]
    mask: torch.Tensor  # [batch, T_max] bool, True on real tokens
    has_bos: bool

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.token_ids]

    def stat_mask(self, include_bos: bool = False) -> torch.Tensor:
        """Positions that enter statistics: real tokens, without BOS unless asked."""
        mask = self.mask.clone()
        if self.has_bos and not include_bos:
            mask[:, 0] = False
        return mask


def tokenize(
    model: LoadedModel,
    prompts: list[str],
    bos: bool = True,
    bos_token: str | None = None,
    truncate_to: int | None = None,
) -> list[list[int]]:
    """Token ids per prompt, with the model's BOS prepended (the seeds' convention)."""
    if truncate_to is not None and truncate_to < 2:
        raise HorizonError("--max-tokens must be at least 2 tokens")
    bos_id = model.bos_token_id(bos_token) if bos else None
    out = []
    for index, text in enumerate(prompts):
        if not text.strip():
            raise HorizonError(f"prompt {index + 1} is empty or whitespace only")
        ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        if bos_id is not None:
            ids = [bos_id, *ids]
        if truncate_to is not None:
            ids = ids[:truncate_to]
        if len(ids) > model.n_ctx:
            raise HorizonError(
                f"prompt {index + 1} has {len(ids)} tokens, over the model's context of {model.n_ctx}; "
                "pass --max-tokens N to keep the first N"
            )
        if len(ids) < 2:
            raise HorizonError(f"prompt {index + 1} is too short: it needs at least one token after BOS")
        out.append(ids)
    return out


def make_batch(token_ids: list[list[int]], pad_id: int, has_bos: bool, device: torch.device) -> TokenBatch:
    import torch

    longest = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), longest), dtype=torch.bool)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = True
    return TokenBatch(token_ids, input_ids.to(device), mask.to(device), has_bos)


def batches(model: LoadedModel, token_ids: list[list[int]], has_bos: bool, batch_size: int = 8) -> list[TokenBatch]:
    """Split prompts, in order, into right-padded batches of at most ``batch_size``."""
    if batch_size < 1:
        raise HorizonError("--batch-size must be at least 1")
    pad_id = model.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = model.tokenizer.eos_token_id or 0
    return [
        make_batch(token_ids[start : start + batch_size], pad_id, has_bos, model.device)
        for start in range(0, len(token_ids), batch_size)
    ]


def decode_tokens(model: LoadedModel, ids: list[int]) -> list[str]:
    """Each token's own text (byte-level markers decoded), for display and categories."""
    return [model.tokenizer.decode([token_id]) for token_id in ids]
