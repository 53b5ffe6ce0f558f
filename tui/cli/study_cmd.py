"""`horizon study`: one sweep per model over the same corpus and settings, then the comparison.

The sweeps are core/sweep/study.py's (through the sweep driver, core/sweep/sweep.py); the comparison and its
figures are `horizon compare --out`'s (core/sources/compare.py, tui/figures/export.py), written into the
study directory beside the models' folders, with ``comparison.json`` (what ``compare --json``
prints). Exit codes: 0 every model's sweep is complete, 2 bad input (nothing run), 3 some model
was skipped (it failed to load or verify, its directory was refused) or left incomplete (shards
lost on Ray), 130 Ctrl-C; the study is resumable either way (the same command again).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from horizon.core import analyses as registry
from horizon.core import options
from horizon.core.errors import HorizonError
from horizon.core.options import DEFAULT_LENGTHS
from horizon.core.results import store
from horizon.core.untrusted import markup_safe, visible
from horizon.tui.cli.app import app
from horizon.tui.cli.common import JsonOpt, console, emit, err_console, parse_int_list, warn
from horizon.tui.cli.compare_cmd import figures_module

STUDY_EXIT_INCOMPLETE = 3  # as a sweep with shards lost on every run: the rest is written, rerun to finish


def _option(flag: str, text: str) -> Any:
    return typer.Option(flag, help=text, show_default=False)


@app.command("study")
def study(
    models: Annotated[list[str] | None, typer.Argument(
        help="Model specs (as --model takes them), then optionally the corpus (a prompt file or a directory of "
        ".txt files, as sweep takes it; default: the bundled corpus).", show_default=False)] = None,
    study_file: Annotated[str | None, _option("--study", "A study file (TOML or JSON): models = [...] and the "
                                              "shared settings, under these options' names.")] = None,
    corpus_option: Annotated[str | None, _option("--corpus", "The corpus (instead of the last argument).")] = None,
    out: Annotated[str | None, _option("--out", "Study directory: one results directory per model, and the "
                                       "comparison (required here or in --study).")] = None,
    max_prompts: Annotated[int | None, _option("--max-prompts", "Use only the first N prompts.")] = None,
    max_tokens: Annotated[int | None, _option("--max-tokens", "Cut each prompt to its first N tokens, BOS "
                                              "included.")] = None,
    analyses: Annotated[str | None, _option("--analyses", f"Comma-separated, from: {','.join(registry.names())} "
                                            "(default: all).")] = None,
    lengths: Annotated[str | None, _option("--lengths", "truncate: context lengths kept (default 1,5,10).")] = None,
    ks: Annotated[str | None, _option("--ks", "scan: horizons k in layers (default 1..L+1 of each model).")] = None,
    start_layers: Annotated[str | None, _option("--start-layers", "scan: start layers S (default 0).")] = None,
    tol: Annotated[float | None, _option("--tol", "scan: loss-increase tolerance (default 0.1).")] = None,
    ablation: Annotated[str | None, _option("--ablation", "scan: zero (default) | mean.")] = None,
    by_layer: Annotated[bool | None, _option("--by-layer/--no-by-layer", "scan: also the layer x k matrix.")] = None,
    shard_size: Annotated[int | None, _option("--shard-size", "Prompts per shard (default 8).")] = None,
    bos: Annotated[bool | None, _option("--bos/--no-bos", "Prepend a BOS token (default: yes).")] = None,
    bos_token: Annotated[str | None, _option("--bos-token", "BOS token instead of each model's default.")] = None,
    device: Annotated[str | None, _option("--device", "auto (default) | cpu | cuda")] = None,
    dtype: Annotated[str | None, _option("--dtype", "float32 (default) | bfloat16 | float16")] = None,
    batch_size: Annotated[str | None, _option("--batch-size", "auto (default) or N prompts per pass.")] = None,
    max_memory: Annotated[str | None, _option("--max-memory", "Peak memory of each sweep (default auto).")] = None,
    backend: Annotated[str | None, _option("--backend", "local (default) | ray: each model's sweep on Ray, one "
                                           "model at a time.")] = None,
    workers: Annotated[int | None, _option("--workers", "Ray actors per sweep (default 1).")] = None,
    ray_address: Annotated[str | None, _option("--ray-address", "With --backend ray: the cluster.")] = None,
    device_map: Annotated[str | None, _option("--device-map", "Passed to each model's load (e.g. auto), for models "
                                              "over one GPU.")] = None,
    n_devices: Annotated[int | None, _option("--n-devices", "Split each model over N devices.")] = None,
    x: Annotated[str | None, _option("--x", "x of the overlaid figures: depth (default) | layer.")] = None,
    fmt: Annotated[str | None, _option("--format", "Figure format: svg (default) | png | pdf.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Discard a model's directory that holds a sweep with "
                                        "other settings, and sweep it again.")] = False,
    unverified: Annotated[bool, typer.Option("--unverified", help="Sweep models that fail verification too; "
                                             "numbers may be wrong.")] = False,
    plan: Annotated[bool, typer.Option("--plan", help="Each model's sweep plan (loading each in turn) and their "
                                       "sum; writes nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Sweep several models over one corpus with the same settings, then compare them (resumable).

    Exit code 0 when every model's sweep is complete, 2 for bad input, 3 when a model was skipped
    (it failed to load or verify) or left incomplete; run the same command again to resume.
    """
    import os

    from horizon.core.model.corpus import load_corpus
    from horizon.core.sweep.study import COMPARISON_FILE, check_specs, model_directories, read_study_file
    from horizon.core.sweep.sweep import SweepSettings

    if unverified:
        os.environ["HORIZON_UNVERIFIED"] = "1"  # as --unverified on every command: the loader reads it
    # Each setting by name, from the command line or else the study file (read_study_file checked
    # its keys and types): values of mixed types, checked again below as they are used.
    given: dict[str, Any] = dict(
        models=None, corpus=corpus_option, out=out, max_prompts=max_prompts, max_tokens=max_tokens,
        analyses=analyses, lengths=lengths, ks=ks, start_layers=start_layers, tol=tol, ablation=ablation,
        by_layer=by_layer, shard_size=shard_size, bos=bos, bos_token=bos_token, device=device, dtype=dtype,
        batch_size=batch_size, max_memory=max_memory, backend=backend, workers=workers,
        ray_address=ray_address, device_map=device_map, n_devices=n_devices, x=x, format=fmt)
    arguments = list(models or [])
    if arguments and corpus_option is None and _is_corpus(arguments[-1]):
        given["corpus"] = arguments.pop()
    from_file = read_study_file(study_file) if study_file is not None else {}
    chosen: dict[str, Any] = {key: value if value is not None else from_file.get(key) for key, value in given.items()}
    specs = check_specs([*from_file.get("models", []), *arguments])

    # Every setting is checked before the first (slow) model load.
    settings = SweepSettings(
        analyses=list(registry.names()) if chosen["analyses"] is None else _names(chosen["analyses"]),
        max_tokens=chosen["max_tokens"], bos=True if chosen["bos"] is None else chosen["bos"],
        bos_token=chosen["bos_token"], shard_size=8 if chosen["shard_size"] is None else chosen["shard_size"],
        lengths=_ints(chosen["lengths"], "--lengths", 1) or list(DEFAULT_LENGTHS),
        ks=_ints(chosen["ks"], "--ks", 1),
        start_layers=_ints(chosen["start_layers"], "--start-layers", 0) or [0],
        tol=0.1 if chosen["tol"] is None else float(chosen["tol"]),
        ablation=chosen["ablation"] or "zero", by_layer=bool(chosen["by_layer"]),
    )
    settings.validate()
    backend_name = chosen["backend"] or "local"
    if backend_name not in ("local", "ray"):
        raise HorizonError(f"unknown --backend {visible(backend_name)!r}: use local or ray")
    workers_count = 1 if chosen["workers"] is None else chosen["workers"]
    options.check_at_least(workers_count, "--workers", 1)
    if chosen["ray_address"] is not None and backend_name != "ray":
        raise HorizonError("--ray-address is for --backend ray (add --backend ray to run on that cluster)")
    device_name, dtype_name = chosen["device"] or "auto", chosen["dtype"] or "float32"
    _check_device(device_name, dtype_name, backend_name)
    memory = options.check_max_memory(chosen["max_memory"] or "auto")
    batch = options.check_batch_size_text(chosen["batch_size"] if chosen["batch_size"] is not None else "auto")
    x_axis, figure_format = chosen["x"] or "depth", chosen["format"] or "svg"
    from horizon.tui.figures import FORMATS, X_AXES

    if x_axis not in X_AXES:
        raise HorizonError(f"--x {visible(x_axis)!r}: choose one of {', '.join(X_AXES)}")
    if figure_format not in FORMATS:
        raise HorizonError(f"--format {visible(figure_format)!r}: choose one of {', '.join(FORMATS)}")
    if chosen["out"] is None and not plan:
        raise HorizonError("give --out DIR (or out = \"DIR\" in the study file): the study's directory")
    corpus = load_corpus(chosen["corpus"], max_prompts=chosen["max_prompts"])
    root = Path(chosen["out"] or "horizon-study").expanduser()
    reserved = _reserved(figure_format)
    outcomes = model_directories(specs, root, reserved)
    load_kwargs: dict[str, Any] = {}
    if options.check_device_map(chosen["device_map"]) is not None:
        load_kwargs["device_map"] = chosen["device_map"]
    if options.check_n_devices(chosen["n_devices"]) is not None:
        load_kwargs["n_devices"] = chosen["n_devices"]
    run: dict[str, Any] = dict(device=device_name, dtype=dtype_name, load_kwargs=load_kwargs, batch_size=batch,
                               max_memory=memory)

    if plan:
        _plan(outcomes, corpus, settings, run, workers_count if backend_name == "ray" else 1, quiet, as_json)
        return
    export = figures_module()  # matplotlib is there, before hours of sweeps
    if root.exists() and not root.is_dir():
        raise HorizonError(f"--out {visible(chosen['out'])} is a file, not a directory")
    _resumable_on_interrupt(str(chosen["out"]))

    from horizon.core.sweep.study import run_study

    with _study_progress(quiet or as_json, len(outcomes)) as callbacks:
        run_study(outcomes, corpus, settings, force=force, backend=backend_name, workers=workers_count,
                  ray_address=chosen["ray_address"], max_prompts=chosen["max_prompts"], callbacks=callbacks, **run)
    finished = [outcome for outcome in outcomes if outcome.finished]
    table: dict[str, Any] | None = None
    written: list[Path] = []
    if finished:  # with none, an earlier run's comparison is left as it was
        table, written = _compare(export, finished, root, x_axis, figure_format, COMPARISON_FILE)
    complete = len(finished) == len(outcomes)
    payload = {"out": str(root), "complete": complete, "models": [outcome.to_json() for outcome in outcomes],
               "comparison": table, "figures": [str(path) for path in written],
               "comparison_file": str(root / COMPARISON_FILE) if table is not None else None}

    def render() -> None:
        _render_models(outcomes)
        if table is not None:
            from horizon.tui.cli.compare_cmd import _render

            _render(table)
            _render_across(table["across_models"])
        if written:
            console.print(f"{len(written) - 1} figure(s), index.html and {COMPARISON_FILE} written to "
                          f"{markup_safe(root)}", highlight=False)

    emit(as_json, payload, render)
    for outcome in outcomes:
        if not outcome.finished:
            warn(f"{outcome.spec}: {outcome.reason}; "
                 + ("skipped, the other models went on" if outcome.status == "failed"
                    else "run the same command again to finish it"), "error")
    if table is not None:
        for line in table["warnings"]:
            warn(line)
    if not complete:
        raise typer.Exit(STUDY_EXIT_INCOMPLETE)


