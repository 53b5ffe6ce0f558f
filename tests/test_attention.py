"""Attention distance (docs/SCIENCE.md section 5): per-query formulas, plain-HF patterns, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from horizon.core.analyses.attention.engine import BUCKETS, attention_distance, distance_weights, pattern_statistics
from horizon.core.model.loader import _tiny_hf_model
from horizon.core.model.prompts import tokenize

from tests.conftest import SHORT_PROMPT

PROMPTS = [SHORT_PROMPT, "Short prompt, padded in its batch."]


def random_causal_pattern(batch: int, heads: int, n_pos: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, n_pos, n_pos, generator=generator) * 3
    future = torch.triu(torch.ones(n_pos, n_pos, dtype=torch.bool), diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


def loop_statistics(row: np.ndarray, t: int, drop_bos: bool) -> list[float]:
    """Mean distance and bucket masses of one query row, by the definition, in plain Python."""
    weights = {s: float(row[s]) for s in range(t + 1) if not (drop_bos and s == 0)}
    total = sum(weights.values())
    weights = {s: w / total for s, w in weights.items()}
    distance = sum(w * (t - s) for s, w in weights.items())
    masses = [
        sum(w for s, w in weights.items() if t - s == 0),
        sum(w for s, w in weights.items() if 1 <= t - s <= 5),
        sum(w for s, w in weights.items() if 6 <= t - s <= 10),
        sum(w for s, w in weights.items() if t - s > 10),
    ]
    return [distance, *masses]


def test_distance_weights() -> None:
    weights = distance_weights(14)
    assert weights[0, 13, 0] == 13 and weights[0, 3, 5] == 0  # distance, 0 above the diagonal
    covered = weights[1:].sum(dim=0)
    causal = torch.ones(14, 14, dtype=torch.bool).tril()
    assert covered[causal].eq(1).all() and covered[~causal].eq(0).all()  # buckets partition the causal triangle
    assert weights[4, 11, 0] == 1 and weights[3, 10, 0] == 1 and weights[2, 6, 1] == 1


@pytest.mark.parametrize("drop_bos", [False, True])
def test_per_query_statistics_match_the_definition(drop_bos: bool) -> None:
    pattern = random_causal_pattern(2, 3, 17)
    stats, valid = pattern_statistics(pattern, drop_bos=drop_bos)
    assert stats.shape == (5, 2, 3, 17)
    assert bool(valid[..., 1:].all()) and bool(valid[..., 0].all()) != drop_bos  # t = 0 sees only BOS
    masses = stats[1:, ..., 1:].sum(dim=0)
    assert torch.allclose(masses, torch.ones_like(masses), atol=1e-5)  # masses sum to 1 per query
    for b in range(2):
        for h in range(3):
            for t in range(1, 17):
                expected = loop_statistics(pattern[b, h, t].numpy(), t, drop_bos)
                assert np.allclose(stats[:, b, h, t].numpy(), expected, atol=1e-5), (b, h, t)


def test_all_mass_on_bos_is_not_a_valid_row() -> None:
    pattern = torch.zeros(1, 1, 3, 3)
    pattern[0, 0, :, 0] = 1.0  # every query attends only to BOS
    stats, valid = pattern_statistics(pattern, drop_bos=True)
    assert not valid.any() and torch.isfinite(stats).all()


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_report_matches_plain_hf_patterns(request, spec: str) -> None:
    """Averages over t >= 1 of every prompt (batched with padding) vs HF's own attention weights."""
    model = request.getfixturevalue(spec.replace("-", "_"))
    token_ids = tokenize(model, PROMPTS)
    report = attention_distance(model, token_ids, has_bos=True, batch_size=2)
    reference = _tiny_hf_model(spec, len(model.tokenizer))
    per_query: list[np.ndarray] = []
    per_query_no_bos: list[np.ndarray] = []
    for ids in token_ids:
        with torch.inference_mode():
            attentions = reference(torch.tensor([ids]), output_attentions=True).attentions
        stats = np.zeros((2, model.n_layers, 5, model.n_heads, len(ids) - 1))
        t = np.arange(len(ids))[:, None]
        distance = np.broadcast_to(t - np.arange(len(ids))[None, :], (len(ids), len(ids)))
        for layer, pattern in enumerate(attentions):
            assert pattern.shape[1] == model.n_heads  # every query head, GQA included
            for variant, rows in enumerate((pattern[0].numpy(), pattern[0].numpy()[..., 1:])):
                d = distance if variant == 0 else distance[:, 1:]
                with np.errstate(invalid="ignore", divide="ignore"):  # row t = 0 is BOS only, dropped below
                    rows = rows / rows.sum(axis=-1, keepdims=True)  # renormalised once BOS is gone
                parts = [np.where(d >= 0, d, 0), d == 0, (d >= 1) & (d <= 5), (d >= 6) & (d <= 10), d > 10]
                for k, weight in enumerate(parts):
                    stats[variant, layer, k] = (rows * weight).sum(axis=-1)[:, 1:]
        per_query.append(stats[0])
        per_query_no_bos.append(stats[1])
    expected = np.concatenate(per_query, axis=-1).mean(axis=-1)  # [L, 5, H]
    expected_no_bos = np.concatenate(per_query_no_bos, axis=-1).mean(axis=-1)
    assert report.n_queries == sum(len(ids) - 1 for ids in token_ids)
    assert np.allclose(report.mean_distance, expected[:, 0], atol=1e-4)
    assert np.allclose(report.mean_distance_no_bos, expected_no_bos[:, 0], atol=1e-4)
    for k, bucket in enumerate(BUCKETS):
        assert np.allclose(report.mass[bucket], expected[:, 1 + k], atol=1e-5)
        assert np.allclose(report.mass_no_bos[bucket], expected_no_bos[:, 1 + k], atol=1e-5)
    total = sum(report.mass.values())
    assert np.allclose(total, 1.0, atol=1e-6) and np.allclose(sum(report.mass_no_bos.values()), 1.0, atol=1e-6)


