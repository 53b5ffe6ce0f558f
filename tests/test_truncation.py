"""Context truncation (docs/SCIENCE.md section 4): engine against a plain-HF loop, invariants, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from horizon.core.analyses.truncate.categories import CATEGORIES, token_category
from horizon.core.analyses.truncate.engine import (
    analyse_truncation,
    full_residuals,
    last_position_residuals,
    mean_residual,
    n_truncations,
    truncation_windows,
)
from horizon.core.model.loader import _tiny_hf_model
from horizon.core.model.prompts import batches, tokenize

from tests.conftest import SHORT_PROMPT

PROMPTS = [SHORT_PROMPT, "A short one, with commas.\nAnd a newline."]


@pytest.fixture(scope="module")
def reference_llama(tiny_llama):
    """A fresh HF instance with the same seeded weights: independent of the bridge's wrapping."""
    return _tiny_hf_model("tiny-llama", len(tiny_llama.tokenizer))


def hf_residuals(hf_model, ids: list[int]) -> torch.Tensor:
    """resid_pre_0..L-1 and the final-norm input at every position, one prompt alone: [L+1, T, d]."""
    captured = {}
    handle = hf_model.model.norm.register_forward_pre_hook(lambda module, args: captured.update(final=args[0]))
    try:
        with torch.inference_mode():
            out = hf_model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        handle.remove()
    n_layers = hf_model.config.num_hidden_layers
    rows = [out.hidden_states[layer][0] for layer in range(n_layers)] + [captured["final"][0]]
    return torch.stack(rows).float()


def centred_cos(a: np.ndarray, b: np.ndarray, mu: np.ndarray) -> np.ndarray:
    a, b = a - mu, b - mu
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_windows_skip_positions_without_a_dropped_token() -> None:
    token_ids = [[0, 11, 12, 13, 14], [0, 21, 22]]
    prompt_index, positions, windows = truncation_windows(token_ids, 2)
    assert positions == [3, 4]  # t - c >= 1: t = 3, 4 of the first prompt; none of the second
    assert prompt_index == [0, 0]
    assert windows.tolist() == [[0, 12, 13], [0, 13, 14]]
    assert truncation_windows(token_ids, 4)[1] == []  # c >= t everywhere
    assert n_truncations(token_ids, [1, 2, 4]) == 3 + 1 + 2 + 0 + 0


def test_lengths_at_or_over_t_report_nothing(tiny_llama) -> None:
    token_ids = tokenize(tiny_llama, ["one two three four five six"])
    n = len(token_ids[0])
    report = analyse_truncation(tiny_llama, token_ids, lengths=(1, n - 2, n - 1, n + 3), n_outliers=3)
    for c in (1, n - 2, n - 1, n + 3):
        selected = report.record_length == c
        assert int(selected.sum()) == max(0, n - 1 - c)
        assert (report.record_pos[selected] - c >= 1).all()
    assert all(np.isnan(report.median_cos[n - 1])) and all(np.isnan(report.median_cos[n + 3]))
    assert report.categories[n + 3]["count"] == dict.fromkeys(CATEGORIES, 0)
    assert {r.length for r in report.per_token} == {1, n - 2}


def test_untruncated_prompt_gives_cosine_one(tiny_llama, tiny_gpt2) -> None:
    for model in (tiny_llama, tiny_gpt2):
        token_ids = tokenize(model, [SHORT_PROMPT])
        ids = token_ids[0]
        batch = batches(model, token_ids, True)[0]
        full = full_residuals(model, batch)[:, 0]  # [L+1, T, d]
        mu = mean_residual(model, token_ids, has_bos=True)
        for t in (3, len(ids) - 1):
            # "Truncating" to c = t keeps every token: the same prompt, so the same residual.
            same = last_position_residuals(model, torch.tensor([ids[: t + 1]]))[0]
            cos = torch.nn.functional.cosine_similarity(same - mu, full[:, t] - mu, dim=-1)
            assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5), model.spec