# ----------------------------------------------------------------------------- input


def _is_corpus(argument: str) -> bool:
    """The last argument is the corpus when it is ``-``, ``bundled``, a regular file that is not a
    GGUF, or a directory that is not a model (no config.json); a model spec is none of these."""
    if argument in ("-", "bundled"):
        return True
    path = Path(argument).expanduser()
    try:
        if path.is_file():
            return path.suffix.lower() != ".gguf"
        if path.is_dir():
            return not (path / "config.json").exists()
    except OSError:
        return False
    if path.suffix.lower() in (".txt", ".jsonl", ".json"):  # a prompt file that is not there: say so
        raise HorizonError(f"corpus not found: {visible(argument)}")
    return False


def _names(value: str | list[str]) -> list[str]:
    return [name.strip() for name in (value.split(",") if isinstance(value, str) else value) if name.strip()]


def _ints(value: str | list[int] | None, option: str, minimum: int) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(item) for item in value)
    return parse_int_list(value, option, minimum=minimum)


def _check_device(device: str, dtype: str, backend: str) -> None:
    from horizon.core.model.loader import DTYPES, resolve_device

    if dtype not in DTYPES:
        raise HorizonError(f"unknown dtype {visible(dtype)!r}: use one of {', '.join(DTYPES)}")
    if backend == "local":
        resolve_device(device)  # cuda asked for where there is none: refused before any model
    elif device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise HorizonError(f"unknown device {visible(device)!r}: use auto, cpu or cuda")


