"""The effective layer horizon: invariants, a bridge-hook reference, an independent plain-HF re-implementation."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from horizon.core.analyses.scan import engine as HS
from horizon.core.analyses.scan.engine import scan
from horizon.core.errors import HorizonError
from horizon.core.model.loader import _tiny_hf_model
from horizon.core.model.prompts import make_batch, tokenize
from horizon.core.patching import horizon as H
from horizon.core.patching.horizon import HorizonConfig, clean_run, patch, patched_logits, reference_patched_logits
from horizon.core.patching.staircase import StaircasePass
from horizon.core.sources.queries import Query

from tests.conftest import SHORT_PROMPT

PROMPTS = [SHORT_PROMPT, "Hello world, this is short.", "One two three four five six seven eight nine ten eleven."]


def _batch(model, prompts):
    ids = tokenize(model, prompts)
    return ids, make_batch(ids, 0, True, model.device)


def _option_grid(n_layers: int) -> list[HorizonConfig]:
    configs = []
    for horizon in (1, 3, 2 * n_layers):
        for source in ("recursive", "clean"):
            for keep_embed in (False, True):
                final = ("window", "full")[len(configs) % 2]
                configs.append(HorizonConfig(horizon, source, keep_embed, final, (len(configs) // 2) % n_layers))
    return configs


# ----------------------------------------------------------------------------- config


def test_config_counts_layers_and_sublayers() -> None:
    assert HorizonConfig.from_layers(3).horizon_sublayers == 6
    assert HorizonConfig.from_unit(3, "sublayer").horizon_sublayers == 3
    assert HorizonConfig.from_unit(3, "layer", source="clean").source == "clean"
    config = HorizonConfig(4, start_layer=3)
    # L = 5: readers j = 1..11; j > 4 and layer(j) >= 3 -> first is attn_3 = reader 7; final (11) patched.
    assert config.first_patched_reader(5) == 7
    assert [config.patches(j, 5) for j in (6, 7, 11)] == [False, True, True]
    assert not HorizonConfig(4, final="full").patches(11, 5)
    assert HorizonConfig(11).first_patched_reader(5) is None
    assert HorizonConfig(2, start_layer=6).first_patched_reader(5) is None
    assert HorizonConfig(2, start_layer=5).first_patched_reader(5) == 11  # the final readout is layer L


@pytest.mark.parametrize("bad", [
    lambda: HorizonConfig(0), lambda: HorizonConfig(2, source="x"), lambda: HorizonConfig(2, final="x"),
    lambda: HorizonConfig(2, start_layer=-1), lambda: HorizonConfig.from_layers(0),
    lambda: HorizonConfig.from_unit(1, "block"),
])
def test_config_rejects_bad_values(bad) -> None:
    with pytest.raises(HorizonError):
        bad()


def test_parallel_architecture_refused(tiny_llama) -> None:
    parallel = dataclasses.replace(tiny_llama, parallel_attn_mlp=True)
    with pytest.raises(HorizonError, match="parallel"):
        patch(parallel, tokenize(tiny_llama, [SHORT_PROMPT]), HorizonConfig(2))


# ----------------------------------------------------------------------------- invariants


def test_wide_horizon_and_late_start_reproduce_clean(tiny_model) -> None:
    ids, batch = _batch(tiny_model, PROMPTS)
    clean = clean_run(tiny_model, batch)
    n = tiny_model.n_layers
    no_ops = [HorizonConfig(2 * n + 1), HorizonConfig(2 * n + 1, source="clean"), HorizonConfig(1, start_layer=n + 1),
              HorizonConfig(1, start_layer=n, final="full")]
    for _, logits in patched_logits(tiny_model, clean, no_ops):
        assert (logits - clean.logits)[batch.mask].abs().max() <= 1e-4
    result = patch(tiny_model, ids, HorizonConfig(2 * n + 1))
    assert result.delta_loss == 0 and result.kl == 0 and result.top1_agreement == 1


@pytest.mark.parametrize("first_layer", [0, 1, 3])
def test_pass_from_cached_clean_residual_reproduces_clean(tiny_model, first_layer) -> None:
    """The replayed blocks (start from cached resid_pre, tiled kwargs, own readout) equal the bridge's run."""
    _, batch = _batch(tiny_model, PROMPTS)
    clean = clean_run(tiny_model, batch)
    first_layer = min(first_layer, tiny_model.n_layers - 1)
    rows = [(first_layer, 0, HorizonConfig(2 * tiny_model.n_layers + 1)),
            (first_layer, 1, HorizonConfig(2 * tiny_model.n_layers + 1, final="full"))]
    for _, logits in StaircasePass(tiny_model, clean, rows).run():
        assert (logits - clean.logits)[batch.mask].abs().max() <= 1e-4


def test_engine_matches_bridge_reference_for_every_option(tiny_model) -> None:
    """Staircase-batched passes from cached prefixes == one full hooked bridge pass per config."""
    _, batch = _batch(tiny_model, PROMPTS)
    clean = clean_run(tiny_model, batch)
    configs = _option_grid(tiny_model.n_layers)
    seen = 0
    changed = 0
    # A small memory budget forces several passes, so grouping is exercised too.
    for index, logits in patched_logits(tiny_model, clean, configs, max_pass_bytes=4 * H._row_bytes(tiny_model, clean)):
        reference = reference_patched_logits(tiny_model, batch.input_ids, configs[index])
        assert (logits - reference)[batch.mask].abs().max() <= 1e-4, configs[index]
        changed += bool((reference - clean.logits)[batch.mask].abs().max() > 1e-3)
        seen += 1
    assert seen == len(configs)
    assert changed > len(configs) // 2  # the grid really patches something


