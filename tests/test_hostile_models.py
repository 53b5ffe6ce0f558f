"""Hostile or damaged model directories (issue 24, classes 3-5, loader side).

A model directory may come from anyone. Whatever is wrong with it, `horizon` answers with one
line on stderr and exit code 2, before it allocates what the directory claims: no traceback, no
hang, no unbounded memory, and never a model with randomly initialised weights (numbers that
change from run to run). The refusals run in one subprocess under an address-space limit the
test sets (``MEMORY_LIMIT``) and a wall-clock limit (``TIME_LIMIT``): a case that grew memory
without end would fail with a MemoryError, one that hung would time out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

MEMORY_LIMIT = 3 << 30  # bytes of address space: torch and transformers need about 1.5 GB
TIME_LIMIT = 600  # seconds for every case together (about 60 on a quiet machine)
COMMAND = ("norms", "--device", "cpu", "--prompt", "Hello there.", "--json")


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama (4 layers, d_model 64) saved as an HF model directory."""
    from horizon.core.model.gguf_files import _quiet
    from horizon.core.model.loader import _tiny_hf_model, bundled_tokenizer

    directory = tmp_path_factory.mktemp("good")
    tokenizer = bundled_tokenizer()
    with _quiet():
        _tiny_hf_model("tiny-llama", len(tokenizer)).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def _linked_copy(good: Path, target: Path) -> Path:
    """A directory of symbolic links to ``good``'s files (as the HF cache's snapshots are)."""
    target.mkdir()
    for entry in good.iterdir():
        (target / entry.name).symlink_to(entry)
    return target


def _with_config(change: dict) -> Callable[[Path, Path], None]:
    def make(good: Path, target: Path) -> None:
        _linked_copy(good, target)
        config = json.loads((good / "config.json").read_text())
        (target / "config.json").unlink()
        (target / "config.json").write_text(json.dumps({**config, **change}))

    return make


def _with_weights(edit: Callable[[dict], dict]) -> Callable[[Path, Path], None]:
    def make(good: Path, target: Path) -> None:
        from safetensors.torch import load_file, save_file

        _linked_copy(good, target)
        (target / "model.safetensors").unlink()
        tensors = edit(load_file(good / "model.safetensors"))
        save_file({name: tensor.contiguous().clone() for name, tensor in tensors.items()},
                  target / "model.safetensors", metadata={"format": "pt"})

    return make


def _fifo(name: str) -> Callable[[Path, Path], None]:
    def make(good: Path, target: Path) -> None:
        _linked_copy(good, target)
        (target / name).unlink()
        os.mkfifo(target / name)

    return make


def _deep_config(good: Path, target: Path) -> None:
    _linked_copy(good, target)
    (target / "config.json").unlink()
    (target / "config.json").write_text("[" * 100_000 + "]" * 100_000)


def _header_claims(good: Path, target: Path) -> None:
    """A safetensors file whose 8-byte header length claims 2^60 bytes."""
    _linked_copy(good, target)
    (target / "model.safetensors").unlink()
    (target / "model.safetensors").write_bytes((1 << 60).to_bytes(8, "little") + b"{}" * 100)


