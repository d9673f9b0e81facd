"""`vbatch systemd install|uninstall serve|timer` and `vbatch cron-line`: thin over vbatch.services.systemd_install."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vbatch.cli.options import UnitMetricsTextfileOpt, UnitModelOpt, UnitOutboxOpt, UnitProfileOpt
from vbatch.cli.output import Output
from vbatch.config.profiles import default_profile_name
from vbatch.services.systemd import (
    SERVE_UNIT,
    DrainRequest,
    InstallPlan,
    ServeRequest,
    drain_unit_stem,
    plan_text,
)
from vbatch.services.systemd_install import (
    apply_plan,
    cron,
    default_unit_dir,
    drain_units_for_host,
    remove_units,
    serve_units_for_host,
)

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="Start `vbatch serve` at boot, or drain an inbox on a schedule, with systemd.\n\n"
    "Units run this Python (`<python> -m vbatch ...`), so a venv works without activation. They are "
    "sandboxed: the system and your home are read-only except the caches the job writes (HF_HOME, "
    "vLLM's ~/.cache/vllm compile cache, Triton's and CUDA's kernel caches, ~/.local/state/vbatch and "
    "the inbox/outbox), /tmp is private, no privilege gain; GPU devices stay reachable.\n\n"
    "User units (--user, the default) go to ~/.config/systemd/user, system units (--system, as root) "
    "to /etc/systemd/system; $VBATCH_SYSTEMD_DIR or --unit-dir picks another directory (packaging, tests).\n\n"
    "No systemd (a container)? Use --print and install the unit by hand, or `vbatch cron-line`.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
install_app = typer.Typer(help="Write a unit and enable it.", no_args_is_help=True, rich_markup_mode="rich")
uninstall_app = typer.Typer(help="Disable a unit and delete it.", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(install_app, name="install")
app.add_typer(uninstall_app, name="uninstall")

UserOpt = Annotated[
    bool, typer.Option("--user/--system", help="A user unit (your systemd user manager) or a system unit (needs root).")
]
UnitDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--unit-dir",
        envvar="VBATCH_SYSTEMD_DIR",
        help="Directory for the unit files. Default: ~/.config/systemd/user (--user), /etc/systemd/system (--system).",
        show_default=False,
    ),
]
FilesOnlyOpt = Annotated[
    bool, typer.Option("--files-only", help="Only write (or delete) the unit files; do not call systemctl.")
]
PrintOpt = Annotated[bool, typer.Option("--print", help="Show the unit files; write and enable nothing.")]
RunAsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--run-as",
        help="--system only: the account the service runs as. Default: $SUDO_USER, else you.",
        show_default=False,
    ),
]
HfHomeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--hf-home",
        help="Hugging Face cache the job uses (and may write). Default: $HF_HOME, else ~/.cache/huggingface.",
        show_default=False,
    ),
]
InboxOpt = Annotated[
    Path, typer.Option("--inbox", help="The directory `vbatch drain` empties (it must exist).", show_default=False)
]

SERVE_HELP = """Start `vbatch serve --profile P` at boot and restart it when it fails.

Writes vbatch-serve.service, runs `systemctl daemon-reload` and `enable --now`. The API key goes
in a file (--api-key-file): a unit does not see $VBATCH_API_KEY, and a key written into a unit
would be readable by everyone. A user unit starts at boot only with lingering on
(`sudo loginctl enable-linger $USER`); without it, when you log in.

Examples:
  vbatch systemd install serve --profile mistral-7b --print

  vbatch systemd install serve --profile mistral-7b --host 0.0.0.0 --api-key-file ~/.config/vbatch/key

  sudo $(command -v vbatch) systemd install serve --system --profile gemma3-12b --run-as alice
"""

TIMER_HELP = """Run `vbatch drain INBOX` on a schedule (a oneshot .service and its .timer).