def test_padding_does_not_change_any_prompt(tiny_llama) -> None:
    ids = tokenize(tiny_llama, PROMPTS)
    config = HorizonConfig(3, keep_embed=True, start_layer=1)
    together = patch(tiny_llama, ids, config)
    tokens = 0
    for index, single_ids in enumerate(ids):
        alone = patch(tiny_llama, [single_ids], config)
        assert alone.n_tokens == len(single_ids) - 1
        tokens += alone.n_tokens
        for field in ("per_token_loss_clean", "per_token_loss_patched", "per_token_kl"):
            assert getattr(together, field)[index] == pytest.approx(getattr(alone, field)[0], abs=1e-4)
    assert together.n_tokens == tokens


# ----------------------------------------------------------------------------- independent re-implementation


@pytest.fixture(scope="module")
def fresh_tiny_llama(tiny_llama):
    """Its own HF instance (the bridge wraps the loaded model's modules in place)."""
    return _tiny_hf_model("tiny-llama", len(tiny_llama.tokenizer))


def _hf_patched_logits(hf, input_ids: torch.Tensor, config: HorizonConfig, everywhere: bool = False,
                       has_bos: bool = True) -> torch.Tensor:
    """docs/SCIENCE.md section 3 written directly with torch module hooks on a plain LlamaForCausalLM.

    ``everywhere`` patches every reader with its window, even where the window holds all outputs.
    Mean ablation (one prompt): outputs before the window are replaced by their clean means over
    positions 1.. (all positions without a BOS), and at the BOS position by the clean outputs there.
    """
    layers = hf.model.layers
    n_layers = len(layers)

    def run(clean_outputs: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outputs: list[torch.Tensor] = []
        handles = []

        def keep(output):
            outputs.append(output[0] if isinstance(output, tuple) else output)

        def window_hook(j: int):
            def hook(module, args):
                layer = (j - 1) // 2
                final_full = j == 2 * n_layers + 1 and config.final == "full"
                if clean_outputs is None and not everywhere:
                    return None
                if not everywhere and (final_full or j <= config.horizon_sublayers or layer < config.start_layer):
                    return None
                if not everywhere and config.only_layer is not None and layer != config.only_layer:
                    return None
                if everywhere and (clean_outputs is not None and not config.patches(j, n_layers)):
                    return None
                source = clean_outputs if (clean_outputs is not None and config.source == "clean") else outputs
                start = max(0, j - config.horizon_sublayers)
                window = sum(source[start:j][1:], source[start:j][0])
                if config.keep_embed and start > 0:
                    window = window + source[0]
                if config.ablation == "mean" and clean_outputs is not None:
                    filler = torch.zeros_like(window)
                    for i in range(1 if config.keep_embed else 0, start):
                        if has_bos:
                            filler[:, 1:] += clean_outputs[i][:, 1:].mean(dim=1, keepdim=True)
                            filler[:, 0] += clean_outputs[i][:, 0]
                        else:
                            filler += clean_outputs[i].mean(dim=1, keepdim=True)
                    window = window + filler
                return (window, *args[1:])

            return hook

        handles.append(hf.model.embed_tokens.register_forward_hook(lambda m, a, o: keep(o)))
        for i, layer in enumerate(layers):
            handles.append(layer.input_layernorm.register_forward_pre_hook(window_hook(2 * i + 1)))
            handles.append(layer.self_attn.register_forward_hook(lambda m, a, o: keep(o)))
            handles.append(layer.post_attention_layernorm.register_forward_pre_hook(window_hook(2 * i + 2)))
            handles.append(layer.mlp.register_forward_hook(lambda m, a, o: keep(o)))
        handles.append(hf.model.norm.register_forward_pre_hook(window_hook(2 * n_layers + 1)))
        try:
            with torch.inference_mode():
                logits = hf(input_ids).logits
        finally:
            for handle in handles:
                handle.remove()
        return logits, outputs

    if everywhere:
        return run(None)[0]
    _, clean_outputs = run(None)
    # Recursive: the hooks read `outputs` of this same run; clean: the first run's.
    return run(clean_outputs)[0]


def _ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[0, :-1], input_ids[0, 1:], reduction="none")


def test_full_window_everywhere_reproduces_clean_independently(tiny_llama, fresh_tiny_llama) -> None:
    """K >= 2L+1 with the window applied at every reader (plain HF) equals our clean logits."""
    ids = tokenize(tiny_llama, [SHORT_PROMPT])
    input_ids = torch.tensor(ids)
    windowed = _hf_patched_logits(fresh_tiny_llama, input_ids, HorizonConfig(2 * tiny_llama.n_layers + 1),
                                  everywhere=True)
    result = patch(tiny_llama, ids, HorizonConfig(2 * tiny_llama.n_layers + 1), keep_logits=True)
    assert (windowed[0] - result.logits[0]).abs().max() <= 1e-4
    with torch.inference_mode():
        plain = fresh_tiny_llama(input_ids).logits
    assert result.loss_clean == pytest.approx(float(_ce(plain, input_ids).mean()), abs=1e-5)


