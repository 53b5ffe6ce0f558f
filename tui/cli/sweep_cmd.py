"""`horizon sweep`, `horizon report`, `horizon merge`: corpora into a results store, and back out.

``report`` and ``merge`` read only the store (``horizon.core.store``) and never load a model.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from horizon.core import options, store
from horizon.core.errors import HorizonError
from horizon.core.untrusted import markup_safe
from horizon.tui.cli.app import app
from horizon.tui.cli.common import (
    BosOpt,
    BosTokenOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    UnverifiedOpt,
    console,
    emit,
    err_console,
    parse_int_list,
    warn,
)
from rich.table import Table

CorpusArg = Annotated[
    str | None,
    typer.Argument(
        help='Prompts: a text file (prompts separated by blank lines), JSONL with a "text" field, or a directory '
        "of .txt files. Default: the bundled corpus."
    ),
]
OutOpt = Annotated[
    str, typer.Option("--out", "-o", help="Results directory (created; resumed if it holds this sweep).")
]
AnalysesOpt = Annotated[str, typer.Option("--analyses", "-a", help="Comma-separated: norms,truncate,scan,attention.")]
MaxPromptsOpt = Annotated[int | None, typer.Option("--max-prompts", help="Use only the first N prompts.")]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tokens", help="Cut each prompt to its first N tokens, BOS included (default: the model's context)."
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="I/N: run only the shards whose id is I modulo N (N workers share one --out)."),
]
ShardSizeOpt = Annotated[
    int, typer.Option("--shard-size", help="Prompts per shard (the unit of atomic writes and resume).")
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Finish an interrupted sweep in --out (fails if there is none).")
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Discard results in --out made with other settings, and start over.")
]
BackendOpt = Annotated[
    str, typer.Option("--backend", help="local | ray (one actor per device, each loads the model once).")
]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Ray actors (one per GPU on a cluster).")]
RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
]
LengthsOpt = Annotated[str, typer.Option("--lengths", help="truncate: context lengths kept.")]
KsOpt = Annotated[str | None, typer.Option("--ks", help="scan: horizons k in layers (default 1..L+1).")]
StartLayersOpt = Annotated[str, typer.Option("--start-layers", help="scan: start layers S.")]
TolOpt = Annotated[float, typer.Option("--tol", help="scan: loss-increase tolerance of the effective horizon.")]
AblationOpt = Annotated[
    str, typer.Option("--ablation", help="scan: outputs outside the window count as zero, or as their corpus means.")
]
DeviceMapOpt = Annotated[
    str | None, typer.Option("--device-map", help="Passed to the bridge (e.g. auto) for models over one GPU.")
]
NDevicesOpt = Annotated[
    int | None, typer.Option("--n-devices", help="Passed to the bridge: split the model over N devices.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


# ----------------------------------------------------------------------------- sweep


@app.command("sweep")
def sweep(
    corpus: CorpusArg = None,
    out: OutOpt = "horizon-results",
    analyses: AnalysesOpt = "norms,truncate,scan,attention",
    model: ModelOpt = "smollm2-135m",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    max_prompts: MaxPromptsOpt = None,
    max_tokens: MaxTokensOpt = None,
    shard: ShardOpt = None,
    shard_size: ShardSizeOpt = 8,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    backend: BackendOpt = "local",
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
    lengths: LengthsOpt = "1,5,10",
    ks: KsOpt = None,
    start_layers: StartLayersOpt = "0",
    tol: TolOpt = 0.1,
    ablation: AblationOpt = "zero",
    device_map: DeviceMapOpt = None,
    n_devices: NDevicesOpt = None,
    quiet: QuietOpt = False,
    unverified: UnverifiedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run analyses over a corpus into a results directory (manifest.json + Parquet tables)."""
    from horizon.core.corpus import load_corpus
    from horizon.core.sweep import ShardSpec, SweepSettings, run_sweep

    # Every flag is checked before the (slow) model load.
    settings = SweepSettings(
        analyses=[name.strip() for name in analyses.split(",") if name.strip()],
        max_tokens=max_tokens,
        bos=bos,
        bos_token=bos_token,
        shard_size=shard_size,
        lengths=parse_int_list(lengths, "--lengths", minimum=1),
        ks=None if ks is None else parse_int_list(ks, "--ks", minimum=1),
        start_layers=parse_int_list(start_layers, "--start-layers", minimum=0),
        tol=tol,
        ablation=ablation,
    )
    settings.validate()
    shard_spec = ShardSpec.parse(shard)
    if backend == "ray" and shard is not None:
        raise HorizonError("--shard is for separate local workers; with --backend ray use --workers")
    options.check_at_least(workers, "--workers", 1)
    bridge_kwargs: dict[str, Any] = {}
    if options.check_device_map(device_map) is not None:
        bridge_kwargs["device_map"] = device_map
    if options.check_n_devices(n_devices) is not None:
        bridge_kwargs["n_devices"] = n_devices
    texts = load_corpus(corpus, max_prompts=max_prompts)
    _resumable_on_interrupt(out)

    with _sweep_progress(quiet or as_json) as (on_plan, advance):
        summary = run_sweep(
            texts,
            out,
            model,
            settings,
            device=device,
            dtype=dtype,
            shard=shard_spec,
            resume=resume,
            force=force,
            backend=backend,
            workers=workers,
            ray_address=ray_address,
            bridge_kwargs=bridge_kwargs,
            max_prompts=max_prompts,
            progress=advance,
            on_plan=on_plan,
        )
    payload = {
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
        "notes": summary.problems,
    }

    def render() -> None:
        state = "[green]complete[/]" if summary.complete else "[yellow]incomplete[/]"
        console.print(
            f"sweep {state}: {summary.shards_done}/{summary.shards_total} shards in {markup_safe(summary.out)} "
            f"({summary.shards_run} run now, {summary.shards_done_before} already done)"
        )
        console.print(
            f"{summary.prompts_run} prompts, {summary.tokens_run} tokens in {summary.work_seconds:.1f} s, "
            f"{summary.tokens_per_s:.0f} tokens/s ({summary.seconds:.1f} s with the model load); "
            f"analyses: {', '.join(summary.analyses)}"
        )
        if not summary.complete:
            console.print("[dim]other shards are for other --shard workers, or run the same command with --resume[/]")
        console.print(f"[dim]see the results: horizon report {markup_safe(summary.out)}[/]")

    emit(as_json, payload, render)
    for note in summary.problems[:3]:  # what was tidied or rebuilt in --out: one line each
        warn(note, "note")