def _reserved(fmt: str) -> set[str]:
    """The names the study writes beside the models' folders (a model's folder must not take one)."""
    from horizon.core.sweep.study import COMPARISON_FILE
    from horizon.tui.figures import FIGURES

    return {"index.html", COMPARISON_FILE, store.QUARANTINE, *(f"{stem}.{fmt}" for stem in FIGURES)}


def _resumable_on_interrupt(out: str) -> None:
    from horizon.tui.cli import app as cli

    cli.interrupt_hint = lambda: (f"{out} is resumable: run the same command again (finished models and shards "
                                  "are kept)")


# ----------------------------------------------------------------------------- the comparison


def _compare(export: Any, finished: list[Any], root: Path, x: str, fmt: str, comparison_file: str,
             ) -> tuple[dict[str, Any], list[Path]]:
    """compare and its figures over the finished models, into the study directory."""
    from horizon.core.sources import compare
    from horizon.tui.cli.sweep_cmd import sanitize
    from horizon.tui.figures.plots import COMPARE_FIGURES

    loaded = compare.load_all([outcome.directory for outcome in finished])
    table = sanitize(compare.compare(loaded))
    figures, skipped = export.build([compare.figure_input(item) for item in loaded], x=x, only=COMPARE_FIGURES)
    written = export.export(figures, skipped, root, fmt, heading="horizon study")
    _remove_stale(root, fmt, written)
    from horizon.tui.cli.common import jsonable

    store.write_json_atomic(root / comparison_file, jsonable(table))
    return table, written


