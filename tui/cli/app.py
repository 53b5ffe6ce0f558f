"""The `horizon` command: a Typer app whose commands live one group per module.

``main`` runs the app without Click's standalone mode so that every user error (ours or a bad
flag) becomes one line on stderr and exit code 2, never a traceback or a usage dump.
"""

from __future__ import annotations

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


def _register() -> None:
    # Each module adds its commands to `app` on import.
    from horizon.tui.cli import models_cmd, tokens_cmd  # noqa: F401

    for optional in ("norms_cmd", "horizon_cmd", "truncate_cmd", "sweep_cmd", "inspect_cmd"):
        try:
            __import__(f"horizon.tui.cli.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"horizon.tui.cli.{optional}":
                raise


def fail(message: str) -> None:
    sys.stderr.write(f"horizon: error: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script passes it to sys.exit)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _register()
    args = sys.argv[1:] if argv is None else argv
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
    raise SystemExit(main())
