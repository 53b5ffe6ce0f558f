"""Prompt reading and tokenisation: formats, BOS convention, context limits."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from horizon.core.errors import HorizonError
from horizon.core.prompts import gather_prompts, read_prompts, tokenize


def test_plain_text_is_one_prompt_per_line(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\n  \nsecond prompt\n", encoding="utf-8")
    assert read_prompts(str(path)) == ["first prompt", "second prompt"]


def test_jsonl_reads_text_fields(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two", "id": 3}\n', encoding="utf-8")
    assert read_prompts(str(path)) == ["one", "two"]


def test_jsonl_without_text_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "one"}\n{"body": "two"}\n', encoding="utf-8")
    with pytest.raises(HorizonError, match="line 2"):
        read_prompts(str(path))


def test_non_utf8_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(HorizonError, match="not UTF-8"):
        read_prompts(str(path))
    with pytest.raises(HorizonError, match="not found"):
        read_prompts(str(tmp_path / "nope.txt"))
    with pytest.raises(HorizonError, match="directory"):
        read_prompts(str(tmp_path))


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin\n")))
    assert read_prompts("-") == ["from stdin"]


def test_gather_rejects_blank_and_double_input() -> None:
    with pytest.raises(HorizonError, match="empty"):
        gather_prompts("   \n", None)
    with pytest.raises(HorizonError, match="not both"):
        gather_prompts("a", "b.txt")


def test_bos_is_prepended_by_default(tiny_llama) -> None:
    ids = tokenize(tiny_llama, ["Hello world"])[0]
    plain = tiny_llama.tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert ids == [0, *plain]
    assert tokenize(tiny_llama, ["Hello world"], bos=False)[0] == plain
    assert tokenize(tiny_llama, ["Hello world"], bos_token="<|im_start|>")[0][0] == 1
    with pytest.raises(HorizonError, match="not a single token"):
        tokenize(tiny_llama, ["Hello"], bos_token="definitely not a token")


def test_context_limit_and_truncate_to(tiny_llama) -> None:
    long_text = " ".join(["word"] * (tiny_llama.n_ctx + 10))
    with pytest.raises(HorizonError, match="over the model's context"):
        tokenize(tiny_llama, [long_text])
    ids = tokenize(tiny_llama, [long_text], truncate_to=50)[0]
    assert len(ids) == 50 and ids[0] == 0