def _resumable_on_interrupt(out: str) -> None:
    """After Ctrl-C, say that --out can be resumed (once it holds this sweep's manifest)."""
    from horizon.tui.cli import app as cli

    root = Path(out).expanduser()

    def hint() -> str | None:
        if (root / store.MANIFEST).is_file():
            return f"{out} is resumable with --resume (finished shards are kept)"
        return None

    cli.interrupt_hint = hint


@contextmanager
def _sweep_progress(quiet: bool):
    """A progress bar over prompts with tokens/s and ETA, on stderr; yields (on_plan, advance)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if quiet or not err_console.is_terminal:
        yield (lambda *args: None), (lambda *args: None)
        return
    state_started = {"at": time.perf_counter()}
    state = {"tokens": 0}
    with Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("prompts"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("sweep", total=None, rate="loading model ...")

        def on_plan(prompts: int, tokens: int, done_before: int) -> None:
            state_started["at"] = time.perf_counter()  # tokens/s counts the analyses, not the model load
            progress.update(task, total=prompts, rate=f"{tokens} tokens to run")

        def advance(prompts: int, tokens: int) -> None:
            state["tokens"] += tokens
            rate = state["tokens"] / max(time.perf_counter() - state_started["at"], 1e-9)
            progress.update(task, advance=prompts, rate=f"{rate:,.0f} tokens/s")

        yield on_plan, advance


# ----------------------------------------------------------------------------- report


@app.command("report")
def report(
    directory: Annotated[str, typer.Argument(help="A results directory written by horizon sweep.")],
    as_json: JsonOpt = False,
) -> None:
    """The corpus-wide view of every analysis in a results directory (no model is loaded)."""
    from horizon.core.sweep import corpus_views, load_views

    results = store.open_results(directory)
    views = sanitize(load_views(results))
    manifest = sanitize(results.manifest or {})
    payload = {
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
        "norms": views.get("norms"),
        "truncate": views.get("truncate"),
        "scan": views.get("scan"),
        "attention": views.get("attention"),
    }

    def render() -> None:
        try:
            with console.capture() as captured:
                render_report(results, views)
        except Exception as exc:  # a view of the wrong shape (a crafted or stale cache): recompute it
            results.problems.append(f"the stored views cannot be shown ({type(exc).__name__}); computed from "
                                    "the tables instead")
            with console.capture() as captured:
                render_report(results, sanitize(corpus_views(results)))
        sys.stdout.write(captured.get())

    emit(as_json, payload, render)
    _print_problems(results.problems, results.notes)


def _print_problems(problems: list[str], notes: list[str], limit: int = 3) -> None:
    """At most ``limit`` lines on stderr: the first problems, then how many more (report --json lists all)."""
    lines = [("warning", problem) for problem in problems] + [("note", note) for note in notes]
    if len(lines) > limit:
        more = len(lines) - (limit - 1)
        lines = [*lines[: limit - 1], ("warning", f"and {more} more problem(s): horizon report --json lists them all")]
    for kind, line in lines:
        warn(line, kind)


def sanitize(value: Any) -> Any:
    """Every string of a stored view or manifest with control characters made visible (keys included)."""
    from horizon.core.untrusted import visible

    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {sanitize(key) if isinstance(key, str) else key: sanitize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [sanitize(item) for item in value]
    return value


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _layer_label(index: int, n_layers: int) -> str:
    return "final" if index == n_layers else str(index)


def _spread(n_rows: int, wanted: int = 8) -> list[int]:
    """About ``wanted`` row indices spread over 0..n_rows-1, first and last included."""
    if n_rows <= wanted:
        return list(range(n_rows))
    return sorted({round(i * (n_rows - 1) / (wanted - 1)) for i in range(wanted)})


def render_report(results: store.Results, views: dict[str, Any]) -> None:
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
    if "norms" in views:
        _render_norms(views["norms"])
    if "truncate" in views:
        _render_truncation(views["truncate"])
    if "scan" in views:
        _render_scan(views["scan"])
    if "attention" in views:
        _render_attention(views["attention"])


def _render_norms(view: dict[str, Any]) -> None:
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
            _layer_label(row, n_layers),
            fmt(sites["resid_pre"]["mean_norm"][row], 2),
            fmt(sites["resid_pre"]["std"][row]),
            fmt(ratio),
            fmt(sites["attn_out"]["mean_norm"][row], 2) if row < n_layers else "",
            fmt(sites["mlp_out"]["mean_norm"][row], 2) if row < n_layers else "",
        )
    console.print(table)
    first, last = growth["fit_layers"]
    console.print(
        f"growth rate [bold green]{growth['rate']:.4f}/layer[/] fitted over resid_pre layers {first}..{last} "
        f"(r² {growth['r2']:.3f}, {growth['chosen']} window)"
    )


def _render_truncation(view: dict[str, Any]) -> None:
    n_layers = view["n_layers"]
    rows = _spread(n_layers + 1)
    table = Table(
        title=f"truncate: median mean-centred cosine (quartiles) over {view['n_records']} truncated tokens",
        title_justify="left",
    )
    table.add_column("length", justify="right")
    for row in rows:
        table.add_column(_layer_label(row, n_layers), justify="right")
    for length in view["lengths"]:
        medians = view["median_cos"][str(length)]
        q25, q75 = view["quartiles_cos"][str(length)]
        table.add_row(str(length), *[f"{fmt(medians[r], 2)} [dim]({fmt(q25[r], 2)}-{fmt(q75[r], 2)})[/]" for r in rows])
    console.print(table)
    shortest = str(min(view["lengths"]))
    categories = view["categories"][shortest]
    by_category = Table(title=f"truncate: median cosine per token category, length {shortest}", title_justify="left")
    by_category.add_column("category")
    by_category.add_column("tokens", justify="right")
    for row in rows:
        by_category.add_column(_layer_label(row, n_layers), justify="right")
    for category, medians in categories.items():
        if category == "count":
            continue
        by_category.add_row(markup_safe(category), str(categories["count"][category]),
                            *[fmt(medians[r], 2) for r in rows])
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
                markup_safe(repr(item["token"])),
                str(item["length"]),
                _layer_label(item["layer"], n_layers),
                fmt(item["cos"], 2),
                context,
            )
        console.print(outliers)


def _shown(text: str) -> str:
    """Text of a prompt inside a markup string: newlines as ⏎, control characters and markup escaped."""
    return markup_safe(str(text).replace("\n", "⏎"))


def _render_scan(view: dict[str, Any]) -> None:
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
            fmt(row["loss"], 4),
            fmt(row["delta_loss"], 4),
            fmt(row["kl"], 4),
            fmt(row["top1_agreement"]),
        )
    console.print(table)
    for start, k in view["effective_horizon"].items():
        found = f"k = {k}" if k is not None else "none within the scanned k"
        console.print(f"effective layer horizon (start layer {start}, tol {view['tol']}): [bold green]{found}[/]")


def _render_attention(view: dict[str, Any]) -> None:
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
            masses.append(fmt(sum(values) / len(values), 2) if values else "-")
        table.add_row(str(layer), *[fmt(v, 1) for v in view["mean_distance_no_bos"][layer]], " / ".join(masses))
    console.print(table)


# ----------------------------------------------------------------------------- merge


@app.command("merge")
def merge(
    sources: Annotated[list[str], typer.Argument(help="Results directories of the same sweep (e.g. one per machine).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory to write the merged results to.")],
    as_json: JsonOpt = False,
) -> None:
    """Combine results directories of one sweep (same model, corpus, settings) into one directory."""
    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HorizonError(f"--out {out} exists and is not empty (or not a directory); merge writes a new directory")
    try:
        _merge(sources, target, as_json)
    except store.WriteError:
        raise
    except OSError as exc:  # a read-only place, a file in the way, a full disk
        raise store.WriteError(Path(exc.filename) if exc.filename else target, exc) from None


def _merge(sources: list[str], target: Path, as_json: bool) -> None:
    opened = [store.open_results(source) for source in sources]
    for results in opened:
        if results.manifest is None:
            raise HorizonError(f"{results.path} has no readable manifest; merge needs one in every source")
    base = json.loads(json.dumps(opened[0].manifest))
    for results in opened[1:]:
        conflicts = store.settings_conflicts(base, results.manifest)
        if conflicts:
            raise HorizonError(f"{results.path} is not the same sweep as {opened[0].path}: {'; '.join(conflicts)}")
        for name, settings in results.manifest["analyses"].items():
            base["analyses"].setdefault(name, settings)
    for shard in base["shards"]:
        shard.update({"status": "pending", "rows": {}, "sha256": {}})
    base["runs"] = [run for results in opened for run in results.manifest.get("runs", [])]
    copied = 0
    for results in opened:
        for table, files in results.files.items():
            for file in files:
                shard_id = int(store.SHARD_FILE.match(file.name).group(1))
                shard = base["shards"][shard_id]
                if table in shard["rows"]:
                    continue  # an earlier source already gave this shard's table
                destination = store.shard_path(target, table, shard_id)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, destination)
                source_shard = results.manifest["shards"][shard_id]
                shard["rows"][table] = source_shard["rows"][table]
                if table in source_shard.get("sha256", {}):
                    shard["sha256"][table] = source_shard["sha256"][table]
                copied += 1
        mu = results.path / store.MU_FILE
        if mu.exists() and not (target / store.MU_FILE).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mu, target / store.MU_FILE)
    wanted = {*store.BASE_TABLES, *(store.ANALYSIS_TABLES[name] for name in base["analyses"])}
    for shard in base["shards"]:
        shard["status"] = "done" if wanted <= set(shard["rows"]) else "pending"
    done = sum(1 for shard in base["shards"] if shard["status"] == "done")
    base["finished"] = store.now_iso() if done == len(base["shards"]) else None
    store.write_json_atomic(target / store.MANIFEST, base)
    from horizon.core.sweep import write_views

    write_views(target)  # so that report on the merged directory needs no torch
    payload = {
        "out": str(target),
        "sources": [str(r.path) for r in opened],
        "files": copied,
        "shards_done": done,
        "shards_total": len(base["shards"]),
    }
    emit(
        as_json,
        payload,
        lambda: console.print(
            f"merged {len(opened)} directories into {markup_safe(target)}: {copied} shard files, "
            f"{done}/{len(base['shards'])} shards done"
        ),
    )
    if done < len(base["shards"]):
        warn(f"{len(base['shards']) - done} shards are missing from every source")
