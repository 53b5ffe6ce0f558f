"""What every analysis command shares: its options, model + prompt set-up, and output.

Commands declare the shared options with the Annotated aliases below, then call
``prepare_inputs`` to get a loaded model and tokenised prompts, and finish with ``emit``
(``--json`` prints machine-readable JSON to stdout; otherwise a rich view is rendered).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

# The loader imports torch lazily and nothing else here imports it at module level, so that
# `horizon --help` and the inspector's first paint never wait for torch.
from horizon.core.model.loader import DEFAULT_MODEL, LoadedModel, load_model
from horizon.core.options import check_truncate_to, parse_int_list  # noqa: F401  (parse_int_list: shared)
from horizon.core.run.payloads import json_payload, jsonable  # noqa: F401  (jsonable: shared)
from horizon.tui.format import number  # noqa: F401  (the one number formatter, shared with the app)
from rich.console import Console

if TYPE_CHECKING:
    from horizon.core.run.runner import Runner

# A short, real sentence: the default when a command gets neither --prompt nor --file.
DEFAULT_PROMPT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    'from 1887 to 1889. Locally nicknamed "La dame de fer", it was constructed as the centrepiece '
    "of the 1889 World's Fair, and to crown the centennial anniversary of the French Revolution."
)

console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model spec: smollm2-135m, gemma3-270m, tiny-llama, tiny-gpt2, a .gguf path, an HF dir or hub id.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 | bfloat16 | float16")]
PromptOpt = Annotated[str | None, typer.Option("--prompt", "-p", help="Prompt text.")]
FileOpt = Annotated[
    str | None,
    typer.Option(
        "--file",
        "-f",
        help='Prompts: plain text, prompts separated by blank lines, or .jsonl with a "text" field per line; '
        "- reads stdin.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of the rich view.")]
BosOpt = Annotated[
    bool, typer.Option("--bos/--no-bos", help="Prepend a BOS token (position 0, excluded from statistics).")
]
BosTokenOpt = Annotated[
    str | None, typer.Option("--bos-token", help="BOS token to prepend instead of the model's default.")
]


def _allow_unverified(value: bool) -> bool:
    # One switch for every load this process makes (sweep workers, the app's reruns included):
    # the loader reads HORIZON_UNVERIFIED (core/checks/verify.py).
    if value:
        import os

        os.environ["HORIZON_UNVERIFIED"] = "1"
    return value


UnverifiedOpt = Annotated[
    bool,
    typer.Option(
        "--unverified",
        help="Run even on a model that fails verification (see `horizon verify`); numbers may be wrong.",
        callback=_allow_unverified,
    ),
]
# The token cap, --max-tokens on every command (the sweep's too); the old name --truncate-to
# still works, as a hidden alias (tui/cli/app.py:OPTION_ALIASES).
MaxTokensOpt = Annotated[
    int | None,
    typer.Option("--max-tokens", help="Keep only the first N tokens (BOS included) of over-long prompts."),
]
TruncateToOpt = MaxTokensOpt  # the name the commands declare it under
# The memory budget and the batch size it chooses (core/memory/budget.py); every analysis command and the
# sweep declare these two, checked by ``check_memory_options``; a command's ``runner_for`` (core/run/runner.py) plans
# every pass under them once the prompts are tokenised.
MaxMemoryOpt = Annotated[
    str,
    typer.Option(
        "--max-memory",
        help="Peak memory of the run, e.g. 2GB, 512MiB, 1.5G; auto: a safe share of the free GPU memory "
        "(CUDA) or available RAM (CPU).",
    ),
]
BatchSizeOpt = Annotated[
    str,
    typer.Option("--batch-size", help="Prompts per forward pass: auto (the largest that fits --max-memory) or N."),
]


@dataclass
class Inputs:
    """A loaded model and the tokenised prompts of one command."""

    model: LoadedModel
    prompts: list[str]
    token_ids: list[list[int]]
    has_bos: bool

    def tokens(self) -> list[list[str]]:
        from horizon.core.model.prompts import decode_tokens

        return [decode_tokens(self.model, ids) for ids in self.token_ids]


def load_with_status(spec: str, device: str, dtype: str, quiet: bool = False, **kwargs: Any) -> LoadedModel:
    """Load a model, with a spinner on stderr (stdout stays clean for --json)."""
    if quiet or not err_console.is_terminal:
        return load_model(spec, device=device, dtype=dtype, **kwargs)
    with err_console.status(f"loading {spec} ..."):
        return load_model(spec, device=device, dtype=dtype, **kwargs)


def prepare_inputs(
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "float32",
    prompt: str | None = None,
    file: str | None = None,
    bos: bool = True,
    bos_token: str | None = None,
    truncate_to: int | None = None,
    default_prompt: str | None = DEFAULT_PROMPT,
    quiet: bool = False,
) -> Inputs:
    """Validate the prompt options before the (slow) model load, then tokenise."""
    from horizon.core.model.prompts import gather_prompts, tokenize

    prompts = gather_prompts(prompt, file, default_prompt)
    check_truncate_to(truncate_to)
    loaded = load_with_status(model, device, dtype, quiet=quiet)
    token_ids = tokenize(loaded, prompts, bos=bos, bos_token=bos_token, truncate_to=truncate_to)
    return Inputs(loaded, prompts, token_ids, bos)


def check_memory_options(max_memory: str, batch_size: str) -> tuple[int | None, int | None]:
    """--max-memory and --batch-size checked before the model load: (bytes or None, batch or None)."""
    from horizon.core.options import check_batch_size_text, check_max_memory

    return check_max_memory(max_memory), check_batch_size_text(batch_size)


def runner_for(inputs: Inputs, max_memory: int | None, batch_size: int | None) -> Runner:
    """The core/run/runner.py Runner of a command: its model under --max-memory and --batch-size."""
    from horizon.core.run.runner import Runner

    return Runner(inputs.model, max_memory, batch_size)


def emit(as_json: bool, payload: dict[str, Any], render: Callable[[], None], device: Any = None) -> None:
    """Print ``payload`` as JSON, or call ``render`` for the rich view.

    Every JSON output records the versions it was computed with (``versions``: horizon, torch,
    transformers, TransformerLens ..., the sweep manifest's ``packages``) and, for a command that
    ran a model, its ``device``.
    """
    if as_json:
        # json.dumps escapes every control character but DEL; text from outside gets no raw one through.
        sys.stdout.write(json.dumps(json_payload(payload, device)).replace("\x7f", "\\u007f") + "\n")
    else:
        render()


def warn(message: str, kind: str = "warning") -> None:
    """One line on stderr, with text from outside made safe (control characters, markup)."""
    from horizon.core.untrusted import markup_safe

    err_console.print(f"[yellow]horizon: {kind}:[/] {markup_safe(message)}", highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int, quiet: bool = False):
    """A rich progress bar on stderr; yields an ``advance(n=1)`` callable."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if quiet or not err_console.is_terminal:
        yield lambda n=1: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
