"""The norms table: its columns, the rows a shard writes (engine.py computes them), the corpus view
of those rows, the settings it records, and a NormsReport rebuilt from the rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.analyses.base import column
from horizon.core.analyses.norms.result import (
    NORM_SITES,
    Growth,
    NormsReport,
    SiteStats,
    absent_sites,
    aggregate_site,
    appendix1_check,
    fit_growth,
)
from horizon.core.errors import HorizonError

if TYPE_CHECKING:
    from horizon.core.results.store import Results

SCHEMA = {"prompt": pa.int32(), "position": pa.int32(), "token": pa.string(), "layer": pa.int16(),
          "site": pa.string(), "norm": pa.float32(), "std": pa.float32()}


def rows(worker: Any, indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    from horizon.core.analyses.norms.engine import analyse_norms

    plan = worker.plan("norms", token_ids)
    report = analyse_norms(worker.model, token_ids, worker.settings.bos, batch_size=plan.batch_size,
                           position_chunk=plan.position_chunk)
    return report_table(report, indices, token_ids, tokens)


def report_table(report: NormsReport, indices: list[int], token_ids: list[list[int]],
                 tokens: list[list[str]]) -> pa.Table:
    """A NormsReport as the table's long rows: one per prompt (numbered by ``indices``), site, layer and position."""
    columns: dict[str, list[np.ndarray]] = {key: [] for key in ("prompt", "position", "layer", "norm", "std")}
    sites: list[np.ndarray] = []
    token_text: list[np.ndarray] = []
    for row, prompt in enumerate(indices):
        length = len(token_ids[row])
        prompt_tokens = np.asarray(tokens[row], dtype=object)
        for site in report.sites:
            norms = report.norms[site][row]  # [layers, T]
            stds = report.stds[site][row]
            n_rows = norms.shape[0]
            columns["prompt"].append(np.full(n_rows * length, prompt))
            columns["layer"].append(np.repeat(np.arange(n_rows), length))
            columns["position"].append(np.tile(np.arange(length), n_rows))
            columns["norm"].append(norms.reshape(-1))
            columns["std"].append(stds.reshape(-1))
            sites.append(np.full(n_rows * length, site, dtype=object))
            token_text.append(np.tile(prompt_tokens, n_rows))
    return pa.table({
        "prompt": pa.array(np.concatenate(columns["prompt"]), pa.int32()),
        "position": pa.array(np.concatenate(columns["position"]), pa.int32()),
        "token": pa.array(np.concatenate(token_text), pa.string()),
        "layer": pa.array(np.concatenate(columns["layer"]), pa.int16()),
        "site": pa.array(np.concatenate(sites), pa.string()),
        "norm": pa.array(np.concatenate(columns["norm"]), pa.float32()),
        "std": pa.array(np.concatenate(columns["std"]), pa.float32()),
    })