@pytest.mark.parametrize("config", [
    HorizonConfig(1), HorizonConfig(2), HorizonConfig(3, start_layer=2), HorizonConfig(4, keep_embed=True),
    HorizonConfig(2, source="clean"), HorizonConfig(5, source="clean", keep_embed=True, final="full"),
    HorizonConfig(2, final="full", start_layer=1), HorizonConfig(6, start_layer=3, keep_embed=True),
    HorizonConfig(1, start_layer=4),
], ids=str)
def test_independent_plain_hf_reimplementation(tiny_llama, fresh_tiny_llama, config) -> None:
    ids = tokenize(tiny_llama, [SHORT_PROMPT])
    input_ids = torch.tensor(ids)
    expected_logits = _hf_patched_logits(fresh_tiny_llama, input_ids, config)
    with torch.inference_mode():
        clean_logits = fresh_tiny_llama(input_ids).logits
    expected = _ce(expected_logits, input_ids)
    result = patch(tiny_llama, ids, config, keep_logits=True)
    assert result.loss_patched == pytest.approx(float(expected.mean()), abs=1e-4)
    assert result.per_token_loss_patched[0] == pytest.approx(expected.tolist(), abs=1e-4)
    assert (result.logits[0] - expected_logits[0]).abs().max() <= 1e-4
    clean_logp, patched_logp = clean_logits[0, :-1].log_softmax(-1), expected_logits[0, :-1].log_softmax(-1)
    kl = (clean_logp.exp() * (clean_logp - patched_logp)).sum(-1)
    assert result.per_token_kl[0] == pytest.approx(kl.tolist(), abs=1e-5)
    agree = (clean_logp.argmax(-1) == patched_logp.argmax(-1)).double().mean()
    assert result.top1_agreement == pytest.approx(float(agree))
    assert result.delta_loss == pytest.approx(result.loss_patched - result.loss_clean, abs=1e-9)


def _check_against_hf(tiny_llama, hf, config: HorizonConfig, bos: bool = True) -> None:
    ids = tokenize(tiny_llama, [SHORT_PROMPT], bos=bos)
    input_ids = torch.tensor(ids)
    expected_logits = _hf_patched_logits(hf, input_ids, config, has_bos=bos)
    result = patch(tiny_llama, ids, config, keep_logits=True, has_bos=bos)
    assert (result.logits[0] - expected_logits[0]).abs().max() <= 1e-4, config
    assert result.per_token_loss_patched[0] == pytest.approx(_ce(expected_logits, input_ids).tolist(), abs=1e-4)


@pytest.mark.parametrize("source", ["recursive", "clean"])
@pytest.mark.parametrize("keep_embed", [False, True])
@pytest.mark.parametrize("horizon, start_layer, final", [(1, 0, "window"), (3, 1, "full"), (6, 0, "window")])
def test_mean_ablation_matches_plain_hf(tiny_llama, fresh_tiny_llama, source, keep_embed, horizon, start_layer,
                                        final) -> None:
    config = HorizonConfig(horizon, source, keep_embed, final, start_layer, ablation="mean")
    _check_against_hf(tiny_llama, fresh_tiny_llama, config)


@pytest.mark.parametrize("keep_embed", [False, True])
def test_mean_ablation_without_bos_averages_every_position(tiny_llama, fresh_tiny_llama, keep_embed) -> None:
    _check_against_hf(tiny_llama, fresh_tiny_llama, HorizonConfig(2, keep_embed=keep_embed, ablation="mean"), bos=False)


def test_mean_ablation_differs_from_zero_and_wide_horizon_is_clean(tiny_llama) -> None:
    ids = tokenize(tiny_llama, PROMPTS)
    zero = patch(tiny_llama, ids, HorizonConfig(2))
    mean = patch(tiny_llama, ids, HorizonConfig(2, ablation="mean"))
    assert abs(zero.loss_patched - mean.loss_patched) > 1e-3
    wide = patch(tiny_llama, ids, HorizonConfig(2 * tiny_llama.n_layers + 1, ablation="mean"))
    assert wide.delta_loss == 0 and wide.kl == 0


def test_ablation_means_pool_every_prompt_and_corpus_means_agree(tiny_llama) -> None:
    ids = tokenize(tiny_llama, PROMPTS)
    cleans = H.clean_runs(tiny_llama, ids, batch_size=2)
    means = H.ablation_means(cleans)
    # Directly: every prompt alone, its outputs at positions 1..T-1, pooled.
    rows = []
    for single in ids:
        clean = H.clean_runs(tiny_llama, [single])[0]
        rows.append(clean.outputs[:, 0, 1:].double())
    expected = torch.cat(rows, dim=1).mean(dim=1)
    assert means.n_positions == sum(len(x) - 1 for x in ids)
    assert torch.allclose(means.mean, expected, atol=1e-6)
    corpus = H.corpus_ablation_means(tiny_llama, ids, batch_size=3)
    assert torch.allclose(corpus.mean, expected, atol=1e-6) and corpus.has_bos
    # Passing corpus-wide means gives one prompt the corpus numbers, not its own.
    config = HorizonConfig(2, ablation="mean")
    own = patch(tiny_llama, [ids[0]], config)
    shared = patch(tiny_llama, [ids[0]], config, means=means)
    assert own.loss_patched != pytest.approx(shared.loss_patched, abs=1e-6)
    together = patch(tiny_llama, ids, config)
    assert together.per_token_loss_patched[0] == pytest.approx(shared.per_token_loss_patched[0], abs=1e-4)


