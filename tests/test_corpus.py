"""Corpus reading (text / JSONL / directory), limits, hashing, and the bundled corpus."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from horizon.core.errors import HorizonError
from horizon.core.model.corpus import BUNDLED_CORPUS, load_corpus, split_blank_lines, texts_sha256, tokenize_corpus


def test_text_file_splits_on_blank_lines_and_keeps_inner_line_breaks(tmp_path: Path) -> None:
    file = tmp_path / "corpus.txt"
    file.write_text("first line\nstill the first prompt\n\n\n   \nsecond prompt  \n\nthird\n", encoding="utf-8")
    corpus = load_corpus(str(file))
    assert corpus.texts == ["first line\nstill the first prompt", "second prompt", "third"]
    assert corpus.name == str(file)


def test_split_blank_lines_without_trailing_newline() -> None:
    assert split_blank_lines("a\nb") == ["a\nb"]
    assert split_blank_lines("\n\n") == []


def test_jsonl_reads_text_and_kind(tmp_path: Path) -> None:
    file = tmp_path / "c.jsonl"
    rows = [{"text": "one", "kind": "news"}, {"text": "two\n\nwith a blank line"}]
    file.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n", encoding="utf-8")
    corpus = load_corpus(str(file))
    assert corpus.texts == ["one", "two\n\nwith a blank line"]
    assert corpus.kinds == ["news", ""]


def test_stdin_is_a_corpus_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\nprompt\n\ntwo\n")))
    corpus = load_corpus("-")
    assert corpus.texts == ["one\nprompt", "two"] and corpus.name == "-"


def test_jsonl_detected_by_content_without_extension(tmp_path: Path) -> None:
    file = tmp_path / "data"
    file.write_text('{"text": "alpha"}\n{"text": "beta"}\n', encoding="utf-8")
    assert load_corpus(str(file)).texts == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{not json}\n', "line 2: not valid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', 'line 2: no "text"'),
        ('{"text": "   "}\n', "line 1: the text is empty"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text(content, encoding="utf-8")
    with pytest.raises(HorizonError, match=message):
        load_corpus(str(file))


def test_directory_of_txt_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second\n\nstill second (one file is one prompt)\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    corpus = load_corpus(str(tmp_path))
    assert corpus.texts == ["first", "second\n\nstill second (one file is one prompt)"]
    assert corpus.kinds == ["a.txt", "b.txt"]


def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(HorizonError, match="corpus not found"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(HorizonError, match=r"no \.txt file"):
        load_corpus(str(tmp_path))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(HorizonError, match="not UTF-8"):
        load_corpus(str(binary))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(HorizonError, match="holds no prompt"):
        load_corpus(str(blank))
    with pytest.raises(HorizonError, match="--max-prompts"):
        load_corpus(None, max_prompts=0)


def test_max_prompts_keeps_the_first(tmp_path: Path) -> None:
    file = tmp_path / "c.txt"
    file.write_text("\n\n".join(f"prompt {i}" for i in range(10)), encoding="utf-8")
    assert load_corpus(str(file), max_prompts=3).texts == ["prompt 0", "prompt 1", "prompt 2"]
    assert len(load_corpus(str(file), max_prompts=50)) == 10


def test_hash_depends_on_content_and_order() -> None:
    assert texts_sha256(["ab", "c"]) != texts_sha256(["a", "bc"])
    assert texts_sha256(["a", "b"]) != texts_sha256(["b", "a"])
    assert texts_sha256(["a", "b"]) == texts_sha256(["a", "b"])


def test_bundled_corpus_is_varied_and_sized() -> None:
    from horizon.core.model.loader import bundled_tokenizer

    corpus = load_corpus(None)
    assert corpus.name == BUNDLED_CORPUS
    assert load_corpus(BUNDLED_CORPUS).texts == corpus.texts
    assert len(corpus) >= 60
    assert len(set(corpus.texts)) == len(corpus), "every bundled prompt is different"
    kinds = Counter(corpus.kinds)
    for kind in ("news", "encyclopedia", "forum", "dialogue", "code", "lists", "recipe", "legal", "non-english"):
        assert kinds[kind] >= 1, kind
    tokenizer = bundled_tokenizer()
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in corpus.texts]
    assert min(lengths) >= 60 and max(lengths) <= 300, (min(lengths), max(lengths))


def test_max_tokens_cuts_each_prompt_bos_included(tiny_llama) -> None:
    corpus = load_corpus(None, max_prompts=5)
    full = tokenize_corpus(tiny_llama, corpus)
    cut = tokenize_corpus(tiny_llama, corpus, max_tokens=20)
    bos = tiny_llama.bos_token_id()
    for whole, short in zip(full, cut, strict=True):
        assert whole[0] == bos and short[0] == bos
        assert short == whole[:20]
    no_bos = tokenize_corpus(tiny_llama, corpus, max_tokens=20, bos=False)
    assert no_bos[0] == full[0][1:21]
    with pytest.raises(HorizonError, match="--max-tokens"):
        tokenize_corpus(tiny_llama, corpus, max_tokens=1)


def test_long_prompts_are_cut_to_the_context(tiny_llama, tmp_path: Path) -> None:
    file = tmp_path / "long.txt"
    file.write_text("word " * (tiny_llama.n_ctx * 2), encoding="utf-8")
    (ids,) = tokenize_corpus(tiny_llama, load_corpus(str(file)))
    assert len(ids) == tiny_llama.n_ctx