def _remove_stale(root: Path, fmt: str, written: list[Path]) -> None:
    """A figure an earlier run of this study drew and this one could not (fewer models finished)
    would contradict index.html: removed (only the comparison's own file names)."""
    from horizon.tui.figures import FIGURES

    kept = {path.name for path in written}
    for stem in FIGURES:
        path = root / f"{stem}.{fmt}"
        if path.name not in kept and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- display


def _render_models(outcomes: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="models of the study", title_justify="left")
    for column in ("model", "folder", "status", "shards", "run now", "seconds"):
        table.add_column(column, justify="right" if column in ("shards", "run now", "seconds") else "left")
    colours = {"done before": "green", "swept": "green", "incomplete": "yellow", "failed": "red"}
    for outcome in outcomes:
        table.add_row(markup_safe(outcome.spec), markup_safe(outcome.folder),
                      f"[{colours.get(outcome.status, 'white')}]{outcome.status}[/]",
                      f"{outcome.shards_done}/{outcome.shards_total}" if outcome.shards_total else "-",
                      str(outcome.shards_run), "-" if outcome.status == "done before" else f"{outcome.seconds:.1f}")
    console.print(table)


def _render_across(across: dict[str, Any]) -> None:
    """The numbers of figures (12)-(14), as compare --json holds them."""
    from horizon.tui.format import number
    from rich.table import Table

    depth, growth, drop = across["horizon_vs_depth"], across["horizon_vs_growth"], across["cosine_drop_vs_depth"]
    rates = {point["label"]: point["growth_rate"] for point in growth["points"]}
    drops = {point["label"]: point for point in drop["points"]}
    table = Table(title="across models (figures 12-14)", title_justify="left")
    below = f"cos c={drop['length']} < {drop['level']:.3f}: row"
    for column in ("model", "L", "k", "k / L", "rate", below, "row / L"):
        table.add_column(column, justify="left" if column == "model" else "right")
    labels = [point["label"] for point in depth["points"]]
    labels += [point["label"] for point in drop["points"] if point["label"] not in labels]
    horizons = {point["label"]: point for point in depth["points"]}
    for label in labels:
        horizon, dropped = horizons.get(label), drops.get(label)
        n_layers = (horizon or dropped or {}).get("n_layers")
        table.add_row(markup_safe(label), str(n_layers),
                      "-" if horizon is None else str(horizon["effective_horizon"]),
                      "-" if horizon is None else number(horizon["fraction"], 3),
                      number(rates.get(label), 3),
                      "-" if dropped is None else str(dropped["row"]),
                      "-" if dropped is None else number(dropped["depth"], 3))
    console.print(table)
    if growth["spearman"] is None:
        console.print(f"Spearman rank correlation of growth rate and k / L: {growth['note']} (n = {growth['n']})",
                      highlight=False)
    else:
        layers = "-" if growth["spearman_layers"] is None else f"{growth['spearman_layers']:.3f}"
        console.print(f"Spearman rank correlation of growth rate and k / L: {growth['spearman']:.3f} "
                      f"(with k: {layers}), n = {growth['n']}", highlight=False)
    for part in (depth, drop):
        for entry in part["left_out"]:
            console.print(f"[dim]left out of {'the horizon figures' if part is depth else 'the cosine figure'}: "
                          f"{markup_safe(entry['label'])}: {markup_safe(entry['reason'])}[/]")