@pytest.mark.parametrize("config", [
    HorizonConfig(2, only_layer=2), HorizonConfig(1, only_layer=1, source="clean"),
    HorizonConfig(2, only_layer=4), HorizonConfig(3, only_layer=4, keep_embed=True),
    HorizonConfig(2, only_layer=2, ablation="mean"), HorizonConfig(2, only_layer=4, ablation="mean", keep_embed=True),
], ids=str)
def test_only_layer_matches_plain_hf(tiny_llama, fresh_tiny_llama, config) -> None:
    assert tiny_llama.n_layers == 4  # layer 2 is a middle layer, 4 the final readout
    _check_against_hf(tiny_llama, fresh_tiny_llama, config)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_only_layer_at_every_layer_with_k1(tiny_llama, fresh_tiny_llama, ablation) -> None:
    for layer in range(tiny_llama.n_layers + 1):
        _check_against_hf(tiny_llama, fresh_tiny_llama, HorizonConfig.from_layers(1, only_layer=layer,
                                                                                  ablation=ablation))


def test_only_layer_config() -> None:
    config = HorizonConfig(2, only_layer=3)
    # L = 5: layer 3's readers are 7 and 8; nothing else reads a window.
    assert [j for j in range(1, 12) if config.patches(j, 5)] == [7, 8]
    assert config.first_patched_reader(5) == 7 and config.last_patched_reader(5) == 8
    assert [j for j in range(1, 12) if HorizonConfig(2, only_layer=5).patches(j, 5)] == [11]
    assert HorizonConfig(2, only_layer=5, final="full").first_patched_reader(5) is None
    assert HorizonConfig(8, only_layer=3).first_patched_reader(5) is None  # K >= 2N+2: the window reaches s_0
    assert HorizonConfig(7, only_layer=3).first_patched_reader(5) == 8
    with pytest.raises(HorizonError, match="exclusive"):
        HorizonConfig(2, only_layer=1, start_layer=2)
    with pytest.raises(HorizonError, match="ablation"):
        HorizonConfig(2, ablation="half")
    with pytest.raises(HorizonError, match="out of range"):
        HorizonConfig(2, only_layer=6).check_layers(5)


# ----------------------------------------------------------------------------- scan


def test_scan_rows_equal_single_patches(tiny_model) -> None:
    ids = tokenize(tiny_model, PROMPTS[:2])
    n = tiny_model.n_layers
    advanced: list[float] = []
    result = scan(tiny_model, ids, start_layers=(0, 2), tol=0.005, progress=advanced.append)
    assert len(result.rows) == 2 * (n + 1)
    assert sum(advanced) == pytest.approx(len(result.rows))  # every row's work, in fractions
    assert len(advanced) > len(result.rows) // 2  # progress moves within a pass, not only at its end
    assert [row["k"] for row in result.rows[: n + 1]] == list(range(1, n + 2))
    for row in result.rows[::2]:
        single = patch(tiny_model, ids, HorizonConfig.from_layers(row["k"], start_layer=row["start_layer"]))
        assert row["K"] == 2 * row["k"]
        assert row["loss"] == pytest.approx(single.loss_patched, abs=1e-5)
        assert row["delta_loss"] == pytest.approx(single.delta_loss, abs=1e-5)
        assert row["kl"] == pytest.approx(single.kl, abs=1e-5)  # two float32 vocab sums, each ~1e-6 off float64
        assert row["top1_agreement"] == pytest.approx(single.top1_agreement)
    assert result.loss_clean == pytest.approx(single.loss_clean, abs=1e-9)
    assert result.rows[n]["delta_loss"] == 0  # k = L+1 is the clean model
    for start, horizon in result.effective_horizon.items():
        qualifying = [r["k"] for r in result.rows if r["start_layer"] == start and r["delta_loss"] <= 0.005]
        assert horizon == min(qualifying)
    assert result.tol == 0.005 and result.n_tokens == sum(len(x) - 1 for x in ids)


def test_scan_sublayer_unit_and_options(tiny_llama) -> None:
    ids = tokenize(tiny_llama, [SHORT_PROMPT])
    result = scan(tiny_llama, ids, unit="sublayer", source="clean", keep_embed=True, final="full",
                  start_layers=(1,))
    assert [row["K"] for row in result.rows] == list(range(1, 2 * tiny_llama.n_layers + 2))
    for row in result.rows[::3]:
        single = patch(tiny_llama, ids, HorizonConfig(row["K"], "clean", True, "full", 1))
        assert row["loss"] == pytest.approx(single.loss_patched, abs=1e-5)
    late = scan(tiny_llama, ids, ks=[1, 2], start_layers=(tiny_llama.n_layers + 1,))
    assert all(row["delta_loss"] == 0 for row in late.rows)
    assert late.effective_horizon == {tiny_llama.n_layers + 1: 1}
    assert scan(tiny_llama, ids, ks=[1], tol=0.0).effective_horizon[0] in (None, 1)


