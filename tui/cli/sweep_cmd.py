"""`horizon sweep`, `horizon report`, `horizon merge`: corpora into a results store, and back out.

``report`` and ``merge`` read only the store (``horizon.core.results.store``) and never load a model.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from horizon.core import analyses as registry
from horizon.core import options
from horizon.core.errors import HorizonError
from horizon.core.results import store
from horizon.core.untrusted import markup_safe
from horizon.tui.cli.app import app
from horizon.tui.cli.common import (
    BatchSizeOpt,
    BosOpt,
    BosTokenOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MaxMemoryOpt,
    ModelOpt,
    UnverifiedOpt,
    check_memory_options,
    console,
    emit,
    err_console,
    load_with_status,
    parse_int_list,
    warn,
)

CorpusArg = Annotated[
    str | None,
    typer.Argument(
        help='Prompts, as --file reads them: a text file (prompts separated by blank lines), .jsonl with a "text" '
        "field per line, or - for stdin; or a directory of .txt files (one prompt each). Default: the bundled "
        "corpus."
    ),
]
OutOpt = Annotated[
    str, typer.Option("--out", "-o", help="Results directory (created; resumed if it holds this sweep).")
]
AnalysesOpt = Annotated[
    str | None,
    typer.Option("--analyses", "-a", help=f"Comma-separated, from: {','.join(registry.names())} (default: all)."),
]
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
WorkersOpt = Annotated[
    int, typer.Option("--workers", help="Ray actors (one per GPU on a cluster, else one per CPU; a lost one is "
                      "replaced and its shard run again, up to 3 runs).")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="With --backend ray: the cluster's HOST:PORT, ray://HOST:PORT or auto "
                 "(default: $RAY_ADDRESS, else a local Ray)."),
]
LengthsOpt = Annotated[str, typer.Option("--lengths", help="truncate: context lengths kept.")]
KsOpt = Annotated[str | None, typer.Option("--ks", help="scan: horizons k in layers (default 1..L+1).")]
StartLayersOpt = Annotated[str, typer.Option("--start-layers", help="scan: start layers S.")]
TolOpt = Annotated[float, typer.Option("--tol", help="scan: loss-increase tolerance of the effective horizon.")]
AblationOpt = Annotated[
    str, typer.Option("--ablation", help="scan: outputs outside the window count as zero, or as their corpus means.")
]
ByLayerOpt = Annotated[
    bool, typer.Option("--by-layer", help="scan: also the layer x k matrix (the horizon at one layer N only).")
]
DeviceMapOpt = Annotated[
    str | None, typer.Option("--device-map", help="Passed to the bridge (e.g. auto) for models over one GPU.")
]
NDevicesOpt = Annotated[
    int | None, typer.Option("--n-devices", help="Passed to the bridge: split the model over N devices.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, and no messages from Ray.")]
PlanOpt = Annotated[
    bool,
    typer.Option("--plan", help="Run each analysis on a small sample of the corpus and print the projected time, "
                 "peak memory, batch sizes and disk of the sweep; writes nothing (no results directory)."),
]


# ----------------------------------------------------------------------------- sweep


@app.command("sweep")
def sweep(
    corpus: CorpusArg = None,
    out: OutOpt = "horizon-results",
    analyses: AnalysesOpt = None,
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
    by_layer: ByLayerOpt = False,
    device_map: DeviceMapOpt = None,
    n_devices: NDevicesOpt = None,
    quiet: QuietOpt = False,
    unverified: UnverifiedOpt = False,
    max_memory: MaxMemoryOpt = "auto",
    batch_size: BatchSizeOpt = "auto",
    plan: PlanOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run analyses over a corpus into a results directory (manifest.json + Parquet tables).

    Exit code 0 when every shard asked for is written, 2 for bad input, 3 when shards were lost on
    every run (their Ray worker died each time): the rest is written, and --resume runs them again.
    """
    from horizon.core.model.corpus import load_corpus
    from horizon.core.run.payloads import sweep_payload
    from horizon.core.sweep.sweep import ShardSpec, SweepSettings, run_sweep

    # Every flag is checked before the (slow) model load.
    settings = SweepSettings(
        analyses=list(registry.names()) if analyses is None else [n.strip() for n in analyses.split(",") if n.strip()],
        max_tokens=max_tokens,
        bos=bos,
        bos_token=bos_token,
        shard_size=shard_size,
        lengths=parse_int_list(lengths, "--lengths", minimum=1),
        ks=None if ks is None else parse_int_list(ks, "--ks", minimum=1),
        start_layers=parse_int_list(start_layers, "--start-layers", minimum=0),
        tol=tol,
        ablation=ablation,
        by_layer=by_layer,
    )
    settings.validate()
    shard_spec = ShardSpec.parse(shard)
    if backend == "ray" and shard is not None:
        raise HorizonError("--shard is for separate local workers; with --backend ray use --workers")
    if ray_address is not None and backend != "ray":
        raise HorizonError("--ray-address is for --backend ray (add --backend ray to run on that cluster)")
    options.check_at_least(workers, "--workers", 1)
    load_kwargs: dict[str, Any] = {}
    if options.check_device_map(device_map) is not None:
        load_kwargs["device_map"] = device_map
    if options.check_n_devices(n_devices) is not None:
        load_kwargs["n_devices"] = n_devices
    memory, batch = check_memory_options(max_memory, batch_size)
    texts = load_corpus(corpus, max_prompts=max_prompts)
    if plan:
        _plan(texts, model, settings, device, dtype, load_kwargs, shard_spec, batch, memory,
              workers if backend == "ray" else 1, quiet, as_json)
        return
    _resumable_on_interrupt(out)

    with _sweep_progress(quiet or as_json) as (on_plan, advance, on_eta), _ray_messages(quiet):
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
            load_kwargs=load_kwargs,
            max_prompts=max_prompts,
            progress=advance,
            on_plan=on_plan,
            batch_size=batch,
            max_memory=memory,
            on_eta=on_eta,
        )
    payload = sweep_payload(summary)

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
        if not summary.complete and not summary.failed_shards:
            console.print("[dim]other shards are for other --shard workers, or run the same command with --resume[/]")
        console.print(f"[dim]see the results: horizon report {markup_safe(summary.out)}[/]")

    emit(as_json, payload, render)
    for note in summary.notes[:3]:  # what was tidied or rebuilt in --out, workers lost: one line each
        warn(note, "note")
    if summary.failed_shards:
        failed = summary.failed_shards
        names = ", ".join(f"{shard['id']} (prompts {shard['prompts'][0]}-{shard['prompts'][1]})"
                          for shard in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        warn(f"{len(failed)} shard(s) not written: {names}{more}: {failed[0]['reason']}; the rest is written, run "
             "the same command with --resume to run them again", "error")
        raise typer.Exit(3)


@contextmanager
def _ray_messages(quiet: bool):
    """Ray's messages and the Ray pool's (a lost worker, a shard run again) as one line each on stderr.

    By default warnings and errors; under --quiet only errors (the run's own refusals and its
    end-of-run lines are printed either way).
    """
    import logging

    class OneLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines = record.getMessage().splitlines()
            warn(lines[0] if lines else "", "ray")

    logger = logging.getLogger("horizon.ray")
    handler = OneLine(logging.ERROR if quiet else logging.WARNING)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(handler.level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _resumable_on_interrupt(out: str) -> None:
    """After Ctrl-C, say that --out can be resumed (once it holds this sweep's manifest)."""
    from horizon.tui.cli import app as cli

    root = Path(out).expanduser()

    def hint() -> str | None:
        from horizon.core.results import confined

        if root.is_dir() and confined.is_file(root, root / store.MANIFEST):
            return f"{out} is resumable with --resume (finished shards are kept)"
        return None

    cli.interrupt_hint = hint


def _plan(corpus: Any, model: str, settings: Any, device: str, dtype: str, load_kwargs: dict[str, Any],
          shard: Any, batch_size: int | None, max_memory: int | None, workers: int, quiet: bool,
          as_json: bool) -> None:
    """``--plan``: the projection of core/sweep/plan.py, as a table or JSON; no results directory is written."""
    from horizon.core.memory.budget import format_size
    from horizon.core.sweep.plan import plan_sweep
    from rich.table import Table

    loaded = load_with_status(model, device, dtype, quiet=quiet or as_json, **load_kwargs)
    if quiet or as_json or not err_console.is_terminal:
        projected = plan_sweep(corpus, loaded, settings, shard, batch_size, max_memory, workers=workers)
    else:
        with err_console.status("running each analysis on a sample of the corpus ..."):
            projected = plan_sweep(corpus, loaded, settings, shard, batch_size, max_memory, workers=workers)

    def render() -> None:
        table = Table(title=f"sweep plan: {projected.n_prompts} prompts, {projected.n_tokens} tokens, "
                      f"{projected.n_shards} shards on {markup_safe(projected.device)}")
        for column in ("analysis", "time", "peak memory", "batch size", "rows", "disk"):
            table.add_column(column, justify="left" if column == "analysis" else "right")
        for name, part in projected.analyses.items():
            sizes = ", ".join(str(size) for size in part.batch_sizes)
            table.add_row(name, _duration(part.seconds), format_size(part.peak_bytes), sizes, f"{part.rows:,}",
                          format_size(part.disk_bytes))
        peak = max((part.peak_bytes for part in projected.analyses.values()), default=0)
        table.add_row("[bold]total[/]", f"[bold]{_duration(projected.total_seconds)}[/]", format_size(peak), "", "",
                      f"[bold]{format_size(projected.total_disk_bytes)}[/]")
        console.print(table)
        sample = projected.sample
        console.print(f"[dim]fitted on prompts {', '.join(str(i) for i in sample['prompts'])} "
                      f"({', '.join(str(n) for n in sample['n_tokens'])} tokens); total includes tokenising and "
                      f"the base tables ({_duration(projected.overhead_seconds)}); budget: "
                      f"{markup_safe(projected.budget.get('source', ''))}; nothing was written[/]")

    emit(as_json, projected.to_json(), render)


def _duration(seconds: float) -> str:
    """Seconds for people: 42 s, 3 min 5 s, 2 h 10 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@contextmanager
def _sweep_progress(quiet: bool):
    """A progress bar over prompts with tokens/s and an ETA, on stderr; yields (on_plan, advance, on_eta).

    The ETA is the sweep's (core/sweep/plan.py's cost model, rescaled as shards finish), counted down
    between shards.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    if quiet or not err_console.is_terminal:
        yield (lambda *args: None), (lambda *args: None), (lambda *args: None)
        return

    class EtaColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            deadline = task.fields.get("deadline")
            if deadline is None:
                return Text("ETA -:--:--", style="progress.remaining")
            left = max(0, round(deadline - time.perf_counter()))
            return Text(f"ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}", style="progress.remaining")

    state_started = {"at": time.perf_counter()}
    state = {"tokens": 0}
    with Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("prompts"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        EtaColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("sweep", total=None, rate="loading model ...", deadline=None)

        def on_plan(prompts: int, tokens: int, done_before: int) -> None:
            state_started["at"] = time.perf_counter()  # tokens/s counts the analyses, not the model load
            progress.update(task, total=prompts, rate=f"{tokens} tokens to run")

        def advance(prompts: int, tokens: int) -> None:
            state["tokens"] += tokens
            rate = state["tokens"] / max(time.perf_counter() - state_started["at"], 1e-9)
            progress.update(task, advance=prompts, rate=f"{rate:,.0f} tokens/s")

        def on_eta(seconds: float | None) -> None:
            progress.update(task, deadline=None if seconds is None else time.perf_counter() + seconds)

        yield on_plan, advance, on_eta


# ----------------------------------------------------------------------------- report


@app.command("report")
def report(
    directory: Annotated[str, typer.Argument(help="A results directory written by horizon sweep.")],
    as_json: JsonOpt = False,
) -> None:
    """The corpus-wide view of every analysis in a results directory (no model is loaded)."""
    from horizon.core.results.views import corpus_views, load_views
    from horizon.core.run.payloads import results_payload
    from horizon.tui.cli.report_render import render_report

    results = store.open_results(directory)
    views = sanitize(load_views(results))
    manifest = sanitize(results.manifest or {})
    payload = results_payload(results, views, manifest)

    def render() -> None:
        # Every stored string reaches the renderers with its markup escaped (they interpolate into markup).
        try:
            with console.capture() as captured:
                render_report(results, sanitize(views, markup=True))
        except Exception as exc:  # a view of the wrong shape (a crafted or stale cache): recompute it
            results.problems.append(f"the stored views cannot be shown ({type(exc).__name__}); computed from "
                                    "the tables instead")
            with console.capture() as captured:
                render_report(results, sanitize(corpus_views(results), markup=True))
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


def sanitize(value: Any, markup: bool = False) -> Any:
    """Every string of a stored view or manifest with control characters made visible (keys included).

    ``markup``: Rich markup escaped too, for what a renderer interpolates into markup strings (every
    string read from a results directory may be crafted: ``[link=...]``, ``[blink]``, ``[/]``).
    """
    from horizon.core.untrusted import markup_safe, visible

    escape = markup_safe if markup else visible
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escape(key) if isinstance(key, str) else key: sanitize(item, markup) for key, item in value.items()}
    if isinstance(value, list):
        return [sanitize(item, markup) for item in value]
    return value


# ----------------------------------------------------------------------------- merge


@app.command("merge")
def merge(
    sources: Annotated[list[str], typer.Argument(help="Results directories of the same sweep (e.g. one per machine).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory to write the merged results to.")],
    as_json: JsonOpt = False,
) -> None:
    """Combine results directories of one sweep (same model, corpus, settings) into one directory."""
    from horizon.core.results.views import write_views

    directories: list[str | Path] = list(sources)
    merged = store.merge(directories, Path(out).expanduser())
    write_views(merged.target)  # so that report on the merged directory needs no torch
    payload = {
        "out": str(merged.target),
        "sources": [str(path) for path in merged.sources],
        "files": merged.files,
        "shards_done": merged.shards_done,
        "shards_total": merged.shards_total,
    }
    emit(
        as_json,
        payload,
        lambda: console.print(
            f"merged {len(merged.sources)} directories into {markup_safe(merged.target)}: {merged.files} shard files, "
            f"{merged.shards_done}/{merged.shards_total} shards done"
        ),
    )
    if merged.shards_done < merged.shards_total:
        warn(f"{merged.shards_total - merged.shards_done} shards are missing from every source")
