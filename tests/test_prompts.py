"""Prompt reading and tokenisation: formats, BOS convention, context limits."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from horizon.core.errors import HorizonError
from horizon.core.model.prompts import gather_prompts, read_prompts, tokenize


def test_plain_text_prompts_are_separated_by_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\n  \nsecond prompt\n", encoding="utf-8")
    assert read_prompts(str(path)) == ["first prompt", "second prompt"]
    # A prompt may span several lines and keeps its inner line breaks; two paragraphs are two prompts.
    path.write_text("  a poem,\nits second line  \nand a third\n\n\nthe next paragraph\r\nstill the next\n",
                    encoding="utf-8")
    assert read_prompts(str(path)) == ["a poem,\nits second line\nand a third", "the next paragraph\nstill the next"]
    path.write_text("one line\nafter another\n", encoding="utf-8")
    assert read_prompts(str(path)) == ["one line\nafter another"]
    path.write_text("\n \n\t\n", encoding="utf-8")
    with pytest.raises(HorizonError, match="holds no prompt"):
        read_prompts(str(path))


def test_single_prompt_commands_and_the_sweep_read_a_file_alike(tmp_path: Path) -> None:
    """One reader: --file and sweep CORPUS give the same prompts from the same file, in every format."""
    from horizon.core.model.corpus import load_corpus

    text = tmp_path / "prompts.txt"
    text.write_text("The cat sat\non the mat.\n\n\nA second prompt.\n\nthird\n", encoding="utf-8")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"text": "one\\n\\ntwo", "kind": "news"}\n\n{"text": "three"}\n', encoding="utf-8")
    sniffed = tmp_path / "records"
    sniffed.write_text('{"text": "alpha"}\n{"text": "beta"}\n', encoding="utf-8")
    for path in (text, jsonl, sniffed):
        assert read_prompts(str(path)) == gather_prompts(None, str(path)) == load_corpus(str(path)).texts
    assert read_prompts(str(text)) == ["The cat sat\non the mat.", "A second prompt.", "third"]
    assert load_corpus(str(jsonl)).kinds == ["news", ""]


def test_the_cli_reads_a_file_as_the_sweep_does(run_cli, tmp_path: Path) -> None:
    """`horizon tokens --file` tokenises exactly the prompts `horizon sweep` would read from that file."""
    import json

    from horizon.core.model.corpus import load_corpus

    path = tmp_path / "prompts.txt"
    path.write_text("The cat sat\non the mat.\n\nA second prompt,\nover two lines.\n", encoding="utf-8")
    code, out, err = run_cli("tokens", "-m", "tiny-llama", "-f", str(path), "--no-bos", "--json")
    assert code == 0, err
    texts = load_corpus(str(path)).texts
    assert len(texts) == 2
    assert ["".join(tokens) for tokens in json.loads(out)["tokens"]] == texts


def test_max_tokens_is_the_one_cap_and_truncate_to_its_old_name(run_cli) -> None:
    import json

    runs = [run_cli("tokens", "-m", "tiny-llama", "-p", "one two three four five", *flag, "--json")
            for flag in (["--max-tokens", "3"], ["--truncate-to", "3"], ["--truncate-to=3"])]
    assert all(code == 0 for code, _, _ in runs), runs
    assert len({out for _, out, _ in runs}) == 1 and len(json.loads(runs[0][1])["token_ids"][0]) == 3
    code, out, _ = run_cli("tokens", "--help")
    assert code == 0 and "--max-tokens" in out and "--truncate-to" not in out
    code, out, _ = run_cli("sweep", "--help")
    assert code == 0 and "--max-tokens" in out


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
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"first\nparagraph\n\nsecond\n")))
    assert read_prompts("-") == ["first\nparagraph", "second"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"text": "a"}\n{"text": "b"}\n')))
    assert read_prompts("-") == ["a", "b"]


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