def test_scan_with_mean_ablation_equals_single_patches(tiny_llama) -> None:
    ids = tokenize(tiny_llama, PROMPTS[:2])
    result = scan(tiny_llama, ids, ks=[1, 2, 3], start_layers=(0, 1), ablation="mean", keep_embed=True)
    for row in result.rows:
        single = patch(tiny_llama, ids, HorizonConfig.from_layers(row["k"], start_layer=row["start_layer"],
                                                                  keep_embed=True, ablation="mean"))
        assert row["loss"] == pytest.approx(single.loss_patched, abs=1e-5)
        assert row["kl"] == pytest.approx(single.kl, abs=1e-5)  # two float32 vocab sums, each ~1e-6 off float64


def test_by_layer_matrix(tiny_llama) -> None:
    """Every cell = one patch with only_layer N; k > N cells are the clean run exactly; horizons per row."""
    ids = tokenize(tiny_llama, PROMPTS)
    n = tiny_llama.n_layers
    advanced: list[float] = []
    tol = 0.01
    result = HS.scan_by_layer(tiny_llama, ids, tol=tol, progress=advanced.append, batch_size=2)
    assert result.layers == list(range(n + 1)) and result.ks == list(range(1, n + 2))
    assert sum(advanced) == pytest.approx(len(result.layers) * len(result.ks))
    for layer in result.layers:
        for column, k in enumerate(result.ks):
            if k > layer:
                assert result.delta_loss[layer][column] == 0 and result.kl[layer][column] == 0
                assert result.top1_agreement[layer][column] == 1
            else:
                single = patch(tiny_llama, ids, HorizonConfig.from_layers(k, only_layer=layer))
                assert result.delta_loss[layer][column] == pytest.approx(single.delta_loss, abs=1e-5)
                assert result.kl[layer][column] == pytest.approx(single.kl, abs=1e-5)  # as above
                assert result.top1_agreement[layer][column] == pytest.approx(single.top1_agreement)
        qualifying = [k for k, d in zip(result.ks, result.delta_loss[layer], strict=True) if d <= tol]
        assert result.effective_horizon[layer] == min(qualifying)
    assert any(abs(d) > 1e-3 for row in result.delta_loss for d in row)
    payload = result.payload()
    assert set(payload) >= {"layers", "ks", "delta_loss", "kl", "effective_horizon", "tol"}


def test_by_layer_with_mean_ablation_and_sublayer_unit(tiny_llama) -> None:
    ids = tokenize(tiny_llama, PROMPTS[:2])
    result = HS.scan_by_layer(tiny_llama, ids, ks=[1, 3], unit="sublayer", ablation="mean", source="clean")
    assert result.ablation == "mean" and result.unit == "sublayer"
    for layer in result.layers:
        for column, k in enumerate(result.ks):
            single = patch(tiny_llama, ids, HorizonConfig(k, source="clean", ablation="mean", only_layer=layer))
            assert result.delta_loss[layer][column] == pytest.approx(single.delta_loss, abs=1e-5)


def test_effective_horizon_is_smallest_qualifying_k() -> None:
    rows = [{"k": k, "start_layer": 0, "delta_loss": d} for k, d in [(1, 2.0), (2, 0.05), (3, 0.3), (4, 0.0)]]
    assert HS.effective_horizon(rows, 0, 0.1) == 2
    assert HS.effective_horizon(rows, 0, 0.01) == 4
    assert HS.effective_horizon(rows, 0, -1) is None
    assert HS.effective_horizon(rows, 5, 0.1) is None


# ----------------------------------------------------------------------------- the bundled model


@pytest.mark.slow
def test_bundled_model_engine_matches_reference_and_clean(smol) -> None:
    _, batch = _batch(smol, ["The Eiffel Tower is in Paris, and it was built in 1889."])
    clean = clean_run(smol, batch)
    n = smol.n_layers
    configs = [HorizonConfig(2 * n + 1), HorizonConfig(1, start_layer=n + 1), HorizonConfig(2 * n + 1, source="clean"),
               HorizonConfig(6, start_layer=20)]
    results = dict(patched_logits(smol, clean, configs))
    for index in range(3):
        assert (results[index] - clean.logits).abs().max() <= 1e-4
    (_, replayed), = StaircasePass(smol, clean, [(12, 0, HorizonConfig(2 * n + 1))]).run()
    assert (replayed - clean.logits).abs().max() <= 1e-4


@pytest.mark.slow
def test_bundled_model_windows_are_exact_in_float64() -> None:
    """The engine's windows (differences of residual reads) equal the reference's sums of outputs.

    In float64 the two methods must agree to rounding; in float32 both carry rounding noise that
    deep patched passes amplify, so each is held to the float64 truth instead of to the other.
    """
    from horizon.core.model.loader import load_model

    model = load_model("smollm2-135m", device="cpu")
    _, batch = _batch(model, ["The Eiffel Tower is in Paris, and it was built in 1889."])
    configs = [HorizonConfig(6, start_layer=20), HorizonConfig(8), HorizonConfig(5, source="clean", keep_embed=True),
               HorizonConfig(2 * model.n_layers, final="window")]
    fp32 = dict(patched_logits(model, clean_run(model, batch), configs))
    fp32_reference = [reference_patched_logits(model, batch.input_ids, config) for config in configs]
    model.bridge.double()
    model.dtype = torch.float64
    fp64 = dict(patched_logits(model, clean_run(model, batch), configs))
    for index, config in enumerate(configs):
        truth = reference_patched_logits(model, batch.input_ids, config)
        assert truth.dtype == torch.float64
        assert (fp64[index] - truth).abs().max() <= 1e-9, config
        engine_error = (fp32[index].double() - truth).abs().max()
        reference_error = (fp32_reference[index].double() - truth).abs().max()
        assert engine_error <= max(1e-3, 4 * reference_error), (config, engine_error, reference_error)


