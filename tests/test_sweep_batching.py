"""Prompt batching in the sweep: batched rows equal prompt-by-prompt rows, and padding changes no number.

The reference is the single-prompt engines (``scan(model, [ids])``, ``attention_distance(model,
[ids])``, ...: what the sweep wrote before it batched), run on one prompt at a time, so nothing
is padded. The prompts have different lengths, so every batch of several is padded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from horizon.core import analyses as registry
from horizon.core.model.corpus import Corpus
from horizon.core.results import store
from horizon.core.sweep.sweep import SweepSettings, run_sweep
from horizon.core.sweep.worker import SweepWorker, WorkerConfig, chunks, length_order

TEXTS = [
    "The river rose after three days of rain, and the bridge was closed to traffic on Monday morning.",
    "Hi there.",
    "def add(a, b):\n    return a + b",
    "Mix the flour and the butter, then add two eggs, a pinch of salt, a little milk and some sugar to taste.",
    "La ville est au bord du lac.",
]
LONG = " ".join(["A very long prompt that pads every other prompt in its batch by many positions."] * 4)
SCAN_VALUES = ("loss_clean", "loss", "delta_loss", "kl", "top1")


def worker(model, batch_size: int | None, texts: list[str] = TEXTS, **settings) -> SweepWorker:
    analyses = settings.pop("analyses", list(registry.names()))
    config = WorkerConfig(model=model.spec, device="cpu", dtype="float32", texts=texts,
                          settings=SweepSettings(analyses=analyses, ks=[1, 2, 3, 5], start_layers=[0, 1],
                                                 **settings),
                          batch_size=batch_size)
    made = SweepWorker(config, loaded=model)
    made.set_corpus_input("truncate", made.compute_corpus_input("truncate"))
    if made.settings.ablation == "mean":
        made.set_corpus_input("scan", made.compute_corpus_input("scan"))
    return made


def rows_of(made: SweepWorker, analysis: str, indices: list[int] | None = None) -> pa.Table:
    indices = list(range(len(made.token_ids))) if indices is None else indices
    token_ids = [made.token_ids[index] for index in indices]
    tokens = [[str(token) for token in ids] for ids in token_ids]
    with torch.inference_mode():
        return registry.REGISTRY[analysis].rows(made, indices, token_ids, tokens)


def assert_same_rows(left: pa.Table, right: pa.Table, keys: list[str], values: tuple[str, ...],
                     rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Same keys row for row (after sorting by them), values equal to float tolerance."""
    assert left.num_rows == right.num_rows > 0
    order = [(key, "ascending") for key in keys]
    left, right = left.sort_by(order), right.sort_by(order)
    for key in keys:
        assert left.column(key).to_pylist() == right.column(key).to_pylist(), key
    for name in values:
        np.testing.assert_allclose(np.asarray(left.column(name).to_pylist(), dtype=np.float64),
                                   np.asarray(right.column(name).to_pylist(), dtype=np.float64),
                                   rtol=rtol, atol=atol, err_msg=name)


# ----------------------------------------------------------------------------- ordering


def test_length_order_and_chunks() -> None:
    token_ids = [[1, 2, 3], [1], [1, 2], [4]]
    assert length_order(token_ids) == [1, 3, 2, 0]  # shortest first, ties in prompt order
    assert chunks([5, 6, 7, 8, 9], 2) == [[5, 6], [7, 8], [9]]


def test_per_prompt_puts_results_back_in_prompt_order(tiny_llama) -> None:
    made = worker(tiny_llama, batch_size=2, analyses=["norms"])
    seen: list[list[int]] = []

    def compute(ids: list[list[int]], plan) -> list[int]:
        seen.extend(ids)
        assert plan.batch_size == min(2, len(ids))  # --batch-size 2, capped at the group's prompts
        return [len(row) for row in ids]

    assert made.per_prompt("scan", made.token_ids, compute) == [len(ids) for ids in made.token_ids]
    assert [len(ids) for ids in seen] == sorted(len(ids) for ids in made.token_ids)


# ----------------------------------------------------------------------------- batched = prompt by prompt


def scan_reference(model, made: SweepWorker) -> pa.Table:
    """The scan rows written one prompt at a time by the single-prompt engines (no padding)."""
    from horizon.core.analyses.scan.engine import scan, scan_by_layer

    settings = made.settings
    means = made.corpus_inputs.get("scan")
    records = []
    for prompt, ids in enumerate(made.token_ids):
        common = {"ks": settings.ks, "tol": settings.tol, "ablation": settings.ablation, "means": means}
        with torch.inference_mode():
            result = scan(model, [ids], start_layers=settings.start_layers, **common)
            matrix = scan_by_layer(model, [ids], **common) if settings.by_layer else None
        for row in result.rows:
            records.append({"prompt": prompt, "only_layer": -1, "start_layer": row["start_layer"], "k": row["k"],
                            "loss_clean": result.loss_clean, "loss": row["loss"], "delta_loss": row["delta_loss"],
                            "kl": row["kl"], "top1": row["top1_agreement"], "n_tokens": result.n_tokens})
        if matrix is not None:
            for i, layer in enumerate(matrix.layers):
                for j, k in enumerate(matrix.ks):
                    records.append({"prompt": prompt, "only_layer": layer, "start_layer": 0, "k": k,
                                    "loss_clean": matrix.loss_clean, "loss": matrix.loss[i][j],
                                    "delta_loss": matrix.delta_loss[i][j], "kl": matrix.kl[i][j],
                                    "top1": matrix.top1_agreement[i][j], "n_tokens": matrix.n_tokens})
    return pa.Table.from_pylist(records)