def _truncated(good: Path, target: Path) -> None:
    _linked_copy(good, target)
    (target / "model.safetensors").unlink()
    data = (good / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data[: len(data) // 2])


def _config_loop(good: Path, target: Path) -> None:
    _linked_copy(good, target)
    (target / "config.json").unlink()
    (target / "config.json").symlink_to(target / "config.json")


def _dropped_layer(tensors: dict) -> dict:
    return {name: tensor for name, tensor in tensors.items() if not name.startswith("model.layers.1.")}


def _extra_layer(tensors: dict) -> dict:
    return {**tensors, "model.layers.9.mlp.up_proj.weight": tensors["model.layers.0.mlp.up_proj.weight"]}


# case -> (how to make it from the good directory, words the one line must hold)
CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "a layer's weights missing": (_with_weights(_dropped_layer), "9 missing (would be random)"),
    "unused weights": (_with_weights(_extra_layer), "1 unused, e.g. model.layers.9.mlp.up_proj.weight"),
    "another model_type than its weights": (_with_config({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}),
                                            "its weights do not match its config"),
    "another width than its weights": (_with_config({"hidden_size": 128}), "of another shape than config.json says"),
    "a million layers": (_with_config({"num_hidden_layers": 1_000_000}),
                         "claims 1,000,000 layers, the weight files hold 4"),
    "a 10^30-layer config": (_with_config({"num_hidden_layers": 10**30}), "the weight files hold 4"),
    "a width of a million": (_with_config({"hidden_size": 1_000_000}), "layers of width 1,000,000"),
    "a vocabulary of a billion": (_with_config({"vocab_size": 10**9}), "parameters, more than the"),
    "an intermediate size of a billion": (_with_config({"intermediate_size": 10**9}), "parameters, more than the"),
    "a FIFO for config.json": (_fifo("config.json"), "is not a regular file"),
    "a FIFO for tokenizer.json": (_fifo("tokenizer.json"), "is not a regular file"),
    "config.json nested 100k deep": (_deep_config, "nested too deeply"),
    "a safetensors header claiming 2^60 bytes": (_header_claims, "header"),
    "a truncated weight file": (_truncated, "cannot load HF model from"),
    "config.json a symlink loop": (_config_loop, "is a symbolic link loop"),
}

RUNNER = textwrap.dedent("""
    import io, json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from horizon.tui.cli.app import main
    results = {{}}
    for name, args in json.loads(sys.argv[1]).items():
        sys.stderr, err = io.StringIO(), sys.stderr
        try:
            code = main(args)
        except BaseException as exc:  # a traceback or a MemoryError is what this test exists to catch
            code = repr(exc)
        sys.stderr, text = err, sys.stderr.getvalue()
        results[name] = [code, text]
    print(json.dumps(results))
""")


def _run_limited(cases: dict[str, list[str]]) -> dict[str, list]:
    done = subprocess.run([sys.executable, "-c", RUNNER.format(limit=MEMORY_LIMIT), json.dumps(cases)],
                          capture_output=True, text=True, timeout=TIME_LIMIT, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_hostile_directory_is_one_line_within_bounds(good_dir: Path, tmp_path: Path) -> None:
    cases: dict[str, list[str]] = {}
    for index, (name, (make, _)) in enumerate(CASES.items()):
        target = tmp_path / f"case{index}"
        make(good_dir, target)
        cases[name] = ["norms", "--model", str(target), *COMMAND[1:]]
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases["a symlink loop as the model path"] = ["norms", "--model", str(loop), *COMMAND[1:]]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    cases["a dangling symlink as the model path"] = ["norms", "--model", str(dangling), *COMMAND[1:]]
    cases["the good directory"] = ["norms", "--model", str(good_dir), *COMMAND[1:]]
    results = _run_limited(cases)
    words = {name: expected for name, (_, expected) in CASES.items()}
    words["a symlink loop as the model path"] = "is a symbolic link loop"
    words["a dangling symlink as the model path"] = "is a symbolic link to nothing"
    for name, expected in words.items():
        code, err = results[name]
        assert code == 2, (name, code, err[-1500:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("horizon: error: "), (name, err[-1500:])
        assert expected in lines[0] and len(lines[0]) <= 250, (name, lines[0])
        assert "Traceback" not in err
    assert results["the good directory"][0] == 0, results["the good directory"][1][-1500:]


# ----------------------------------------------------------------------------- what still loads, and as what


def test_a_config_naming_another_class_loads_as_what_transformers_built(good_dir: Path, tmp_path: Path,
                                                                          run_cli) -> None:
    """config.json's "architectures" names GPT-2 over Llama weights: transformers builds a Llama
    (by model_type) and the bridge now takes the adapter of the class built, not of that name
    (it failed with "'LlamaForCausalLM' object has no attribute 'transformer'")."""
    renamed = tmp_path / "renamed"
    _with_config({"architectures": ["GPT2LMHeadModel"]})(good_dir, renamed)
    outputs = []
    for directory in (good_dir, renamed):
        code, out, err = run_cli("norms", "--model", str(directory), "--device", "cpu", "--prompt", "Hello there.",
                                 "--json")
        assert code == 0, err
        outputs.append(json.loads(out)["sites"])
    assert outputs[0] == outputs[1]


def test_a_directory_is_named_by_its_content(good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same files anywhere (links, as in the HF cache, included) are the same model; one
    changed weight is another. Verdicts are keyed by this name."""
    import torch
    from horizon.core.model import model_files
    from horizon.core.model.loader import load_model

    monkeypatch.setattr(model_files, "cache_root", lambda: tmp_path / "cache")
    good = load_model(str(good_dir), device="cpu", unverified=True)
    linked = load_model(str(_linked_copy(good_dir, tmp_path / "linked")), device="cpu", unverified=True)
    assert good.model_hash == linked.model_hash and good.model_hash.startswith("dir:")
    assert len(list((tmp_path / "cache" / "content").glob("*.sha256"))) >= 2  # hashed once per file identity

    def nudged(tensors: dict) -> dict:
        weight = tensors["model.norm.weight"].clone()
        weight[0] += 1e-3
        return {**tensors, "model.norm.weight": weight}

    changed = tmp_path / "changed"
    _with_weights(nudged)(good_dir, changed)
    other = load_model(str(changed), device="cpu", unverified=True)
    assert other.model_hash != good.model_hash
    assert torch.equal(other.hf_model.model.norm.weight[1:], good.hf_model.model.norm.weight[1:])