# ----------------------------------------------------------------------------- CLI


def test_cli_patch_json(run_cli) -> None:
    code, out, err = run_cli("patch", "-m", "tiny-llama", "--k", "2", "--start-layer", "1", "--keep-embed",
                             "-p", SHORT_PROMPT, "--json")
    assert code == 0, err
    payload = json.loads(out)
    for key in ("model", "token_ids", "k", "unit", "K", "source", "keep_embed", "final", "start_layer", "loss_clean",
                "loss_patched", "delta_loss", "kl", "top1_agreement", "per_token"):
        assert key in payload
    assert payload["K"] == 4 and payload["keep_embed"] is True and payload["start_layer"] == 1
    n_predictions = len(payload["token_ids"][0]) - 1
    assert {len(payload["per_token"][name][0]) for name in ("loss_clean", "loss_patched", "kl")} == {n_predictions}
    assert math.isclose(payload["delta_loss"], payload["loss_patched"] - payload["loss_clean"], abs_tol=1e-9)


def test_cli_scan_json_and_rich(run_cli, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n")  # prompts are separated by blank lines
    code, out, err = run_cli("scan", "-m", "tiny-llama", "-f", str(prompts), "--start-layers", "0,2", "--ks", "1,2,5",
                             "--tol", "0.05", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload) >= {"model", "token_ids", "loss_clean", "rows", "effective_horizon", "tol"}
    assert len(payload["token_ids"]) == 2 and payload["tol"] == 0.05
    assert [(row["k"], row["start_layer"]) for row in payload["rows"]] == [(1, 0), (2, 0), (5, 0), (1, 2), (2, 2),
                                                                          (5, 2)]
    assert set(payload["rows"][0]) == {"k", "K", "start_layer", "loss", "delta_loss", "kl", "top1_agreement"}
    assert set(payload["effective_horizon"]) == {"0", "2"}
    code, out, err = run_cli("scan", "-m", "tiny-llama", "-p", SHORT_PROMPT, "--unit", "sublayer", "--ks", "1,9")
    assert code == 0, err
    assert "effective horizon (start layer 0)" in out and "clean loss" in out and "K = 9" not in err


def test_cli_patch_only_layer_and_mean_ablation_json(run_cli) -> None:
    code, out, err = run_cli("patch", "-m", "tiny-llama", "--k", "1", "--only-layer", "final", "--ablation", "mean",
                             "-p", SHORT_PROMPT, "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["ablation"] == "mean" and payload["only_layer"] == 4 and payload["start_layer"] == 0
    code, out, err = run_cli("patch", "-m", "tiny-llama", "--k", "1", "-p", SHORT_PROMPT, "--json")
    payload = json.loads(out)
    assert payload["ablation"] == "zero" and payload["only_layer"] is None


def test_cli_scan_by_layer_json_and_rich(run_cli) -> None:
    code, out, err = run_cli("scan", "-m", "tiny-llama", "-p", SHORT_PROMPT, "--by-layer", "--ks", "1,2,3",
                             "--ablation", "mean", "--tol", "0.05", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["ablation"] == "mean" and "rows" in payload
    matrix = payload["by_layer"]
    assert set(matrix) >= {"layers", "ks", "delta_loss", "kl", "effective_horizon", "tol"}
    assert matrix["layers"] == [0, 1, 2, 3, 4] and matrix["ks"] == [1, 2, 3] and matrix["tol"] == 0.05
    assert len(matrix["delta_loss"]) == 5 and all(len(row) == 3 for row in matrix["kl"])
    assert matrix["delta_loss"][0] == [0, 0, 0] and matrix["delta_loss"][2][2] == 0  # k > N: the clean run
    assert len(matrix["effective_horizon"]) == 5
    code, out, err = run_cli("scan", "-m", "tiny-llama", "-p", SHORT_PROMPT, "--json")
    assert "by_layer" not in json.loads(out) and json.loads(out)["ablation"] == "zero"
    code, out, err = run_cli("scan", "-m", "tiny-llama", "-p", SHORT_PROMPT, "--by-layer", "--ks", "1,2")
    assert code == 0, err
    assert "the horizon at one layer" in out and "final" in out and "eff. k" in out


@pytest.mark.parametrize("args, message", [
    (("patch", "--k", "1", "--only-layer", "2", "--start-layer", "1"), "exclusive"),
    (("patch", "--k", "1", "--only-layer", "9"), "--only-layer 9 is out of range"),
    (("patch", "--k", "1", "--only-layer", "mid"), "--only-layer takes a layer number"),
    (("patch", "--k", "1", "--ablation", "half"), "--ablation must be one of zero, mean"),
    (("scan", "--ablation", "half"), "--ablation must be one of zero, mean"),
    (("scan", "--by-layer", "--start-layers", "1"), "exclusive"),
])
def test_cli_rejects_bad_horizon_combinations(run_cli, args, message) -> None:
    code, out, err = run_cli(*args, "-m", "tiny-llama", "-p", "hi there")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("horizon: error:") and message in lines[0], err


@pytest.mark.parametrize("args, message", [
    (("patch", "--k", "0"), "--k must be at least 1"),
    (("patch", "--k", "1", "--source", "nope"), "--source must be one of"),
    (("patch", "--k", "1", "--final", "x"), "--final must be one of"),
    (("patch", "--k", "1", "--unit", "x"), "--unit must be one of"),
    (("patch", "--k", "1", "--start-layer", "-1"), "start layer must be >= 0"),
    (("scan", "--ks", "0,1"), "--ks values must be >= 1"),
    (("scan", "--start-layers", "a"), "--start-layers takes comma-separated integers"),
    (("scan", "--tol", "-1"), "--tol must be a number >= 0"),
])
def test_cli_rejects_bad_flags_before_loading(run_cli, monkeypatch, args, message) -> None:
    import horizon.tui.cli.common as common

    def no_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(common, "load_model", no_load)
    code, out, err = run_cli(*args, "-m", "tiny-llama", "-p", "hi there")
    assert code == 2 and out == ""
    assert err.startswith("horizon: error:") and message in err


def test_tiled_readout_metrics_equal_metrics_of_full_logits(tiny_model, monkeypatch) -> None:
    """The scan's fused readout (vocabulary tiles, uneven last tile) = metrics of the full logits."""
    from horizon.core.patching import horizon_pass

    monkeypatch.setattr(horizon_pass, "VOCAB_TILE", 5000)  # 49152 columns: 9 tiles of 5000 and one of 4152
    monkeypatch.setattr(horizon_pass, "TILE_BYTES", 1)  # one row per readout call: the chunking is exercised too
    _, batch = _batch(tiny_model, PROMPTS)  # padded: three prompts of different lengths
    clean = clean_run(tiny_model, batch)
    configs = [HorizonConfig(2), HorizonConfig(3, source="clean", keep_embed=True), HorizonConfig(5, start_layer=1),
               HorizonConfig(2 * tiny_model.n_layers + 1)]
    logits = dict(patched_logits(tiny_model, clean, configs))
    fused = dict(H.patched_metrics(tiny_model, clean, configs))
    for index in range(len(configs)):
        expected = H.token_metrics(clean.reference, logits[index])
        for field in ("loss_clean", "loss_patched", "kl"):
            assert torch.allclose(getattr(fused[index], field), getattr(expected, field), atol=2e-5), (index, field)
        assert torch.equal(fused[index].top1_agree, expected.top1_agree)
        assert torch.equal(fused[index].valid, batch.mask[:, 1:])
    assert not fused[0].top1_agree[batch.mask[:, 1:]].all()  # the patch changes some top-1 predictions


def test_scan_in_bfloat16_matches_patch_and_float32() -> None:
    """A bfloat16 model: the scan's tiled readout reduces in float32, like patch's full logits."""
    from horizon.core.model.loader import load_model

    model = load_model("tiny-llama", device="cpu", dtype="bfloat16")
    ids = tokenize(model, [SHORT_PROMPT])
    result = scan(model, ids, ks=[1, 2, model.n_layers + 1])
    for row in result.rows:
        single = patch(model, ids, HorizonConfig.from_layers(row["k"]))
        assert row["loss"] == pytest.approx(single.loss_patched, abs=1e-4)
        assert row["kl"] == pytest.approx(single.kl, abs=1e-4)
        assert math.isfinite(row["loss"]) and row["kl"] >= -1e-4
    assert result.rows[-1]["delta_loss"] == 0


# ----------------------------------------------------------------------------- sweep


def test_sweep_mean_ablation_uses_corpus_means_stored_once(tiny_llama, tmp_path) -> None:
    """Corpus-wide means are computed before any shard and stored: the numbers do not depend on sharding."""
    import numpy as np
    from horizon.core.model.corpus import Corpus
    from horizon.core.results import store
    from horizon.core.sweep.sweep import ABLATION_MEANS_FILE, ShardSpec, SweepSettings, corpus_views, run_sweep

    corpus = Corpus(name="t", texts=PROMPTS, kinds=[""] * len(PROMPTS))

    def settings(size: int) -> SweepSettings:
        return SweepSettings(analyses=["scan"], shard_size=size, ks=[1, 2, 5], ablation="mean")

    one = tmp_path / "one"
    run_sweep(corpus, one, tiny_llama, settings(3), device="cpu")
    split = tmp_path / "split"
    run_sweep(corpus, split, tiny_llama, settings(1), device="cpu", shard=ShardSpec(0, 2))
    run_sweep(corpus, split, tiny_llama, settings(1), device="cpu", shard=ShardSpec(1, 2))
    means = np.load(one / ABLATION_MEANS_FILE)
    assert means.shape == (2 * tiny_llama.n_layers + 1, tiny_llama.d_model) and means.dtype == np.float64
    assert np.array_equal(means, np.load(split / ABLATION_MEANS_FILE))
    manifest = store.read_manifest(one)
    assert manifest["analyses"]["scan"]["ablation"] == "mean" and manifest["analyses"]["scan"]["_means_sha256"]
    views = [corpus_views(store.open_results(path))["scan"] for path in (one, split)]
    assert views[0]["ablation"] == "mean"
    # One scan over every prompt with the prompts' own means (= the corpus means) gives the same rows.
    direct = scan(tiny_llama, tokenize(tiny_llama, PROMPTS), ks=[1, 2, 5], ablation="mean")
    for view in views:
        for row, expected in zip(view["rows"], direct.rows, strict=True):
            assert row["delta_loss"] == pytest.approx(expected["delta_loss"], abs=1e-5)
            assert row["kl"] == pytest.approx(expected["kl"], abs=1e-5)  # as above
    zero = tmp_path / "zero"
    run_sweep(corpus, zero, tiny_llama, SweepSettings(analyses=["scan"], ks=[1, 2, 5]), device="cpu")
    assert not (zero / ABLATION_MEANS_FILE).exists()
    assert "ablation" not in store.read_manifest(zero)["analyses"]["scan"]  # as before the option
    assert corpus_views(store.open_results(zero))["scan"]["ablation"] == "zero"


# ----------------------------------------------------------------------------- the app


@pytest.mark.anyio
async def test_app_ablation_toggle_and_layer_matrix(tiny_llama) -> None:
    """a: mean ablation; x: the layer x k matrix, its selected cell driving the token grid."""
    import numpy as np
    from horizon.core.sources.session import Session
    from horizon.tui.app import HorizonApp
    from horizon.tui.widgets.layer_matrix import LayerMatrix
    from horizon.tui.widgets.token_grid import TokenGrid

    from tests.pilot import settle

    ids = tokenize(tiny_llama, [SHORT_PROMPT])
    session = Session(tiny_llama, [SHORT_PROMPT], ids)
    app = HorizonApp(session=session, background=False)

    def grid_loss() -> np.ndarray:
        return np.array(app.query_one("#horizon-grid", TokenGrid).values[1:], dtype=float)

    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        app.action_show_tab("horizon")
        await pilot.pause()
        k = app.settings.k
        await pilot.press("a")
        await settle(app, pilot)
        assert app.settings.ablation == "mean" and app.settings.only_layer is None
        expected = patch(tiny_llama, ids, HorizonConfig.from_layers(k, ablation="mean"))
        per_token = np.array(expected.per_token_loss_patched[0]) - np.array(expected.per_token_loss_clean[0])
        np.testing.assert_allclose(grid_loss(), per_token, atol=1e-6)
        assert session.ready(Query.scan(0, "mean")) is not None  # the curve's mean-ablation scan ran in a worker
        await pilot.press("x")
        await settle(app, pilot)
        n = tiny_llama.n_layers
        assert app.settings.only_layer == n // 2
        matrix = app.query_one(LayerMatrix)
        direct = HS.scan_by_layer(tiny_llama, ids, ablation="mean")
        assert matrix.result is not None and matrix.result.ks == direct.ks
        assert matrix.result.effective_horizon == direct.effective_horizon
        np.testing.assert_allclose(np.array(matrix.result.delta_loss), np.array(direct.delta_loss), atol=1e-5)
        await pilot.press("greater_than_sign", "greater_than_sign")  # layer N + 2 = the final readout
        await settle(app, pilot)
        assert app.settings.only_layer == n and matrix.selected == (n, k)
        expected = patch(tiny_llama, ids, HorizonConfig.from_layers(k, ablation="mean", only_layer=n))
        per_token = np.array(expected.per_token_loss_patched[0]) - np.array(expected.per_token_loss_clean[0])
        np.testing.assert_allclose(grid_loss(), per_token, atol=1e-6)
        await pilot.press("x")
        await settle(app, pilot)
        assert app.settings.only_layer is None and not app.query_one("#matrix-scroll").display
        assert app.query_one("#horizon-curve").display


def test_sweep_by_layer_matrix_in_store_and_report(tiny_llama, tmp_path, run_cli) -> None:
    from horizon.core.model.corpus import Corpus
    from horizon.core.results import store
    from horizon.core.sweep.sweep import SweepSettings, corpus_views, run_sweep

    corpus = Corpus(name="t", texts=PROMPTS, kinds=[""] * len(PROMPTS))
    out = tmp_path / "res"
    run_sweep(corpus, out, tiny_llama, SweepSettings(analyses=["scan"], shard_size=2, ks=[1, 2, 5], by_layer=True),
              device="cpu")
    view = corpus_views(store.open_results(out))["scan"]
    assert [row["k"] for row in view["rows"]] == [1, 2, 5]  # the curve keeps only the scan's rows
    direct = HS.scan_by_layer(tiny_llama, tokenize(tiny_llama, PROMPTS), ks=[1, 2, 5])
    matrix = view["by_layer"]
    assert matrix["layers"] == direct.layers and matrix["ks"] == direct.ks
    assert matrix["effective_horizon"] == direct.effective_horizon
    for name in ("delta_loss", "kl", "top1_agreement"):
        for got, expected in zip(matrix[name], getattr(direct, name), strict=True):
            assert got == pytest.approx(expected, abs=1e-5)
    code, out_text, err = run_cli("report", str(out))
    assert code == 0, err
    assert "the horizon at one layer" in out_text and "eff. k" in out_text
