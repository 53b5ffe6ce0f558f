"""`horizon inspect`: open the Textual inspector on a model and prompt(s)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from horizon.core.errors import HorizonError
from horizon.core.untrusted import visible
from horizon.tui.cli.app import app
from horizon.tui.cli.common import (
    DEFAULT_PROMPT,
    BatchSizeOpt,
    BosOpt,
    BosTokenOpt,
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    MaxMemoryOpt,
    PromptOpt,
    TruncateToOpt,
    UnverifiedOpt,
    check_memory_options,
)

if TYPE_CHECKING:
    from horizon.core.sources.results_session import ResultsSession
    from horizon.core.sources.session import Session
    from horizon.tui.app import HorizonApp


def session_loader(
    model: str, device: str, dtype: str, prompts: list[str], bos: bool, bos_token: str | None,
    truncate_to: int | None, max_memory: int | None = None, batch_size: int | None = None,
):
    """A callable the app runs in a worker: load the model, tokenise, build the session (its runner
    plans every pass under --max-memory and --batch-size, as the analysis commands do)."""

    def load() -> Session:
        # Imported here, in the app's worker: torch loads while the first screen is already up.
        from horizon.core.model.loader import load_model
        from horizon.core.model.prompts import tokenize
        from horizon.core.run.runner import Runner
        from horizon.core.sources.session import Session

        loaded = load_model(model, device=device, dtype=dtype)
        token_ids = tokenize(loaded, prompts, bos=bos, bos_token=bos_token, truncate_to=truncate_to)
        return Session(loaded, prompts, token_ids, has_bos=bos, runner=Runner(loaded, max_memory, batch_size))

    return load


InspectModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model spec (default: the bundled smollm2-135m); with --results: reruns."),
]
ResultsOpt = Annotated[
    list[str] | None,
    typer.Option("--results", metavar="DIR",
                 help="Browse a results directory written by horizon sweep (no model needed); "
                 "repeat it to add the Compare screen (6) across directories."),
]


def results_loader(directory: str, model: str | None, device: str, dtype: str, max_memory: int | None = None,
                   batch_size: int | None = None):
    """The results-mode loader: open the store, and the model too when one is given."""

    def load() -> ResultsSession:
        from horizon.core.model.loader import load_model
        from horizon.core.run.runner import Runner
        from horizon.core.sources.results_session import ResultsSession

        live = load_model(model, device=device, dtype=dtype) if model is not None else None
        runner = Runner(live, max_memory, batch_size) if live is not None else None
        return ResultsSession(directory, live_model=live, runner=runner)

    return load


def check_results_directory(directory: str) -> None:
    """One line (exit 2) before the app starts when ``directory`` is not a results directory at all."""
    if not (Path(directory).expanduser() / "manifest.json").is_file():
        raise HorizonError(f"{visible(directory)} is not a results directory (no manifest.json); if a sweep's "
                           "manifest was lost, `horizon report` shows its shard files and the same sweep with "
                           "--resume rebuilds it")


@app.command("inspect")
def inspect(
    model: InspectModelOpt = None,
    results: ResultsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    prompt: PromptOpt = None,
    file: FileOpt = None,
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    truncate_to: TruncateToOpt = None,
    max_memory: MaxMemoryOpt = "auto",
    batch_size: BatchSizeOpt = "auto",
    unverified: UnverifiedOpt = False,  # applied by its callback (HORIZON_UNVERIFIED)
) -> None:
    """Open the inspector: tokens, norms, horizon, outliers and attention, computed live.

    With no options it opens the bundled model on a bundled prompt. Keys: ? for help,
    1-5 for the screens, ctrl+p for every action.
    """
    from horizon.core.model.loader import DEFAULT_MODEL
    from horizon.core.model.prompts import gather_prompts
    from horizon.core.options import check_truncate_to
    from horizon.tui.app import HorizonApp

    if dtype not in ("float32", "bfloat16", "float16"):
        raise HorizonError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    memory, requested_batch = check_memory_options(max_memory, batch_size)
    if results:
        if prompt is not None or file is not None:
            raise HorizonError("--results shows the sweep's own prompts; drop --prompt/--file")
        for directory in results:
            check_results_directory(directory)
        first = results[0]  # its panes as with one directory; all of them on the Compare screen
        _run(HorizonApp(load=results_loader(first, model, device, dtype, memory, requested_batch), loading_label=first,
                        compare=list(results) if len(results) > 1 else None))
        return
    model = model or DEFAULT_MODEL
    prompts = gather_prompts(prompt, file, DEFAULT_PROMPT)
    check_truncate_to(truncate_to)
    loader = session_loader(model, device, dtype, prompts, bos, bos_token, truncate_to, memory, requested_batch)
    _run(HorizonApp(load=loader, loading_label=model))


def _run(app: HorizonApp) -> None:
    app.run()
    if app.return_code:  # e.g. 129 when the terminal hung up
        raise typer.Exit(app.return_code)
