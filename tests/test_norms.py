"""Norm growth: per-position norms against plain HF hooks, aggregates, the growth fit, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from horizon.core.analyses.norms.engine import (
    NORM_SITES,
    analyse_norms,
    appendix1_check,
    default_fit_window,
    fit_growth,
)
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import tokenize

from tests.conftest import SHORT_PROMPT

PROMPTS = [SHORT_PROMPT, "Water boils at one hundred degrees."]


@pytest.fixture(scope="module")
def plain_smol():
    """A separate HF instance of the bundled model: the bridge wraps its own HF modules in place."""
    from tests.bench.timing import plain_hf_model

    return plain_hf_model()


def hf_site_norms(hf_model, ids: list[int]) -> dict[str, np.ndarray]:
    """Norms and stds of every site from plain HF forward (pre-)hooks on one unpadded prompt."""
    layers = hf_model.model.layers
    seen: dict[str, list[torch.Tensor | None]] = {
        site: [None] * len(layers) for site in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
    }
    final: list[torch.Tensor] = []
    handles = []

    def first_tensor(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    def output_tensor(output):
        return output[0] if isinstance(output, tuple) else output

    for index, layer in enumerate(layers):
        handles += [
            layer.register_forward_pre_hook(
                lambda module, args, kwargs, i=index: seen["resid_pre"].__setitem__(i, first_tensor(args, kwargs)),
                with_kwargs=True),
            layer.post_attention_layernorm.register_forward_pre_hook(
                lambda module, args, i=index: seen["resid_mid"].__setitem__(i, args[0])),
            layer.register_forward_hook(
                lambda module, args, output, i=index: seen["resid_post"].__setitem__(i, output_tensor(output))),
            layer.self_attn.o_proj.register_forward_hook(
                lambda module, args, output, i=index: seen["attn_out"].__setitem__(i, output)),
            layer.mlp.register_forward_hook(
                lambda module, args, output, i=index: seen["mlp_out"].__setitem__(i, output)),
        ]
    handles.append(hf_model.model.norm.register_forward_pre_hook(lambda module, args: final.append(args[0])))
    try:
        with torch.inference_mode():
            hf_model(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for site, tensors in seen.items():
        stacked = torch.stack([t[0] for t in tensors])  # type: ignore[index]
        if site == "resid_pre":
            stacked = torch.cat((stacked, final[0][0].unsqueeze(0)))
        out[site] = stacked.double().norm(dim=-1).numpy()
        out[site + ":std"] = stacked.double().std(dim=-1, correction=0).numpy()
    return out


def test_norms_match_plain_hf_hooks(smol: LoadedModel, plain_smol) -> None:
    token_ids = tokenize(smol, PROMPTS)
    # batch_size 2: the shorter prompt is right-padded, which must not change its numbers.
    report = analyse_norms(smol, token_ids, has_bos=True, batch_size=2)
    for prompt, ids in enumerate(token_ids):
        reference = hf_site_norms(plain_smol, ids)
        for site in NORM_SITES:
            got = report.norms[site][prompt]
            rows = smol.n_layers + (1 if site == "resid_pre" else 0)
            assert got.shape == (rows, len(ids))
            np.testing.assert_allclose(got, reference[site], rtol=1e-4, err_msg=site)
            np.testing.assert_allclose(report.stds[site][prompt], reference[site + ":std"], rtol=1e-4)


def test_aggregates_pool_non_bos_positions(tiny_llama: LoadedModel) -> None:
    token_ids = tokenize(tiny_llama, PROMPTS)
    report = analyse_norms(tiny_llama, token_ids, has_bos=True, batch_size=1)
    for site in NORM_SITES:
        pooled = np.concatenate([array[:, 1:] for array in report.norms[site]], axis=1)
        stats = report.stats[site]
        np.testing.assert_allclose(stats.mean_norm, pooled.mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(stats.median_norm, np.median(pooled, axis=1), rtol=1e-12)
        np.testing.assert_allclose(stats.quantiles[95], np.percentile(pooled, 95, axis=1), rtol=1e-12)
        pooled_std = np.concatenate([array[:, 1:] for array in report.stds[site]], axis=1)
        np.testing.assert_allclose(stats.std, pooled_std.mean(axis=1), rtol=1e-12)
    assert report.n_positions == sum(len(ids) - 1 for ids in token_ids)
    bos = np.mean([array[:, 0] for array in report.norms["resid_pre"]], axis=0)
    np.testing.assert_allclose(report.bos_mean_norm, bos)
    assert len(report.stats["resid_pre"].mean_norm) == tiny_llama.n_layers + 1
    # resid_post_i is resid_pre_{i+1} (and the final residual after the last layer).
    for prompt in range(len(token_ids)):
        np.testing.assert_allclose(report.norms["resid_post"][prompt], report.norms["resid_pre"][prompt][1:],
                                   rtol=1e-5)
    with_bos = analyse_norms(tiny_llama, token_ids, has_bos=True, include_bos=True)
    pooled = np.concatenate(with_bos.norms["resid_pre"], axis=1)
    np.testing.assert_allclose(with_bos.stats["resid_pre"].mean_norm, pooled.mean(axis=1), rtol=1e-12)
    assert not np.allclose(with_bos.stats["resid_pre"].mean_norm, report.stats["resid_pre"].mean_norm)


def test_growth_ratios_and_appendix1(tiny_gpt2: LoadedModel) -> None:
    report = analyse_norms(tiny_gpt2, tokenize(tiny_gpt2, PROMPTS), has_bos=True)
    means = report.stats["resid_pre"].mean_norm
    np.testing.assert_allclose(report.growth.ratios, means[1:] / means[:-1])
    assert all(report.appendix1["holds"])
    lhs = report.stats["attn_out"].mean_norm + report.stats["mlp_out"].mean_norm
    np.testing.assert_allclose(report.appendix1["lhs"], lhs)
    np.testing.assert_allclose(report.appendix1["rhs"], means[1:] - means[:-1])


def test_appendix1_flags_an_impossible_jump() -> None:
    check = appendix1_check([1.0, 10.0, 11.0], [1.0, 0.5], [1.0, 0.5])
    assert check["holds"] == [False, True]


def test_fit_recovers_an_exact_exponential() -> None:
    norms = 3.0 * 1.07 ** np.arange(13)
    growth = fit_growth(norms, (2, 10))
    assert growth.rate == pytest.approx(1.07, rel=1e-12)
    assert growth.r2 == pytest.approx(1.0)
    assert growth.fit_layers == (2, 10) and growth.chosen == "user"
    np.testing.assert_allclose(growth.ratios, 1.07)
    assert growth.describe() == "1.070/layer over layers 2-10 (r^2 1.00)"


def test_default_window_skips_the_early_jump() -> None:
    # An embedding-sized start, a big jump, then clean 1.1x growth to the end.
    norms = [1.0, 20.0, *(50.0 * 1.1 ** np.arange(12))]
    assert default_fit_window(norms) == (2, 13)
    growth = fit_growth(norms)
    assert growth.chosen == "auto" and growth.rate == pytest.approx(1.1)
    # A straight line everywhere: the whole range.
    assert default_fit_window(2.0 ** np.arange(6)) == (0, 5)


def test_default_window_is_the_longest_straight_one_by_brute_force() -> None:
    from horizon.core.analyses.norms.engine import FIT_TOLERANCE, MIN_FIT_POINTS

    rng = np.random.default_rng(7)
    for _ in range(20):
        norms = np.exp(np.cumsum(rng.normal(0.08, 0.06, size=25)))
        start, stop = default_fit_window(norms)
        logs = np.log(norms)

        def rms(a: int, b: int, logs: np.ndarray = logs) -> float:
            x = np.arange(a, b + 1)
            residual = logs[a : b + 1] - np.polyval(np.polyfit(x, logs[a : b + 1], 1), x)
            return float(np.sqrt((residual**2).mean()))

        straight = [(b - a + 1) for a in range(25) for b in range(a + MIN_FIT_POINTS - 1, 25)
                    if rms(a, b) <= FIT_TOLERANCE]
        if straight:
            assert rms(start, stop) <= FIT_TOLERANCE + 1e-12
            assert stop - start + 1 == max(straight)
        else:
            assert (start, stop) == (0, 24)


@pytest.mark.parametrize("window", [(5, 3), (0, 13), (-1, 4), (4, 4)])
def test_bad_fit_windows_raise(window: tuple[int, int]) -> None:
    with pytest.raises(HorizonError, match="--fit"):
        fit_growth(np.linspace(1, 2, 13), window)


@pytest.mark.parametrize("fit", ["3:1", "a:b", "2", "0:99", "-1:2"])
def test_cli_bad_fit_exits_2(run_cli, fit: str) -> None:
    code, out, err = run_cli("norms", "-m", "tiny-llama", "--fit", fit, "--prompt", "Hello there.")
    assert code == 2
    assert err.startswith("horizon: error:") and "--fit" in err and "Traceback" not in err
    assert out == ""


def test_cli_bad_processing_exits_2(run_cli) -> None:
    code, _, err = run_cli("norms", "-m", "tiny-llama", "--processing", "folded")
    assert code == 2 and "--processing" in err


def test_cli_json_keys(run_cli, tiny_llama: LoadedModel) -> None:
    code, out, _ = run_cli("norms", "-m", "tiny-llama", "--json", "--fit", "1:4", "--prompt", SHORT_PROMPT)
    assert code == 0
    data = json.loads(out)
    n_layers = tiny_llama.n_layers
    assert {"model", "token_ids", "tokens", "n_layers", "d_model", "sites", "growth", "bos"} <= set(data)
    assert data["n_layers"] == n_layers and data["d_model"] == tiny_llama.d_model
    assert set(data["sites"]) == set(NORM_SITES)
    n_tokens = len(data["token_ids"][0])
    assert len(data["tokens"][0]) == n_tokens
    for site, entry in data["sites"].items():
        rows = n_layers + 1 if site == "resid_pre" else n_layers
        assert {"mean_norm", "median_norm", "std", "quantiles", "per_position"} <= set(entry)
        assert len(entry["mean_norm"]) == rows and len(entry["quantiles"]["5"]) == rows
        assert np.asarray(entry["per_position"]).shape == (1, rows, n_tokens)
    growth = data["growth"]
    assert growth["fit_layers"] == [1, 4] and len(growth["ratios"]) == n_layers
    means = np.log(data["sites"]["resid_pre"]["mean_norm"][1:5])
    assert growth["rate"] == pytest.approx(math.exp(np.polyfit(np.arange(4), means, 1)[0]), rel=1e-9)
    assert len(data["bos"]["mean_norm"]) == n_layers + 1
    assert "weights" not in data


def test_cli_rich_view(run_cli) -> None:
    code, out, _ = run_cli("norms", "-m", "tiny-gpt2", "--prompt", SHORT_PROMPT)
    assert code == 0
    assert "/layer over layers" in out
    for site in NORM_SITES:
        assert site in out
    assert "resid_pre norm per position" in out


def test_analysis_skips_the_unembedding(tiny_llama: LoadedModel) -> None:
    """Only norms are needed: the pass stops at the final norm's input, before the vocab-sized matmul."""
    calls: list[int] = []
    handle = tiny_llama.hf_model.lm_head.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        report = analyse_norms(tiny_llama, tokenize(tiny_llama, PROMPTS), has_bos=True)
    finally:
        handle.remove()
    assert calls == []
    assert np.all(report.norms["resid_pre"][0][-1] > 0)  # the final residual was still recorded
