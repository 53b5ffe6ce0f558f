"""The terminal renderers of the corpus views (``horizon report``): one per analysis, named in its registry entry."""

from __future__ import annotations

import math
from typing import Any

from horizon.core import analyses as registry
from horizon.core.results import store
from horizon.core.untrusted import markup_safe
from horizon.tui.cli.common import console
from horizon.tui.format import layer_label, number
from rich.table import Table


def _spread(n_rows: int, wanted: int = 8) -> list[int]:
    """About ``wanted`` row indices spread over 0..n_rows-1, first and last included."""
    if n_rows <= wanted:
        return list(range(n_rows))
    return sorted({round(i * (n_rows - 1) / (wanted - 1)) for i in range(wanted)})


def render_report(results: store.Results, views: dict[str, Any]) -> None:
    """The header from the manifest, then each analysis's view.

    ``views``: every string already made safe for markup (``sweep_cmd.sanitize(views, markup=True)``):
    the renderers interpolate view values into markup strings as they are.
    """
    manifest = results.manifest or {}
    model = manifest.get("model") or {}
    corpus = manifest.get("corpus") or {}
    safe = markup_safe
    console.print(
        f"[bold]{safe(results.path)}[/]  model [bold]{safe(model.get('spec', '?'))}[/] "
        f"({safe(model.get('n_layers', '?'))} layers, {safe(manifest.get('dtype', '?'))}, "
        f"{safe(manifest.get('device', '?'))}); corpus {safe(corpus.get('name', '?'))}: "
        f"{safe(corpus.get('n_prompts', '?'))} prompts, {safe(corpus.get('n_tokens', '?'))} tokens; "
        f"shards {results.n_done()}/{len(results.shards)} done"
    )
    if not views:
        console.print("[yellow]no analysis has an intact shard yet[/]")
    for name, analysis in registry.REGISTRY.items():
        render = analysis.renderer()
        if name in views and render is not None:
            render(views[name])


def render_norms(view: dict[str, Any]) -> None:
    growth = view["growth"]
    sites = view["sites"]
    n_rows = len(sites["resid_pre"]["mean_norm"])
    n_layers = n_rows - 1
    table = Table(
        title=f"norms: mean L2 norm per layer over {view['n_positions']} positions of "
        f"{view['n_prompts']} prompts (BOS excluded)",
        title_justify="left",
    )
    for column in ("layer", "resid_pre", "std", "growth", "attn_out", "mlp_out"):
        table.add_column(column, justify="right")
    for row in range(n_rows):
        ratio = growth["ratios"][row] if row < len(growth["ratios"]) else None
        table.add_row(
            layer_label(row, n_layers),
            number(sites["resid_pre"]["mean_norm"][row], 2),
            number(sites["resid_pre"]["std"][row]),
            number(ratio),
            number(sites["attn_out"]["mean_norm"][row], 2) if row < n_layers else "",
            number(sites["mlp_out"]["mean_norm"][row], 2) if row < n_layers else "",
        )
    console.print(table)
    first, last = growth["fit_layers"]
    console.print(
        f"growth rate [bold green]{growth['rate']:.4f}/layer[/] fitted over resid_pre layers {first}..{last} "
        f"(r² {growth['r2']:.3f}, {growth['chosen']} window)"
    )


