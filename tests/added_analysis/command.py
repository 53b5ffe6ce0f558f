"""`horizon peak TEXT`: the peak analysis on one prompt, the command the registry entry's ``command`` names.

Built from the CLI's shared pieces (tui/cli/common.py): its options, ``prepare_inputs`` (prompt checks,
then the model load and tokenisation), ``runner_for`` (core/run/runner.py's Runner: the memory plan,
and the lock every forward pass on the model holds) and ``emit`` (``--json`` or the rich view).
"""

from __future__ import annotations

from typing import Annotated

import typer
from horizon.core.model.loader import DEFAULT_MODEL
from horizon.tui.cli.common import (
    BatchSizeOpt,
    BosOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MaxMemoryOpt,
    ModelOpt,
    UnverifiedOpt,
    check_memory_options,
    console,
    emit,
    prepare_inputs,
    runner_for,
)

from tests.added_analysis import NAME, SITE
from tests.added_analysis.render import prompt_table

TextArg = Annotated[str, typer.Argument(help="The prompt.")]


def peak(
    text: TextArg,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    bos: BosOpt = True,
    batch_size: BatchSizeOpt = "auto",
    max_memory: MaxMemoryOpt = "auto",
    unverified: UnverifiedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Per layer, the largest resid_pre norm over the prompt's positions (BOS excluded) and where it is."""
    from tests.added_analysis.engine import peak_norms

    memory, requested_batch = check_memory_options(max_memory, batch_size)
    inputs = prepare_inputs(model, device, dtype, text, None, bos, quiet=as_json)
    runner = runner_for(inputs, memory, requested_batch)
    plan = runner.plan(NAME, inputs.token_ids)
    with runner.lock:  # hooks go on the shared model's modules: one pass at a time
        report = peak_norms(inputs.model, inputs.token_ids, inputs.has_bos, batch_size=plan.batch_size)
    tokens = inputs.tokens()
    payload = {"model": inputs.model.spec, "token_ids": inputs.token_ids, "tokens": tokens,
               "memory": plan.to_json(), **report.to_json()}

    def render() -> None:
        console.print(prompt_table(report, 0, tokens[0], f"{inputs.model.spec}: largest {SITE} norm per layer"))

    emit(as_json, payload, render, device=inputs.model.device)