def view(results: Results, table: pa.Table, manifest: dict[str, Any], has_bos: bool) -> dict[str, Any]:
    # Site names as small integer codes: comparing 1.5M strings would dominate the report's time.
    encoded = pa.chunked_array(table.column("site").combine_chunks().dictionary_encode())
    site_names = encoded.chunk(0).dictionary.to_pylist()
    site_code = encoded.chunk(0).indices.to_numpy()
    prompt, position, layer = column(table, "prompt"), column(table, "position"), column(table, "layer")
    norm, std = column(table, "norm").astype(np.float64), column(table, "std").astype(np.float64)
    site = np.asarray(site_names, dtype=object)[site_code]  # only used for the BOS row below
    stored_model = manifest.get("model")
    model: dict[str, Any] = stored_model if isinstance(stored_model, dict) else {}
    absent = absent_sites(model.get("parallel_attn_mlp") is True)
    stats = {}
    n_positions = 0
    for name in (name for name in NORM_SITES if name not in absent):
        if name not in site_names:
            raise HorizonError(f"the norms table has no {name} rows")
        selected = site_code == site_names.index(name)
        if has_bos:
            selected &= position >= 1  # BOS (position 0) is excluded from statistics (docs/SCIENCE.md s.2)
        # Rows are written prompt by prompt, layer-major with positions in order, so a stable sort by
        # layer alone lines every layer's positions up in the same (prompt, position) order.
        order = np.argsort(layer[selected], kind="stable")
        n_rows = int(layer[selected].max()) + 1
        pooled = np.stack((norm[selected][order], std[selected][order])).reshape(2, n_rows, -1)
        stats[name], _ = aggregate_site([pooled], include_bos=True, has_bos=False)
        n_positions = pooled.shape[2]
    growth = fit_growth(stats["resid_pre"].mean_norm)
    bos_mean = None
    if has_bos:
        at_bos = (site == "resid_pre") & (position == 0)
        bos_layers = layer[at_bos]
        bos_mean = (np.bincount(bos_layers, weights=norm[at_bos]) / np.bincount(bos_layers)).tolist()
    return {
        "n_prompts": len(np.unique(prompt)),
        "n_positions": int(n_positions),
        "sites": {name: stats[name].to_json() if name in stats else None for name in NORM_SITES},
        "absent_sites": absent,
        "growth": growth.to_json(),
        "bos": {"mean_norm": bos_mean},
        "appendix1": appendix1_check(stats["resid_pre"].mean_norm, stats["attn_out"].mean_norm,
                                     stats["mlp_out"].mean_norm),
    }


def expected_rows(lengths: list[int], settings: dict[str, Any], model: dict[str, Any]) -> int:
    n_layers: int = model["n_layers"]
    per_layer = len(NORM_SITES) - 1 - len(absent_sites(model.get("parallel_attn_mlp") is True))
    return sum(lengths) * (n_layers + 1 + per_layer * n_layers)  # resid_pre has the final row too


def recorded_settings(settings: Any, n_layers: int) -> dict[str, Any]:
    """The settings that define its numbers (recorded in the manifest)."""
    return {"sites": list(NORM_SITES)}


def report_from_rows(view: dict[str, Any], table: pa.Table, prompt_numbers: list[int], has_bos: bool,
                     n_layers: int, d_model: int, site: str = "resid_pre") -> NormsReport:
    """A NormsReport from a corpus view and the stored rows: corpus statistics plus ``site``'s per-prompt norms.

    ``prompt_numbers[i]`` is the stored prompt shown as prompt ``i`` (None where it has no rows).
    """
    keep = np.asarray(column(table, "site") == site, dtype=bool)
    prompt, layer = column(table, "prompt")[keep], column(table, "layer")[keep]
    position = column(table, "position")[keep]
    order = np.argsort(prompt, kind="stable")
    prompt, layer, position = prompt[order], layer[order], position[order]
    values = {name: column(table, name)[keep][order].astype(np.float64) for name in ("norm", "std")}
    n_rows = int(layer.max()) + 1 if len(layer) else n_layers + 1
    per_prompt: dict[str, list[Any]] = {"norm": [], "std": []}
    for number in prompt_numbers:
        start, stop = np.searchsorted(prompt, [number, number + 1])
        for name in per_prompt:
            if stop == start:
                per_prompt[name].append(None)
                continue
            matrix = np.full((n_rows, int(position[start:stop].max()) + 1), np.nan)
            matrix[layer[start:stop], position[start:stop]] = values[name][start:stop]
            per_prompt[name].append(matrix)
    bos = view.get("bos", {}).get("mean_norm")
    return NormsReport(
        n_layers=n_layers, d_model=d_model, has_bos=has_bos, include_bos=False,
        norms={site: per_prompt["norm"]}, stds={site: per_prompt["std"]},
        stats={name: SiteStats.from_json(entry) for name, entry in view["sites"].items() if entry is not None},
        growth=Growth.from_json(view["growth"]),
        bos_mean_norm=None if bos is None else np.asarray(bos, dtype=np.float64),
        appendix1=view.get("appendix1", {}), n_positions=view.get("n_positions", 0),
        absent={name: str(why) for name, why in (view.get("absent_sites") or {}).items()},
    )