def test_batched_engine_equals_hf_loop(tiny_llama, reference_llama) -> None:
    """Every cosine, mu and summary against one-prompt-at-a-time plain-HF forwards."""
    token_ids = tokenize(tiny_llama, PROMPTS)
    lengths = (1, 3, 6)
    # batch_size 7 leaves ragged last batches; the two prompts differ in length (padding).
    report = analyse_truncation(tiny_llama, token_ids, lengths=lengths, batch_size=7, n_outliers=5)

    full = [hf_residuals(reference_llama, ids).numpy() for ids in token_ids]
    mu = np.concatenate([f[:, 1:] for f in full], axis=1).astype(np.float64).mean(axis=1)  # non-BOS positions
    assert np.allclose(mean_residual(tiny_llama, token_ids, True).numpy(), mu, atol=1e-5)

    expected = {}
    for p, ids in enumerate(token_ids):
        for c in lengths:
            for t in range(1, len(ids)):
                if t - c < 1:
                    continue
                truncated = hf_residuals(reference_llama, [ids[0], *ids[t - c + 1 : t + 1]]).numpy()[:, -1]
                expected[(p, t, c)] = (centred_cos(truncated, full[p][:, t], mu),
                                       centred_cos(truncated, full[p][:, t], 0.0))
    got = {(r.prompt, r.pos, r.length): r for r in report.per_token}
    assert set(got) == set(expected)
    for key, (cos, cos_raw) in expected.items():
        assert np.allclose(got[key].cos, cos, atol=1e-4), key
        assert np.allclose(got[key].cos_raw, cos_raw, atol=1e-4), key
        assert got[key].token == tiny_llama.tokenizer.decode([token_ids[key[0]][key[1]]])
        assert got[key].category == token_category(got[key].token)

    for c in lengths:
        rows = np.array([expected[k][0] for k in expected if k[2] == c])
        assert np.allclose(report.median_cos[c], np.median(rows, axis=0), atol=1e-4)
        q25, q75 = report.quartiles_cos[c]
        assert np.allclose(q25, np.quantile(rows, 0.25, axis=0), atol=1e-4)
        assert np.allclose(q75, np.quantile(rows, 0.75, axis=0), atol=1e-4)
        raw = np.array([expected[k][1] for k in expected if k[2] == c])
        assert np.allclose(report.median_cos_raw[c], np.median(raw, axis=0), atol=1e-4)


def test_summaries_and_outliers_are_consistent(tiny_llama) -> None:
    token_ids = tokenize(tiny_llama, PROMPTS)
    report = analyse_truncation(tiny_llama, token_ids, lengths=(1, 4), n_outliers=6)
    for c in (1, 4):
        selected = report.record_length == c
        counts = report.categories[c]["count"]
        assert sum(counts.values()) == int(selected.sum())
        for category in CATEGORIES:
            rows = report.cos[selected & (np.array(report.record_category) == category)]
            if counts[category]:
                assert np.allclose(report.categories[c][category], np.median(rows, axis=0))
        q25, q75 = report.quartiles_cos[c]
        assert (np.array(q25) <= np.array(report.median_cos[c]) + 1e-7).all()
        assert (np.array(report.median_cos[c]) <= np.array(q75) + 1e-7).all()

    assert len(report.outliers) == 6
    scores = [o.cos for o in report.outliers]
    assert scores == sorted(scores)
    assert scores[-1] <= np.sort(report.cos.min(axis=1))[5] + 1e-7  # the six lowest
    for outlier in report.outliers:
        record = next(r for r in report.per_token
                      if (r.prompt, r.pos, r.length) == (outlier.prompt, outlier.pos, outlier.length))
        assert outlier.cos == pytest.approx(min(record.cos)) == pytest.approx(record.cos[outlier.layer])
        ids = token_ids[outlier.prompt]
        assert tiny_llama.tokenizer.decode(ids[1 : outlier.pos]).endswith(outlier.context_before)
        assert outlier.token == tiny_llama.tokenizer.decode([ids[outlier.pos]])

    at_final = analyse_truncation(tiny_llama, token_ids, lengths=(1,), n_outliers=3, outlier_layer=tiny_llama.n_layers)
    assert [o.layer for o in at_final.outliers] == [tiny_llama.n_layers] * 3
    assert [o.cos for o in at_final.outliers] == pytest.approx(np.sort(at_final.cos[:, -1])[:3].tolist())