def render_truncation(view: dict[str, Any]) -> None:
    n_layers = view["n_layers"]
    rows = _spread(n_layers + 1)
    table = Table(
        title=f"truncate: median mean-centred cosine (quartiles) over {view['n_records']} truncated tokens",
        title_justify="left",
    )
    table.add_column("length", justify="right")
    for row in rows:
        table.add_column(layer_label(row, n_layers), justify="right")
    for length in view["lengths"]:
        medians = view["median_cos"][str(length)]
        q25, q75 = view["quartiles_cos"][str(length)]
        table.add_row(str(length), *[f"{number(medians[r], 2)} [dim]({number(q25[r], 2)}-{number(q75[r], 2)})[/]"
                                     for r in rows])
    console.print(table)
    shortest = str(min(view["lengths"]))
    categories = view["categories"][shortest]
    by_category = Table(title=f"truncate: median cosine per token category, length {shortest}", title_justify="left")
    by_category.add_column("category")
    by_category.add_column("tokens", justify="right")
    for row in rows:
        by_category.add_column(layer_label(row, n_layers), justify="right")
    for category, medians in categories.items():
        if category == "count":
            continue
        by_category.add_row(category, str(categories["count"][category]),
                            *[number(medians[r], 2) for r in rows])
    console.print(by_category)
    if view["outliers"]:
        outliers = Table(title="truncate: lowest-cosine tokens", title_justify="left")
        for column in ("prompt", "pos", "token", "length", "layer", "cos", "context"):
            outliers.add_column(column)
        for item in view["outliers"][:10]:
            context = (
                _shown(item["context_before"]) + "[bold reverse]" + _shown(item["token"]) + "[/]"
                + _shown(item["context_after"])
            )
            outliers.add_row(
                str(item["prompt"]),
                str(item["pos"]),
                f"'{item['token']}'",
                str(item["length"]),
                layer_label(item["layer"], n_layers),
                number(item["cos"], 2),
                context,
            )
        console.print(outliers)


def _shown(text: str) -> str:
    """Text of a prompt inside a markup string (already escaped: ``render_report``), newlines as ⏎."""
    return str(text).replace("\\x0a", "⏎")


def render_scan(view: dict[str, Any]) -> None:
    table = Table(
        title=f"scan: loss vs enforced horizon k over {view['n_prompts']} prompts, {view['n_tokens']} "
        f"predictions (clean loss {view['loss_clean']:.4f}), {view.get('ablation', 'zero')} ablation",
        title_justify="left",
    )
    for column in ("start", "k", "K", "loss", "Δloss", "KL", "top-1"):
        table.add_column(column, justify="right")
    for row in view["rows"]:
        table.add_row(
            str(row["start_layer"]),
            str(row["k"]),
            str(row["K"]),
            number(row["loss"], 4),
            number(row["delta_loss"], 4),
            number(row["kl"], 4),
            number(row["top1_agreement"]),
        )
    console.print(table)
    for start, k in view["effective_horizon"].items():
        found = f"k = {k}" if k is not None else "none within the scanned k"
        console.print(f"effective layer horizon (start layer {start}, tol {view['tol']}): [bold green]{found}[/]")
    if "by_layer" in view:
        from horizon.core.analyses.scan.engine import ByLayerResult
        from horizon.tui.cli.horizon_cmd import render_by_layer

        matrix = view["by_layer"]
        render_by_layer(ByLayerResult(
            layers=matrix["layers"], ks=matrix["ks"], loss=matrix["loss"], delta_loss=matrix["delta_loss"],
            kl=matrix["kl"], top1_agreement=matrix["top1_agreement"], effective_horizon=matrix["effective_horizon"],
            loss_clean=view["loss_clean"], tol=matrix["tol"], n_tokens=view["n_tokens"],
            unit=view.get("unit", "layer"), ablation=view.get("ablation", "zero"),
        ))


def render_attention(view: dict[str, Any]) -> None:
    table = Table(
        title=f"attention: mean distance per head (BOS removed and renormalised), {view['n_queries']} queries",
        title_justify="left",
    )
    table.add_column("layer", justify="right")
    for head in range(view["n_heads"]):
        table.add_column(f"h{head}", justify="right")
    table.add_column("mass 0 / 1-5 / 6-10 / >10 (layer mean)", justify="right")
    for layer in range(view["n_layers"]):
        masses = []
        for bucket in ("0", "1-5", "6-10", ">10"):
            values = [v for v in view["mass_no_bos"][bucket][layer] if v is not None and math.isfinite(v)]
            masses.append(number(sum(values) / len(values), 2) if values else "-")
        table.add_row(str(layer), *[number(v, 1) for v in view["mean_distance_no_bos"][layer]], " / ".join(masses))
    console.print(table)