Each inbox gets its own pair, vbatch-drain-<inbox name>-<hash>.service/.timer, so several inboxes
can have their own schedules. --schedule is a systemd calendar expression, checked with
`systemd-analyze calendar`; a run missed while the machine was off happens at the next boot
(Persistent=true). A firing that overlaps a running drain leaves at once (drain's inbox lock).

Examples:
  vbatch systemd install timer --inbox ~/batches/inbox --print

  vbatch systemd install timer --inbox /srv/inbox --schedule "Mon..Fri 22:30" --profile mistral-7b
"""

CRON_HELP = """Print the crontab line that runs `vbatch drain` on a schedule (for machines without systemd).

Absolute paths throughout; PATH and HF_HOME set; output appended to a log file (default
~/.local/state/vbatch/vbatch-drain-<inbox name>-<hash>.log; its directory is made now).
No flock needed: drain holds its inbox's own lock, so an overlapping run leaves at once.

Examples:
  vbatch cron-line --inbox ~/batches/inbox

  (crontab -l; vbatch cron-line --inbox ~/batches/inbox --schedule "30 1 * * 1-5") | crontab -
"""


@install_app.command("serve", help=SERVE_HELP)
def install_serve(
    profile: UnitProfileOpt = None,
    model: UnitModelOpt = None,
    host: Annotated[
        Optional[str],
        typer.Option(
            "--host",
            help="Address to listen on. Default: the profile's \\[serve].host (127.0.0.1).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        Optional[int],
        typer.Option(
            "--port", min=1, max=65535, help="Port. Default: the profile's \\[serve].port (8000).", show_default=False
        ),
    ] = None,
    api_key_file: Annotated[
        Optional[Path],
        typer.Option(
            "--api-key-file", help="File whose first line is the API key clients must send.", show_default=False
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow listening beyond loopback without an API key.")
    ] = False,
    user: UserOpt = True,
    run_as: RunAsOpt = None,
    hf_home: HfHomeOpt = None,
    unit_dir: UnitDirOpt = None,
    files_only: FilesOnlyOpt = False,
    print_only: PrintOpt = False,
) -> None:
    request = ServeRequest(
        scope="user" if user else "system",
        profile=profile or default_profile_name(),
        model=model,
        host=host,
        port=port,
        api_key_file=str(api_key_file) if api_key_file else None,
        insecure=insecure,
    )
    _deliver(serve_units_for_host(request, run_as=run_as, hf_home=hf_home), unit_dir, print_only, files_only)


@install_app.command("timer", help=TIMER_HELP)
def install_timer(
    inbox: InboxOpt,
    schedule: Annotated[
        str, typer.Option("--schedule", help="systemd calendar expression (man systemd.time).")
    ] = "*-*-* 02:00",
    profile: UnitProfileOpt = None,
    outbox: UnitOutboxOpt = None,
    metrics_textfile: UnitMetricsTextfileOpt = None,
    user: UserOpt = True,
    run_as: RunAsOpt = None,
    hf_home: HfHomeOpt = None,
    unit_dir: UnitDirOpt = None,
    files_only: FilesOnlyOpt = False,
    print_only: PrintOpt = False,
) -> None:
    request = _build_drain_request(inbox, outbox, profile, schedule, user, metrics_textfile)
    _deliver(drain_units_for_host(request, run_as=run_as, hf_home=hf_home), unit_dir, print_only, files_only)


@uninstall_app.command("serve", help="Stop and disable vbatch-serve.service, then delete it.")
def uninstall_serve(user: UserOpt = True, unit_dir: UnitDirOpt = None, files_only: FilesOnlyOpt = False) -> None:
    _remove(user, unit_dir, [SERVE_UNIT], files_only)


@uninstall_app.command("timer", help="Stop and disable an inbox's drain timer, then delete its .timer and .service.")
def uninstall_timer(
    inbox: InboxOpt, user: UserOpt = True, unit_dir: UnitDirOpt = None, files_only: FilesOnlyOpt = False
) -> None:
    stem = drain_unit_stem(str(inbox.expanduser().resolve()))
    _remove(user, unit_dir, [f"{stem}.timer", f"{stem}.service"], files_only)


def cron_line(
    inbox: InboxOpt,
    schedule: Annotated[
        str, typer.Option("--schedule", help="Five cron fields: minute hour day-of-month month day-of-week.")
    ] = "0 2 * * *",
    profile: UnitProfileOpt = None,
    outbox: UnitOutboxOpt = None,
    log: Annotated[
        Optional[Path], typer.Option("--log", help="File the job's output is appended to.", show_default=False)
    ] = None,
    metrics_textfile: UnitMetricsTextfileOpt = None,
) -> None:
    request = _build_drain_request(inbox, outbox, profile, schedule, True, metrics_textfile)
    Output().text(cron(request, str(log) if log else None))


def _build_drain_request(
    inbox: Path, outbox: Path | None, profile: str | None, schedule: str, user: bool, metrics_textfile: Path | None
) -> DrainRequest:
    return DrainRequest(
        scope="user" if user else "system",
        inbox=str(inbox),
        outbox=str(outbox) if outbox else None,
        profile=profile or default_profile_name(),
        schedule=schedule,
        metrics_textfile=str(metrics_textfile.expanduser().resolve()) if metrics_textfile else None,
    )


def _deliver(plan: InstallPlan, unit_dir: Path | None, print_only: bool, files_only: bool) -> None:
    out = Output()
    directory = unit_dir or default_unit_dir(plan.scope)
    if print_only:
        out.text(plan_text(plan, str(directory)), end="")
        return
    report = apply_plan(plan, directory, files_only=files_only)
    console = _console(out)
    for path in report.created_dirs:
        console.print(f"created {path}")
    for path in report.written:
        console.print(f"wrote {path}")
    if report.enabled:
        console.print(f"enabled and started {plan.enable}", style="green")
    for step in report.steps:
        console.print(f"  {step}")


def _remove(user: bool, unit_dir: Path | None, names: list[str], files_only: bool) -> None:
    scope = "user" if user else "system"
    removed = remove_units(scope, unit_dir or default_unit_dir(scope), names, files_only=files_only)
    console = _console(Output())
    if not files_only:
        console.print(f"disabled and stopped {names[0]}")
    for path in removed:
        console.print(f"removed {path}")


def _console(out: Output) -> Console:
    """What was written and enabled, on stdout: paths verbatim, one per line."""
    return out.page(highlight=False, soft_wrap=True, markup=False)
