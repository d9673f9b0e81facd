"""The `vbatch` command line: thin Typer commands over the core.

Each command parses options, builds a typed spec, calls one core function and renders the
result. Every vbatch error is turned into one message and one exit code here, in `main`.
"""

from __future__ import annotations

import os
import sys

import typer

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


def _register_commands() -> None:
    from vbatch.cli import profiles_cmd, run_cmd

    app.add_typer(profiles_cmd.app, name="profiles")
    app.command("run", help=run_cmd.RUN_HELP, epilog=EXIT_CODE_HELP.replace("\n", "\n\n"))(run_cmd.run)
    from vbatch.cli import bench_cmd

    app.add_typer(bench_cmd.app, name="bench")
    from vbatch.cli import drain_cmd, status_cmd

    app.command("drain", help=drain_cmd.DRAIN_HELP)(drain_cmd.drain)
    app.command("status", help=status_cmd.STATUS_HELP)(status_cmd.status)
    from vbatch.cli import serve_cmd

    app.command("serve", help=serve_cmd.SERVE_HELP)(serve_cmd.serve)
    from vbatch.cli import systemd_cmd

    app.add_typer(systemd_cmd.app, name="systemd")
    app.command("cron-line", help=systemd_cmd.CRON_HELP)(systemd_cmd.cron_line)


_register_commands()


def main() -> None:
    """Entry point: run the app, mapping vbatch errors to a message and an exit code."""
    try:
        # Without standalone mode, Click returns a command's typer.Exit code instead of exiting.
        # A KeyboardInterrupt never gets here: Typer turns it into Exit(130), returned as 130.
        exit_code = app(standalone_mode=False)
    except StoppedError as stopped:  # SIGINT/SIGTERM to run or drain (vbatch.stopping): not a failure
        print(stopped.message, file=sys.stderr)
        sys.exit(int(stopped.exit_code))
    except VbatchError as err:
        if os.environ.get("VBATCH_DEBUG"):
            raise
        from rich.console import Console
        from rich.markup import escape

        console = Console(stderr=True, soft_wrap=True)  # never break a message mid-line in logs
        console.print(f"[bold red]error:[/] {escape(err.message)}", highlight=False)
        if err.hint:
            console.print(f"[yellow]hint:[/] {escape(err.hint)}", highlight=False)
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
