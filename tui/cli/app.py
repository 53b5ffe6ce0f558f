"""The `horizon` command: a Typer app whose commands live one group per module.

``main`` runs the app without Click's standalone mode so that every user error (ours or a bad
flag) becomes one line on stderr and exit code 2, never a traceback or a usage dump.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

try:  # Typer >= 0.25 vendors Click as typer._click; older ones use the click package itself.
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click_errors

from horizon.core.errors import HorizonError

app = typer.Typer(
    name="horizon",
    help="Inspect a transformer's residual stream: norm growth, layer horizons, local processing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def root() -> None:
    """Inspect a transformer's residual stream: norm growth, layer horizons, local processing."""


# Which module defines each command. Only the invoked command's module is imported, so a
# command starts without importing the science (and torch) of every other one; --help and
# unknown commands import them all.
COMMAND_MODULES = {
    "models": "models_cmd",
    "tokens": "tokens_cmd",
    "norms": "norms_cmd",
    "patch": "horizon_cmd",
    "scan": "horizon_cmd",
    "truncate": "truncate_cmd",
    "attention": "truncate_cmd",
    "sweep": "sweep_cmd",
    "report": "sweep_cmd",
    "merge": "sweep_cmd",
    "inspect": "inspect_cmd",
}


def _register(args: list[str]) -> None:
    """Import the modules whose commands this invocation may need (each registers on import)."""
    first = next((arg for arg in args if not arg.startswith("-")), None)
    wanted = [COMMAND_MODULES[first]] if first in COMMAND_MODULES else list(dict.fromkeys(COMMAND_MODULES.values()))
    for module in wanted:
        importlib.import_module(f"horizon.tui.cli.{module}")


def fail(message: str) -> None:
    sys.stderr.write(f"horizon: error: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script passes it to sys.exit)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = sys.argv[1:] if argv is None else argv
    _register(args)
    try:
        result = app(args=args, prog_name="horizon", standalone_mode=False)
    except HorizonError as exc:
        fail(str(exc))
        return 2
    except click_errors.NoArgsIsHelpError:
        return 0
    except click_errors.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        fail(exc.format_message().replace("\n", " ") + hint)
        return 2
    except click_errors.ClickException as exc:
        fail(exc.format_message().replace("\n", " "))
        return 2
    except typer.Abort:
        fail("aborted")
        return 130
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    code = result if isinstance(result, int) else 0
    return code


if __name__ == "__main__":
    # `python -m horizon.tui.cli.app`: the command modules register on horizon.tui.cli.app's Typer
    # app, which is not this __main__ module's copy, so run that one.
    from horizon.tui.cli.app import main as registered_main

    raise SystemExit(registered_main())