def test_no_bos_variant_without_bos(tiny_llama) -> None:
    token_ids = tokenize(tiny_llama, [SHORT_PROMPT], bos=False)
    report = attention_distance(tiny_llama, token_ids, has_bos=False)
    assert np.array_equal(report.mean_distance, report.mean_distance_no_bos)
    assert report.n_queries == len(token_ids[0]) - 1


def test_bundled_model_gqa_heads(smol) -> None:
    token_ids = tokenize(smol, ["The cat sat on the mat, and then it slept for a long while in the sun."])
    report = attention_distance(smol, token_ids, has_bos=True)
    assert report.mean_distance.shape == (smol.n_layers, smol.n_heads) == (30, 9)
    assert np.allclose(sum(report.mass_no_bos.values()), 1.0, atol=1e-5)
    # Removing the BOS sink can only shorten distances: BOS is the farthest key of every query.
    assert (report.mean_distance_no_bos <= report.mean_distance + 1e-5).all()
    ranked = report.ranked()
    assert ranked[0][2] == pytest.approx(np.nanmin(report.mean_distance_no_bos))
    assert ranked[-1][2] == pytest.approx(np.nanmax(report.mean_distance_no_bos))


def test_cli_json_keys(run_cli) -> None:
    code, out, err = run_cli("attention", "-m", "tiny-llama", "-p", SHORT_PROMPT, "--json", "--device", "cpu")
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload) >= {"model", "token_ids", "n_layers", "n_heads", "mean_distance", "mean_distance_no_bos",
                            "mass", "mass_no_bos"}
    assert payload["n_layers"] == 4 and payload["n_heads"] == 4
    assert np.array(payload["mean_distance"]).shape == (4, 4)
    assert set(payload["mass"]) == set(BUCKETS) == set(payload["mass_no_bos"])
    assert np.array(payload["mass_no_bos"][">10"]).shape == (4, 4)


def test_cli_rich_view_and_errors(run_cli) -> None:
    code, out, err = run_cli("attention", "-m", "tiny-llama", "-p", SHORT_PROMPT, "--top", "3", "--device", "cpu")
    assert code == 0, err
    assert "mean attention distance" in out and "most local heads" in out and "most long-range heads" in out
    code, out, err = run_cli("attention", "-m", "tiny-llama", "--batch-size", "0")
    assert code == 2 and "--batch-size must be at least 1" in err and out == ""
