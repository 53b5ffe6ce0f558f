"""CLI skeleton: help, models, and bad input -> one line on stderr, exit 2, nothing on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from horizon.core.model.gguf_files import bundled_gguf_path


def assert_clean_failure(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("horizon: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in err


def test_models_json_lists_bundled_model_available(run_cli) -> None:
    code, out, _ = run_cli("models", "--json")
    assert code == 0
    models = {entry["name"]: entry for entry in json.loads(out)["models"]}
    bundled = models["smollm2-135m"]
    assert bundled["available"] is True
    assert bundled["architecture"] == "llama" and bundled["n_layers"] == 30 and bundled["d_model"] == 576
    assert bundled["source"].endswith(".gguf")


def test_tokens_json(run_cli) -> None:
    code, out, _ = run_cli("tokens", "-m", "tiny-llama", "-p", "Hello world", "--json")
    payload = json.loads(out)
    assert code == 0
    assert payload["token_ids"][0][0] == 0 and payload["tokens"][0][:2] == ["<|endoftext|>", "Hello"]


def _long_prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "long.txt"
    path.write_text(" ".join(["word"] * 400) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-p", ""], "empty"),
        (["-p", "   \t "], "empty"),
        (["-m", "no-such-org/no-such-model", "-p", "hi"], "unknown model"),
        (["-m", "/nonexistent/model.gguf", "-p", "hi"], "not found"),
        (["-f", "/nonexistent/prompts.txt"], "not found"),
        (["--dtype", "float8", "-p", "hi"], "unknown dtype"),
        (["--device", "tpu", "-p", "hi"], "unknown device"),
        (["--truncate-to", "1", "-p", "hi"], "at least 2"),
        (["--bogus-flag"], "No such option"),
    ],
)
def test_bad_input_fails_cleanly(run_cli, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_args = [] if "-m" in args else ["-m", "tiny-llama"]
    assert_clean_failure(*run_cli("tokens", *model_args, *args), needle)


def test_bad_files_fail_cleanly(run_cli, tmp_path: Path) -> None:
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9\n".encode("latin-1"))
    assert_clean_failure(*run_cli("tokens", "-m", "tiny-llama", "-f", str(binary)), "not UTF-8")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"txt": "no"}\n', encoding="utf-8")
    assert_clean_failure(*run_cli("tokens", "-m", "tiny-llama", "-f", str(jsonl)), '"text"')
    assert_clean_failure(*run_cli("tokens", "-m", "tiny-llama", "-f", str(tmp_path)), "directory")
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(bundled_gguf_path().read_bytes()[:100_000])
    assert_clean_failure(*run_cli("tokens", "-m", str(corrupt), "-p", "hi"), "damaged or truncated")


def test_over_context_needs_truncate_to(run_cli, tmp_path: Path) -> None:
    path = _long_prompt_file(tmp_path)
    assert_clean_failure(*run_cli("tokens", "-m", "tiny-llama", "-f", str(path)), "over the model's context")
    code, out, _ = run_cli("tokens", "-m", "tiny-llama", "-f", str(path), "--truncate-to", "64", "--json")
    assert code == 0 and len(json.loads(out)["token_ids"][0]) == 64


def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    """The installed console script, not just main(): exit status 2 and a single stderr line."""
    horizon = Path(sys.executable).with_name("horizon")
    result = subprocess.run([str(horizon), "tokens", "-m", "tiny-llama", "-p", " "], capture_output=True, text=True)
    assert_clean_failure(result.returncode, result.stdout, result.stderr, "empty")
    result = subprocess.run([str(horizon), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "models" in result.stdout