@contextmanager
def _study_progress(quiet: bool, n_models: int):
    """One display on stderr: the models (done of all, the one running) and its sweep's prompts with an ETA."""
    from horizon.core.sweep.study import StudyCallbacks
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet or not err_console.is_terminal:
        yield StudyCallbacks()
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=err_console,
                  transient=True) as progress:
        models = progress.add_task("[bold]models", total=n_models, note="")
        prompts = progress.add_task("  prompts", total=None, note="", visible=False)
        state: dict[str, Any] = {"tokens": 0, "at": time.perf_counter(), "deadline": None, "spec": ""}

        def model_started(index: int, spec: str, what: str) -> None:
            state["spec"] = markup_safe(spec)
            progress.update(models, note=f"{state['spec']}: {what}")
            progress.reset(prompts, total=None, visible=what == "loading", note="")
            state.update(tokens=0, deadline=None)

        def model_finished(index: int, outcome: Any) -> None:
            progress.update(models, advance=1, note=f"{markup_safe(outcome.spec)}: {outcome.status}")
            progress.update(prompts, visible=False)

        def on_plan(to_run: int, tokens: int, done_before: int) -> None:
            state["at"] = time.perf_counter()
            progress.update(models, note=f"{state['spec']}: sweeping")
            progress.update(prompts, total=to_run, completed=0, note=f"{tokens} tokens to run")

        def advance(n_prompts: int, tokens: int) -> None:
            state["tokens"] += tokens
            rate = state["tokens"] / max(time.perf_counter() - state["at"], 1e-9)
            left = "" if state["deadline"] is None else _eta(state["deadline"])
            progress.update(prompts, advance=n_prompts, note=f"{rate:,.0f} tokens/s{left}")

        def on_eta(seconds: float | None) -> None:
            state["deadline"] = None if seconds is None else time.perf_counter() + seconds

        yield StudyCallbacks(model_started=model_started, model_finished=model_finished, on_plan=on_plan,
                             progress=advance, on_eta=on_eta)


def _eta(deadline: float) -> str:
    left = max(0, round(deadline - time.perf_counter()))
    return f", ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"


# ----------------------------------------------------------------------------- --plan


def _plan(outcomes: list[Any], corpus: Any, settings: Any, run: dict[str, Any], workers: int, quiet: bool,
          as_json: bool) -> None:
    """--plan: each model's projection (core/sweep/plan.py) and the study's sum; nothing is written."""
    from horizon.core.memory.budget import format_size
    from horizon.core.sweep.study import plan_study, plan_totals
    from horizon.tui.cli.sweep_cmd import _duration
    from rich.table import Table

    def started(index: int, spec: str) -> None:
        if not (quiet or as_json) and err_console.is_terminal:
            err_console.print(f"[dim]planning {index + 1}/{len(outcomes)}: {markup_safe(spec)} ...[/]")

    plans = plan_study(outcomes, corpus, settings, workers=workers, model_started=started, **run)
    totals = plan_totals(plans)
    payload = {"models": [entry.to_json() for entry in plans], "total": totals,
               "n_prompts": len(corpus), "corpus": corpus.name}

    def render() -> None:
        table = Table(title=f"study plan: {len(plans)} models, {len(corpus)} prompts each, one after another",
                      title_justify="left")
        for column in ("model", "L", "time", "peak memory", "disk", "tokens"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for entry in plans:
            if entry.plan is None:
                table.add_row(markup_safe(entry.spec), "-", "[red]cannot plan[/]", "", "", "")
                continue
            peak = max((part.peak_bytes for part in entry.plan.analyses.values()), default=0)
            table.add_row(markup_safe(entry.spec), str(entry.n_layers),
                          _duration(entry.plan.total_seconds), format_size(peak),
                          format_size(entry.plan.total_disk_bytes), f"{entry.plan.n_tokens:,}")
        table.add_row("[bold]total[/]", "", f"[bold]{_duration(totals['seconds'])}[/]",
                      format_size(totals["peak_bytes"]), f"[bold]{format_size(totals['disk_bytes'])}[/]", "")
        console.print(table)
        console.print("[dim]peak memory: the largest model's (one is loaded at a time); nothing was written[/]")

    emit(as_json, payload, render)
    for entry in plans:
        if entry.error is not None:
            warn(f"{entry.spec}: {entry.error}; not planned", "error")
    if totals["models_failed"]:
        raise typer.Exit(STUDY_EXIT_INCOMPLETE)
