"""The `horizon` command: a Typer app whose commands live one group per module.

``main`` runs the app without Click's standalone mode so that every user error (ours or a bad
flag) becomes one line on stderr and exit code 2, never a traceback or a usage dump.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys

TYPE_CHECKING = False  # not even typing is imported on the start-up path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# Nothing heavier than the standard library is imported at the top: the console script imports
# this module before ``main`` can catch anything, so a Ctrl-C during the imports of Typer, the
# command modules and torch must happen inside ``main``. The Typer app is built on first use
# (``from horizon.tui.cli.app import app`` in a command module, from inside ``main``).

HELP = "Inspect a transformer's residual stream: norm growth, layer horizons, local processing."


# Old option names that still work but are no longer shown: each is read as its new name by
# every command (Click's token normalisation, inherited by every subcommand's context).
OPTION_ALIASES = {"--truncate-to": "--max-tokens"}


def _normalize_option(name: str) -> str:
    # Click hands over an option's name without its prefix ("truncate-to" of "--truncate-to").
    return OPTION_ALIASES.get(f"--{name}", f"--{name}")[2:]


def _build_app() -> Any:
    import typer

    try:
        from typer._click.exceptions import UsageError  # Typer >= 0.25 vendors Click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - depends on the installed Typer
        # The same names from Click itself: mypy sees both branches and calls this a redefinition.
        from click import UsageError, get_current_context  # type: ignore[assignment,no-redef]

    built = typer.Typer(
        name="horizon",
        help=HELP,
        no_args_is_help=True,
        add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        context_settings={"token_normalize_func": _normalize_option},
    )

    # invoke_without_command: `horizon --version` runs the callback with no command after it.
    @built.callback(invoke_without_command=True)
    def root(
        version: bool = typer.Option(False, "--version", help="Print the package version and exit."),
        verbose: bool = typer.Option(
            False, "--verbose", help="With --version: the torch, transformers and TransformerLens versions and "
            "the device too."),
    ) -> None:
        """Inspect a transformer's residual stream: norm growth, layer horizons, local processing."""
        if version:
            sys.stdout.write("".join(f"{line}\n" for line in version_lines(verbose)))
            raise typer.Exit(0)
        context = get_current_context()
        if verbose:
            raise UsageError("--verbose goes with --version", context)
        if context.invoked_subcommand is None:
            raise UsageError("missing command", context)

    return built


def version_lines(verbose: bool = False) -> list[str]:
    """`horizon --version`: the package version; verbose adds the stack the numbers rest on and the device."""
    import platform
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    import horizon

    lines = [f"horizon {horizon.__version__}"]
    if not verbose:
        return lines
    for label, distribution in (("torch", "torch"), ("transformers", "transformers"),
                                ("TransformerLens", "transformer-lens")):
        try:
            lines.append(f"{label} {installed_version(distribution)}")
        except PackageNotFoundError:
            lines.append(f"{label} not installed")
    lines.append(f"python {platform.python_version()}")
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        devices = f", {count} devices" if count > 1 else ""
        lines.append(f"device cuda ({torch.cuda.get_device_name(0)}{devices}; CUDA {torch.version.cuda})")
    else:
        lines.append("device cpu (torch sees no CUDA device)")
    return lines