@pytest.mark.parametrize(("ablation", "by_layer"), [("zero", False), ("zero", True), ("mean", False), ("mean", True)])
def test_batched_scan_rows_equal_prompt_by_prompt(tiny_llama, ablation: str, by_layer: bool) -> None:
    made = worker(tiny_llama, batch_size=3, analyses=["scan"], ablation=ablation, by_layer=by_layer)
    lengths = [len(ids) for ids in made.token_ids]
    assert len(set(lengths)) == len(lengths)  # every batch of several prompts is padded
    batched = rows_of(made, "scan")
    assert set(batched.column("only_layer").to_pylist()) == ({-1} | (set(range(5)) if by_layer else set()))
    assert_same_rows(batched, scan_reference(tiny_llama, made), ["prompt", "only_layer", "start_layer", "k"],
                     (*SCAN_VALUES, "n_tokens"))


def test_batched_attention_rows_equal_prompt_by_prompt(tiny_model) -> None:
    from horizon.core.analyses.attention import SCHEMA, report_rows
    from horizon.core.analyses.attention.engine import attention_distance

    made = worker(tiny_model, batch_size=4, analyses=["attention"])
    with torch.inference_mode():
        reference = pa.concat_tables([report_rows(attention_distance(tiny_model, [ids], True), prompt)
                                      for prompt, ids in enumerate(made.token_ids)])
    values = tuple(name for name, kind in SCHEMA.items() if kind == pa.float64())
    assert_same_rows(rows_of(made, "attention"), reference, ["prompt", "layer", "head", "n_queries"], values,
                     rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("analysis", "keys", "values"), [
    ("norms", ["prompt", "site", "layer", "position"], ("norm", "std")),
    ("truncate", ["prompt", "length", "position", "layer"], ("cos", "cos_raw")),
])
def test_batched_norms_and_truncate_rows_equal_prompt_by_prompt(tiny_llama, analysis: str, keys: list[str],
                                                                 values: tuple[str, ...]) -> None:
    one_by_one = rows_of(worker(tiny_llama, batch_size=1, analyses=[analysis]), analysis)
    batched = rows_of(worker(tiny_llama, batch_size=5, analyses=[analysis]), analysis)
    assert_same_rows(batched, one_by_one, keys, values)


# ----------------------------------------------------------------------------- padding changes no number


@pytest.mark.parametrize(("analysis", "keys", "values"), [
    ("scan", ["prompt", "only_layer", "start_layer", "k"], SCAN_VALUES),
    ("attention", ["prompt", "layer", "head"], ("mean_distance", "mass_gt10", "mean_distance_no_bos")),
    ("norms", ["prompt", "site", "layer", "position"], ("norm", "std")),
])
def test_a_long_prompt_in_the_batch_changes_no_other_row(tiny_llama, analysis: str, keys: list[str],
                                                         values: tuple[str, ...]) -> None:
    texts = [*TEXTS, LONG]
    made = worker(tiny_llama, batch_size=len(texts), texts=texts, analyses=[analysis])
    longest = len(made.token_ids[-1])
    assert longest > 2 * max(len(ids) for ids in made.token_ids[:-1])  # the others are padded a lot
    alone = rows_of(made, analysis, list(range(len(TEXTS))))
    beside = rows_of(made, analysis, list(range(len(texts))))
    beside = beside.filter(pa.compute.less(beside.column("prompt"), len(TEXTS)))
    assert_same_rows(beside, alone, keys, values)


# ----------------------------------------------------------------------------- the manifest


def test_batch_size_is_not_a_setting_and_a_sweep_resumes_under_another(tiny_llama, tmp_path: Path) -> None:
    corpus = Corpus(name="t", texts=TEXTS, kinds=[""] * len(TEXTS))
    settings = SweepSettings(analyses=["attention"], shard_size=2)
    out = tmp_path / "run"
    from horizon.core.sweep.sweep_settings import ShardSpec

    first = run_sweep(corpus, out, tiny_llama, settings, device="cpu", shard=ShardSpec(0, 2), batch_size=1)
    assert not first.complete
    second = run_sweep(corpus, out, tiny_llama, SweepSettings(analyses=["attention"], shard_size=2), device="cpu",
                       resume=True, batch_size=2, max_memory=4 << 30)
    assert second.complete and second.shards_done_before == 2
    manifest = store.read_manifest(out)
    assert "batch_size" not in manifest["analyses"]["attention"]
    assert [(run["batch_size"], run["max_memory"]) for run in manifest["runs"]] == [(1, "auto"), (2, 4 << 30)]
