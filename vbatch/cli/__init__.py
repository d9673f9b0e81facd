"""The `vbatch` command line: thin Typer commands over the core.

Each command parses options, builds a typed spec, calls one service and renders the result
through one `vbatch.cli.output.Output`. Every vbatch error is turned into one message and one
exit code here, in `main`.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from vbatch.cli.output import Output
from vbatch.errors import EXIT_CODE_HELP, ExitCode, StoppedError, VbatchError

app = typer.Typer(
    name="vbatch",
    help="Run OpenAI-format batch files through vLLM on your own GPU.\n\n"
    "Start with `vbatch run --help`. Profiles: `vbatch profiles list`.",
    epilog=EXIT_CODE_HELP.replace("\n", "\n\n"),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


@app.callback()
def _always_a_group() -> None:
    """Keeps `vbatch NAME ...` a command group while only NAME's module is registered (Typer runs
    an app of one command as that command, which would read NAME as its first argument)."""


#: Command name -> (module in vbatch.cli, attribute, help attribute or None). An attribute named
#: `app` is a command group; anything else is one command. Only the module of the command being
#: run is imported (`vbatch status` need not import the batch pipeline or the bench); `--help`
#: and unknown names import them all, so the listing and the suggestions are complete.
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "run": ("run_cmd", "run", "RUN_HELP"),
    "drain": ("drain_cmd", "drain", "DRAIN_HELP"),
    "status": ("status_cmd", "status", "STATUS_HELP"),
    "serve": ("serve_cmd", "serve", "SERVE_HELP"),
    "submit": ("submit_cmd", "submit", "SUBMIT_HELP"),
    "batches": ("batches_cmd", "app", None),
    "profiles": ("profiles_cmd", "app", None),
    "bench": ("bench_cmd", "app", None),
    "systemd": ("systemd_cmd", "app", None),
    "cron-line": ("systemd_cmd", "cron_line", "CRON_HELP"),
}
_EPILOG = EXIT_CODE_HELP.replace("\n", "\n\n")


def _register(names: list[str]) -> None:
    for name in names:
        module_name, attribute, help_name = COMMANDS[name]
        module = importlib.import_module(f"{__name__}.{module_name}")
        target = getattr(module, attribute)
        if attribute == "app":
            app.add_typer(target, name=name)
        else:
            app.command(name, help=getattr(module, help_name), epilog=_EPILOG if name == "run" else None)(target)


def _requested_command(argv: list[str]) -> str | None:
    """The command named on the command line (its first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main() -> None:
    """Entry point: run the app, mapping vbatch errors to a message and an exit code."""
    try:
        # Without standalone mode, Click returns a command's typer.Exit code instead of exiting.
        # A KeyboardInterrupt never gets here: Typer turns it into Exit(130), returned as 130.
        requested = _requested_command(sys.argv[1:])
        _register([requested] if requested in COMMANDS else list(COMMANDS))
        exit_code = app(standalone_mode=False)
    except StoppedError as stopped:  # SIGINT/SIGTERM to run or drain (vbatch.processes): not a failure
        Output().notice(stopped.message)
        sys.exit(int(stopped.exit_code))
    except VbatchError as err:
        if os.environ.get("VBATCH_DEBUG"):
            raise
        Output().error(err.message, err.hint)
        sys.exit(int(err.exit_code))
    except Exception as exc:  # noqa: BLE001 - Typer usage errors arrive here
        usage_exit = _usage_exit_code(exc)
        if usage_exit is None:
            raise
        sys.exit(usage_exit)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)


def _usage_exit_code(exc: Exception) -> int | None:
    """Typer's bundled Click raises its own usage errors; show them like Click would."""
    show = getattr(exc, "show", None)
    exit_code = getattr(exc, "exit_code", None)
    if show is None or exit_code is None:
        return None
    show()
    return int(ExitCode.USAGE) if exit_code == 2 else int(exit_code)