def get_app() -> Any:
    """The Typer app every command module registers on (built once)."""
    if "app" not in globals():
        globals()["app"] = _build_app()
    return globals()["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        return get_app()
    raise AttributeError(name)


# Which module defines each command. Only the invoked command's module is imported, so a
# command starts without importing the science (and torch) of every other one; --help and
# unknown commands import them all, and add the commands of the registered analyses
# (``Analysis.command``: ``horizon NAME`` of an analysis that brings one).
COMMAND_MODULES = {
    "models": "models_cmd",
    "tokens": "tokens_cmd",
    "norms": "norms_cmd",
    "patch": "horizon_cmd",
    "scan": "horizon_cmd",
    "truncate": "truncate_cmd",
    "attention": "attention_cmd",
    "sweep": "sweep_cmd",
    "report": "sweep_cmd",
    "merge": "sweep_cmd",
    "inspect": "inspect_cmd",
    "verify": "verify_cmd",
    "figures": "figures_cmd",
    "compare": "compare_cmd",
    "study": "study_cmd",
}


# Options of `horizon` itself that run no command: with one of them first, no command module is imported.
ROOT_ONLY = ("--version", "--show-completion", "--install-completion")


def _register(args: list[str]) -> None:
    """Import the modules whose commands this invocation may need (each registers on import), then add
    the commands of the registered analyses (``_register_analysis_commands``)."""
    if args and args[0] in ROOT_ONLY:
        return  # `horizon --version` and the completion scripts import no command module (and no torch)
    first = next((arg for arg in args if not arg.startswith("-")), None)
    if first in COMMAND_MODULES:
        importlib.import_module(f"horizon.tui.cli.{COMMAND_MODULES[first]}")
        return  # a built-in command: the registry's commands are not needed (nor imported)
    for module in dict.fromkeys(COMMAND_MODULES.values()):
        importlib.import_module(f"horizon.tui.cli.{module}")
    _register_analysis_commands()


# The Typer CommandInfos the last ``_register_analysis_commands`` put on the app.
_analysis_commands: list[Any] = []


def _register_analysis_commands() -> None:
    """``horizon NAME`` for every registered analysis that brings a command (``Analysis.command``,
    "module:function" of a Typer command function), after the built-in commands in --help.

    The registry is read on every invocation, not once: an analysis registered (or unregistered) in
    this process since the last one is seen, and each added command is taken off again first, so the
    app holds exactly the registry's commands and they stay after the built-in ones.
    """
    from horizon.core.analyses import REGISTRY
    from horizon.core.errors import HorizonError

    commands = get_app().registered_commands
    commands[:] = [info for info in commands if not any(info is mine for mine in _analysis_commands)]
    _analysis_commands.clear()
    built_in = {info.name for info in commands}
    for name, analysis in REGISTRY.items():
        if analysis.command is None:
            continue
        if name in built_in:
            raise HorizonError(f"the {name} analysis brings a command, but `horizon {name}` is a built-in command")
        module, _, attribute = analysis.command.partition(":")
        try:
            function = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError, ValueError) as exc:
            raise HorizonError(f"the {name} analysis's command {analysis.command!r} cannot be loaded: "
                               f"{type(exc).__name__}: {exc}") from None
        get_app().command(name)(function)
        _analysis_commands.append(commands[-1])


def fail(message: str) -> None:
    from horizon.core.untrusted import visible

    sys.stderr.write(f"horizon: error: {visible(message)}\n")
    sys.stderr.flush()


# Set by a command whose interruption leaves something resumable (sweep): called on Ctrl-C, it
# returns what to add to the one-line message ("DIR is resumable with --resume"), or None.
interrupt_hint: Callable[[], str | None] | None = None


def interrupted() -> int:
    """The one line and exit code 130 of an interrupted command (a second Ctrl-C is ignored now)."""
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    hint = None
    if interrupt_hint is not None:
        with contextlib.suppress(Exception):
            hint = interrupt_hint()
    fail("interrupted" + (f"; {hint}" if hint else ""))
    return 130


_sigint_seen = False


def _on_sigint(signum: int, frame: object) -> None:
    # Typer turns a KeyboardInterrupt inside a command into a silent exit 130; the flag lets
    # main tell that apart from a command's own return value and still print its one line.
    global _sigint_seen
    _sigint_seen = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script passes it to sys.exit)."""
    global interrupt_hint, _sigint_seen
    interrupt_hint = None
    _sigint_seen = False
    with contextlib.suppress(Exception):  # ours, whatever a library installed (main thread only)
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        code = _run(argv)
        return interrupted() if _sigint_seen else code
    except KeyboardInterrupt:
        return interrupted()
    finally:
        if argv is None:  # the console script: a Ctrl-C now, during interpreter shutdown, changes nothing
            with contextlib.suppress(Exception):
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:  # in-process callers (tests) get Python's handler back
            with contextlib.suppress(Exception):
                signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(argv: list[str] | None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = sys.argv[1:] if argv is None else argv
    try:
        from typer._click import exceptions as click_errors  # Typer >= 0.25 vendors Click
    except ImportError:  # pragma: no cover - depends on the installed Typer
        # The same module from Click itself: mypy sees both branches and calls this a redefinition.
        from click import exceptions as click_errors  # type: ignore[no-redef]
    from horizon.core.errors import HorizonError

    try:
        _register(args)
        result = get_app()(args=args, prog_name="horizon", standalone_mode=False)
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
    except BrokenPipeError:
        return 0
    except Exception as exc:
        import typer

        if not isinstance(exc, typer.Abort):
            raise
        if _sigint_seen:
            return interrupted()
        fail("aborted (end of input)")
        return 130
    code = result if isinstance(result, int) else 0
    return code


if __name__ == "__main__":
    # `python -m horizon.tui.cli.app`: the command modules register on horizon.tui.cli.app's Typer
    # app, which is not this __main__ module's copy, so run that one.
    from horizon.tui.cli.app import main as registered_main

    raise SystemExit(registered_main())