def test_given_mu_is_used(tiny_llama) -> None:
    token_ids = tokenize(tiny_llama, [SHORT_PROMPT])
    zero = torch.zeros(tiny_llama.n_layers + 1, tiny_llama.d_model)
    report = analyse_truncation(tiny_llama, token_ids, lengths=(2,), mu=zero)
    assert np.allclose(report.cos, report.cos_raw, atol=1e-6)  # centring on zero is no centring
    default = analyse_truncation(tiny_llama, token_ids, lengths=(2,))
    corpus_mu = mean_residual(tiny_llama, token_ids, has_bos=True)
    explicit = analyse_truncation(tiny_llama, token_ids, lengths=(2,), mu=corpus_mu)
    assert np.allclose(default.cos, explicit.cos, atol=1e-6)
    assert not np.allclose(default.cos, default.cos_raw, atol=1e-3)


def test_progress_counts_every_truncated_prompt(tiny_llama) -> None:
    token_ids = tokenize(tiny_llama, PROMPTS)
    done = []
    analyse_truncation(tiny_llama, token_ids, lengths=(1, 5), batch_size=4, progress=done.append)
    assert sum(done) == n_truncations(token_ids, (1, 5))


def test_bundled_model_embedding_row_is_exact(smol) -> None:
    """Rotary model: resid_pre_0 is the token embedding alone, identical with or without context."""
    token_ids = tokenize(smol, ["The cat sat on the mat, and then it slept."])
    report = analyse_truncation(smol, token_ids, lengths=(1, 5), n_outliers=3)
    assert np.allclose(report.cos[:, 0], 1.0, atol=1e-5)
    assert np.allclose(report.cos_raw[:, 0], 1.0, atol=1e-5)
    # Keeping more context can only help on average at the first attention read.
    assert report.median_cos[5][1] > report.median_cos[1][1]
    assert np.isfinite(report.cos).all()


def test_cli_json_keys(run_cli) -> None:
    code, out, err = run_cli("truncate", "-m", "tiny-llama", "-p", SHORT_PROMPT, "--lengths", "1,3",
                             "--outliers", "4", "--json", "--device", "cpu")
    assert code == 0, err
    payload = json.loads(out)
    assert {"model", "token_ids", "lengths", "n_layers", "median_cos", "quartiles_cos", "median_cos_raw",
            "categories", "per_token", "outliers"} <= set(payload)
    assert payload["model"] == "tiny-llama" and payload["lengths"] == [1, 3] and payload["n_layers"] == 4
    assert set(payload["median_cos"]) == {"1", "3"} and len(payload["median_cos"]["1"]) == 5
    assert len(payload["quartiles_cos"]["3"]) == 2 and len(payload["quartiles_cos"]["3"][0]) == 5
    assert set(payload["categories"]["1"]) == {*CATEGORIES, "count"}
    record = payload["per_token"][0]
    assert {"prompt", "pos", "token", "category", "length", "cos"} <= set(record) and len(record["cos"]) == 5
    assert len(payload["outliers"]) == 4 and "context_before" in payload["outliers"][0]
    n = len(payload["token_ids"][0])
    assert len(payload["per_token"]) == (n - 2) + (n - 4)


def test_cli_rich_view(run_cli) -> None:
    code, out, err = run_cli("truncate", "-m", "tiny-llama", "-p", SHORT_PROMPT, "--outliers", "3", "--device", "cpu")
    assert code == 0, err
    assert "c=10" in out and "resid_pre_3" in out and "final" in out
    assert "common" in out and "lowest-cosine" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--lengths", "0,5"), "--lengths values must be >= 1"),
        (("--lengths", "a"), "--lengths takes comma-separated integers"),
        (("--no-bos",), "drop --no-bos"),
        (("--batch-size", "0"), "--batch-size must be at least 1"),
        (("--outliers", "-1"), "--outliers must be >= 0"),
        (("--category-length", "7"), "--category-length 7 is not one of --lengths"),
        (("-p", "Hi", "--lengths", "5"), "no position can be truncated"),
    ],
)
def test_cli_errors(run_cli, args: tuple[str, ...], message: str) -> None:
    code, out, err = run_cli("truncate", "-m", "tiny-llama", "--device", "cpu", *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert out == ""
