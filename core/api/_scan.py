"""``Model.scan``: the options of `horizon scan` checked in its order, then the runner's passes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from horizon.core import options
from horizon.core.errors import HorizonError

from ._results import Scan

if TYPE_CHECKING:
    from ._model import Model, Prompts


def run_scan(model: Model, prompts: Prompts, *, ks: Sequence[int] | None, start_layers: Sequence[int] | None,
             tol: float, unit: str, source: str, keep_embed: bool, final: str, ablation: str, by_layer: bool,
             only_layer: int | str | None, bos: bool, bos_token: str | None, max_tokens: int | None,
             progress: Callable[[float], None] | None) -> Scan:
    from horizon.core.run.payloads import scan_payload

    from ._model import int_list

    options.check_horizon_choices(unit, source, final)
    options.check_ablation(ablation)
    if by_layer and start_layers is not None:
        raise HorizonError("--by-layer and --start-layers are exclusive: the matrix enforces the horizon at one "
                           "layer at a time")
    layer_text = None if only_layer is None else str(only_layer)
    options.check_only_layer(layer_text, start_layer_given=start_layers is not None)
    if layer_text is not None and by_layer:
        raise HorizonError("only_layer and by_layer are exclusive: the matrix holds every layer's row")
    k_list = int_list(ks, "--ks", minimum=1) if ks is not None else None
    layer_list = int_list(start_layers if start_layers is not None else "0", "--start-layers", minimum=0)
    tol = options.check_tol(tol)
    _, token_ids = model._token_ids(prompts, bos, bos_token, max_tokens)
    n_layers = model.n_layers
    options.check_ks(k_list, n_layers, unit)
    options.check_start_layers(layer_list, n_layers)
    layer = options.check_only_layer(layer_text, n_layers)
    runner = model.runner
    plan = runner.plan("scan", token_ids)
    # One set of clean runs for the curve and the matrix, as `horizon scan` makes them.
    cleans = runner.clean_runs(token_ids, has_bos=bos, plan=plan)
    settings = {"unit": unit, "source": source, "keep_embed": keep_embed, "final": final, "ablation": ablation}
    common: dict[str, Any] = {"ks": k_list, "tol": tol, **settings, "plan": plan, "cleans": cleans}
    extra: dict[str, Any] = {} if layer is None else {"only_layer": layer}
    result = runner.scan(token_ids, start_layers=layer_list, progress=progress, **common, **extra).result
    matrix = runner.by_layer(token_ids, progress=progress, **common).result if by_layer else None
    payload = {**scan_payload(runner.model, token_ids, result, settings, plan, matrix), **extra}
    return Scan(result, model._result(payload), model.spec, matrix)
