"""Corpora for sweeps: many prompts read from a file or directory, or the bundled default corpus.

Formats: a directory holds one prompt per ``*.txt`` file directly inside it, in file-name order;
a file (or ``-``, stdin) is read by the one prompt-file reader of every ``--file``
(``horizon.core.model.prompts.read_prompt_file``): ``*.jsonl`` (or a first non-blank line starting
with ``{``) is one JSON object per line with a ``"text"`` string (and an optional ``"kind"``);
anything else is plain text, prompts separated by one or more blank lines (a prompt may span
several lines; its inner line breaks are kept).

Token policy (``max_tokens``, the ``--max-tokens`` of every command): a prompt is cut to its
first ``max_tokens`` tokens, BOS included; without ``max_tokens`` it is cut to the model's
context length (the single-prompt commands refuse an over-long prompt instead). Prompts are
never dropped for being long, so prompt indices stay the corpus order; ``max_prompts`` keeps
the first N prompts.

Nothing here imports torch: reading and hashing a corpus is cheap and happens before model load.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from horizon.core.errors import HorizonError
from horizon.core.model.prompts import decode_utf8, read_limited, read_prompt_file
from horizon.core.model.prompts import split_blank_lines as split_blank_lines  # re-exported: the plain-text splitter

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel

BUNDLED_CORPUS = "bundled"
BUNDLED_FILE = "corpus.jsonl"


@dataclass(frozen=True)
class Corpus:
    """The prompts of one sweep, in order, with where they came from."""

    name: str  # "bundled" or the path as given
    texts: list[str]
    kinds: list[str]  # a short label per prompt ("news", "code", a file name, ...); "" when unknown

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def sha256(self) -> str:
        """Hash of the prompt texts in order: two corpora with equal hashes give equal sweeps."""
        return texts_sha256(self.texts)


def texts_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        # Length-prefixed so that ["ab", "c"] and ["a", "bc"] hash differently.
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def bundled_corpus_path() -> Path:
    return Path(str(resources.files("horizon.core") / "data" / BUNDLED_FILE))


def load_corpus(path: str | None = None, max_prompts: int | None = None) -> Corpus:
    """Read a corpus (``None`` or ``"bundled"``: the default corpus shipped with the package)."""
    from horizon.core.options import check_at_least

    check_at_least(max_prompts, "--max-prompts", 1)
    if path is None or path == BUNDLED_CORPUS:
        name = BUNDLED_CORPUS
        texts, kinds = read_prompt_file(str(bundled_corpus_path()))
    else:
        name = path
        target = Path(path).expanduser()
        if path != "-" and not target.exists():
            raise HorizonError(f"corpus not found: {path}")
        if path != "-" and target.is_dir():
            texts, kinds = _read_directory(target, path)
        else:
            texts, kinds = read_prompt_file(path)
    if not texts:
        raise HorizonError(f"corpus {name} holds no prompt")
    if max_prompts is not None:
        texts, kinds = texts[:max_prompts], kinds[:max_prompts]
    return Corpus(name=name, texts=texts, kinds=kinds)


def _read_directory(directory: Path, name: str) -> tuple[list[str], list[str]]:
    files = sorted(file for file in directory.glob("*.txt") if file.is_file())
    if not files:
        raise HorizonError(f"corpus directory {name} has no .txt file")
    texts: list[str] = []
    kinds: list[str] = []
    for file in files:
        text = decode_utf8(read_limited(file, str(file)), str(file)).strip()
        if text:  # an empty file is not a prompt; skipping it keeps the others usable
            texts.append(text)
            kinds.append(file.name)
    return texts, kinds


def tokenize_corpus(
    model: LoadedModel,
    corpus: Corpus,
    max_tokens: int | None = None,
    bos: bool = True,
    bos_token: str | None = None,
) -> list[list[int]]:
    """Token ids per prompt (BOS first), each cut to ``max_tokens`` or the model's context."""
    from horizon.core.model.prompts import tokenize

    check_max_tokens(max_tokens)
    limit = model.n_ctx if max_tokens is None else min(max_tokens, model.n_ctx)
    return tokenize(model, corpus.texts, bos=bos, bos_token=bos_token, truncate_to=limit)


def check_max_tokens(max_tokens: int | None) -> None:
    from horizon.core.options import check_max_tokens as check

    check(max_tokens)
