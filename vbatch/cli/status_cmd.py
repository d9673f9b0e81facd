"""`vbatch status`: parse options, call vbatch.services.status.inbox_status, render a table or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vbatch.cli.options import FailedOpt, OutboxOpt
from vbatch.cli.output import Output
from vbatch.services.drain import InboxLayout
from vbatch.services.status import InboxStatus, JobRow, inbox_status

STATUS_HELP = """Show the jobs of an inbox that `vbatch drain` works on: done, running, interrupted,
failed and waiting, with ok/failed request counts and throughput (output tokens/s, wall time).

It only reads the job directories (each job's meta and summary files): no model is loaded
and no lock is taken, so it is safe to run while a drain is working. "interrupted" is a job
a killed drain left: the next drain resumes it. A rich table on a terminal, plain columns
otherwise, JSON with --json.

DIR is the inbox; default: $VBATCH_INBOX, else the current directory. Pass the same --outbox
and --failed as to `vbatch drain` if you changed them there.

Examples:
  vbatch status /srv/batches

  vbatch status --json | jq '.counts'
"""


def status(
    inbox: Annotated[
        Path,
        typer.Argument(
            metavar="[DIR]",
            envvar="VBATCH_INBOX",
            help="The inbox. Default: $VBATCH_INBOX, else the current directory.",
            show_default=False,
        ),
    ] = Path("."),
    outbox: OutboxOpt = None,
    failed: FailedOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    out = Output.of(json=json_out)
    report = inbox_status(InboxLayout.of(inbox, outbox, failed))
    if out.mode == "json":
        out.json(report.to_dict())
    elif out.stdout_is_terminal:
        _print_table(out, report)
    else:
        _print_plain(out, report)


def _headline(report: InboxStatus) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in report.counts.items())
    drain = f"; drain pid {report.drain['pid']} running" if report.drain else ""
    return f"inbox {report.inbox}: {counts}{drain}"


def _cells(row: JobRow) -> list[str]:
    """The values both renderings show for one job."""
    return [
        row.job,
        row.state,
        "-" if row.ok is None else str(row.ok),
        "-" if row.failed is None else str(row.failed),
        "-" if row.output_tokens_per_s is None else f"{row.output_tokens_per_s:,.0f}",
        "-" if row.wall_seconds is None else f"{row.wall_seconds:.1f}",
        row.finished or row.started or "-",
        row.error or " ".join(f"{k}={v}" for k, v in row.meta.items()),
    ]


_COLUMNS = ["job", "state", "ok", "failed", "out tok/s", "wall s", "finished/started", "meta / error"]


def _print_table(out: Output, report: InboxStatus) -> None:
    from rich.markup import escape
    from rich.table import Table

    colors = {"done": "green", "running": "cyan", "interrupted": "yellow", "failed": "red", "waiting": "dim"}
    table = Table(title=escape(_headline(report)), title_justify="left")
    for column in _COLUMNS:
        table.add_column(
            column, overflow="fold", justify="right" if column in ("ok", "failed", "out tok/s", "wall s") else "left"
        )
    for row in report.jobs:
        cells = [escape(cell) for cell in _cells(row)]
        cells[1] = f"[{colors[row.state]}]{cells[1]}[/]"
        table.add_row(*cells)
    out.page().print(table)


def _print_plain(out: Output, report: InboxStatus) -> None:
    out.text(_headline(report))
    rows = [_COLUMNS] + [_cells(row) for row in report.jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        out.text("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
