"""Two small sweeps (tiny-llama, tiny-gpt2 with other settings) shared by test_compare and test_figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from horizon.core.model.corpus import Corpus
from horizon.core.sweep.sweep import SweepSettings, run_sweep

TEXTS = [
    "The river rose after three days of rain, and the bridge was closed to traffic on Monday.",
    "Mix the flour and the butter, then add two eggs, a pinch of salt and a little milk.",
    "Q: Where is the station?\nA: Second street on the left, next to the old bank.",
    "The committee met on Friday to discuss the budget, and the vote was postponed until May.",
]
CORPUS = Corpus(name="figures-test", texts=TEXTS, kinds=[""] * len(TEXTS))


@pytest.fixture(scope="session")
def llama_dir(tiny_llama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("figures") / "llama"
    settings = SweepSettings(shard_size=2, by_layer=True, tol=0.004)
    assert run_sweep(CORPUS, out, tiny_llama, settings, device="cpu").complete
    return out


@pytest.fixture(scope="session")
def gpt2_dir(tiny_gpt2, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("figures") / "gpt2"
    settings = SweepSettings(shard_size=2, start_layers=[0, 1], ablation="mean", lengths=[1, 5], tol=0.004)
    assert run_sweep(CORPUS, out, tiny_gpt2, settings, device="cpu").complete
    return out
