"""How the time of each analysis grows with the prompt length (issue 16).

norms, scan, truncate and attention on one prompt of 128, 512 and 2048 tokens of the bundled
model (the bundled corpus concatenated, BOS first), the median of three runs per length (one at 2048; lengths
in alternation) after a warm-up at 128 tokens, under the automatic memory budget. The ratio is
the fitted exponent of time vs T (least squares on log-log): about 1 for work that is linear in
the tokens, flagged above 1.3. Attention is bound by its T x T patterns, so its exponent is only reported (target None).

To stay fast the scan runs k = 1 only (one staircase row) and the truncation length 1 only
(T - 2 truncated prompts: linear in T).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from functools import cache

import torch
from horizon.core.memory import budget as B
from horizon.core.model.loader import LoadedModel, load_model

from tests.bench.bench_memory import corpus_prompt

LENGTHS = (128, 512, 2048)
# The median of three runs at 128 and 512 tokens; one at 2048, whose 10-20 s runs vary by a few
# per cent (quiet machine): three of them cost ~2 minutes of `make bench` for no steadier exponent.
REPEATS = {128: 3, 512: 3, 2048: 1}
TARGET = 1.3
SCAN_KS = (1,)


@cache
def _model() -> LoadedModel:
    return load_model("smollm2-135m", device="cpu")


def _plan(analysis: str, ids: list[list[int]]) -> B.Plan:
    model = _model()
    dims = B.ModelDims.of(model)
    return B.plan(analysis, dims, [len(ids[0])], B.make_budget(None, dims, model.device))


def _runner(analysis: str) -> Callable[[list[list[int]]], object]:
    model = _model()

    def run(ids: list[list[int]]) -> object:
        plan = _plan(analysis, ids)
        if analysis == "norms":
            from horizon.core.analyses.norms.engine import analyse_norms

            return analyse_norms(model, ids, True, batch_size=plan.batch_size,
                                 position_chunk=plan.position_chunk)
        if analysis == "attention":
            from horizon.core.analyses.attention.engine import attention_distance

            return attention_distance(model, ids, True, batch_size=plan.batch_size)
        if analysis == "truncate":
            from horizon.core.analyses.truncate.engine import analyse_truncation

            return analyse_truncation(model, ids, [1], batch_size=plan.tiling["windows"],
                                      full_batch_size=plan.batch_size)
        import horizon.core.patching.horizon as H
        from horizon.core.analyses.scan.engine import scan

        cleans = H.clean_runs(model, ids, plan.batch_size, keep_bytes=plan.keep_clean_bytes,
                              position_chunk=plan.position_chunk)
        return scan(model, ids, ks=list(SCAN_KS), batch_size=plan.batch_size, max_pass_bytes=plan.pass_bytes,
                    cleans=cleans)

    return run


def fitted_exponent(lengths: tuple[int, ...], seconds: list[float]) -> float:
    """The slope of log(time) against log(T), least squares."""
    xs = [math.log(n) for n in lengths]
    ys = [math.log(s) for s in seconds]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)


def _plain_forward(ids: list[list[int]]) -> object:
    """The model's own forward (the bridge with no hook attached): the reference exponent."""
    model = _model()
    return model.bridge(torch.tensor(ids, device=model.device))


def _scaling(analysis: str, target: float | None, reference: bool = False) -> dict:
    """Time of ``analysis`` at each length; with ``reference``, a plain forward timed in the same rounds."""
    model = _model()
    runs = {analysis: _runner(analysis), **({"forward": _plain_forward} if reference else {})}
    prompts = {n: [corpus_prompt(model, n)] for n in LENGTHS}
    times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in LENGTHS} for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run(prompts[LENGTHS[0]])  # warm-up
        for round_ in range(max(REPEATS.values())):  # lengths in alternation: load drift hits all alike
            for n in (n for n in LENGTHS if round_ < REPEATS[n]):
                for name, run in runs.items():
                    started = time.perf_counter()
                    run(prompts[n])
                    times[name][n].append(time.perf_counter() - started)
    seconds = [statistics.median(times[analysis][n]) for n in LENGTHS]
    exponent = fitted_exponent(LENGTHS, seconds)
    result: dict = {"ratio": round(exponent, 3), "target": target,
                    **{f"t{n}_s": round(s, 3) for n, s in zip(LENGTHS, seconds, strict=True)}}
    if reference:  # the model's own growth with T: eager attention makes a long forward superlinear
        forward = [statistics.median(times["forward"][n]) for n in LENGTHS]
        result["forward_exponent"] = round(fitted_exponent(LENGTHS, forward), 3)
    if target is None and exponent > TARGET:
        result["flag"] = f"exponent above {TARGET} (attention-bound: T x T patterns)"
    return result


def bench_scaling_norms() -> dict:
    """Norms is one forward with reducing hooks: its exponent is printed beside a plain forward's."""
    return _scaling("norms", TARGET, reference=True)


def bench_scaling_scan() -> dict:
    return {**_scaling("scan", TARGET), "ks": ",".join(map(str, SCAN_KS))}


def bench_scaling_truncate() -> dict:
    return {**_scaling("truncate", TARGET), "lengths": "1"}


def bench_scaling_attention() -> dict:
    return _scaling("attention", None)
