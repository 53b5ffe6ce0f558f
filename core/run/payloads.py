"""The JSON payload of each single-prompt-set analysis: what ``horizon <command> --json`` prints and what
the Python API's results give as ``to_json()``. Built here once, for both.

``json_payload`` adds what every JSON output records (``versions``; ``device`` for a run on a model)
and turns tensors, numpy values and NaNs into plain JSON (NaN and inf become null).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from horizon.core.memory.budget import Plan
    from horizon.core.model.loader import LoadedModel


def jsonable(value: Any) -> Any:
    """Tensors, numpy values and NaNs to plain JSON (NaN/inf become null)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def json_payload(payload: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """``payload`` as printed by ``--json``: with ``versions`` (horizon, torch, transformers ...) and, for a
    command that ran a model, its ``device``; plain JSON values only."""
    from horizon.core.sweep.sweep_settings import package_versions

    payload = {**payload, "versions": package_versions()}
    if device is not None:
        payload.setdefault("device", str(device))
    return cast("dict[str, Any]", jsonable(payload))


def norms_payload(model: LoadedModel, processing: str, token_ids: list[list[int]], tokens: list[list[str]],
                  report: Any, plan: Plan, weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """``horizon norms --json`` (``weights``: the --weights section)."""
    payload: dict[str, Any] = {"model": model.spec, "processing": processing, "token_ids": token_ids,
                               "tokens": tokens, **report.to_json(), "memory": plan.to_json()}
    if weights is not None:
        payload["weights"] = weights
    return payload


def patch_payload(model: LoadedModel, token_ids: list[list[int]], k: int, unit: str, result: Any,
                  plan: Plan) -> dict[str, Any]:
    """``horizon patch --json``: the options as given (k in ``unit``s), the config's K, the metrics."""
    config = result.config
    return {
        "model": model.spec,
        "token_ids": token_ids,
        "k": k,
        "unit": unit,
        "K": config.horizon_sublayers,
        "source": config.source,
        "keep_embed": config.keep_embed,
        "final": config.final,
        "start_layer": config.start_layer,
        "ablation": config.ablation,
        "only_layer": config.only_layer,
        "loss_clean": result.loss_clean,
        "loss_patched": result.loss_patched,
        "delta_loss": result.delta_loss,
        "kl": result.kl,
        "top1_agreement": result.top1_agreement,
        "n_tokens": result.n_tokens,
        "n_prompts": len(token_ids),
        "per_token": result.per_token,
        "memory": plan.to_json(),
    }


def scan_payload(model: LoadedModel, token_ids: list[list[int]], result: Any, settings: dict[str, Any],
                 plan: Plan, matrix: Any = None) -> dict[str, Any]:
    """``horizon scan --json``; ``settings``: unit, source, keep_embed, final, ablation as run;
    ``matrix``: the --by-layer ByLayerResult."""
    payload = {
        "model": model.spec,
        "token_ids": token_ids,
        "loss_clean": result.loss_clean,
        "rows": result.rows,
        "effective_horizon": result.effective_horizon,
        "tol": result.tol,
        **{name: settings[name] for name in ("unit", "source", "keep_embed", "final", "ablation")},
        "n_tokens": result.n_tokens,
        "n_prompts": len(token_ids),
        "memory": plan.to_json(),
    }
    if matrix is not None:
        payload["by_layer"] = matrix.payload()
    return payload


def report_payload(model: LoadedModel, token_ids: list[list[int]], report: Any, plan: Plan) -> dict[str, Any]:
    """``horizon truncate --json`` and ``horizon attention --json``: the report's own JSON and the plan."""
    return {"model": model.spec, "token_ids": token_ids, **report.to_json(), "memory": plan.to_json()}


def verify_payload(result: Any) -> dict[str, Any]:
    """``horizon verify --json``: every check, the verdict, and the fixed prompt they ran on."""
    from horizon.core.checks.verify import VERIFY_PROMPT

    return {**result.to_dict(), "prompt": VERIFY_PROMPT}


def results_payload(results: Any, views: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """``horizon report --json``: a results directory's set-up and the corpus view of every analysis."""
    from horizon.core.analyses import REGISTRY

    return {
        "results": str(results.path),
        "problems": results.problems,
        "model": manifest.get("model"),
        "corpus": {key: value for key, value in manifest.get("corpus", {}).items() if key != "kinds"} or None,
        "bos": manifest.get("bos"),
        "dtype": manifest.get("dtype"),
        "settings": manifest.get("analyses"),
        "shards": {"total": len(results.shards), "done": results.n_done()},
        "created": manifest.get("created"),
        "finished": manifest.get("finished"),
        **{name: views.get(name) for name in REGISTRY},
    }


def sweep_payload(summary: Any) -> dict[str, Any]:
    """``horizon sweep --json``: what the run did (core/sweep/sweep.py's SweepSummary)."""
    return {
        "out": summary.out,
        "complete": summary.complete,
        "analyses": summary.analyses,
        "shards_total": summary.shards_total,
        "shards_done": summary.shards_done,
        "shards_done_before": summary.shards_done_before,
        "shards_run": summary.shards_run,
        "prompts_run": summary.prompts_run,
        "tokens_run": summary.tokens_run,
        "seconds": round(summary.seconds, 3),
        "work_seconds": round(summary.work_seconds, 3),
        "tokens_per_s": round(summary.tokens_per_s, 1),
        "notes": summary.notes,
        "failed_shards": summary.failed_shards,
    }
