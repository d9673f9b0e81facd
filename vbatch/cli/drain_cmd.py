"""`vbatch drain`: parse options, build a DrainSpec, call vbatch.services.drain.drain, render the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vbatch.cli.options import (
    EngineArgOpt,
    FailedOpt,
    MetricsTextfileOpt,
    ModelOpt,
    OutboxOpt,
    ProfileOpt,
    ServedModelNameOpt,
    VerboseOpt,
    engine_log_path,
    profile_from_options,
    with_batch_settings,
)
from vbatch.cli.output import Output
from vbatch.config.labels import parse_labels
from vbatch.errors import ExitCode
from vbatch.processes import stop_on_signals
from vbatch.services.drain import DrainReport, DrainSpec, InboxLayout, Job
from vbatch.services.drain import drain as drain_inbox
from vbatch.services.engine_choice import engine_loader
from vbatch.services.reporting import Reporter
from vbatch.services.textfile_metrics import MetricsTextfile

DRAIN_HELP = """Run every batch file waiting in INBOX, loading the model once for all of them.

Made for a timer (systemd, cron) that fires every few minutes: drop batch files into INBOX,
collect results from INBOX/done/. Each file is one job with its own directory:
  INBOX/done/JOB/   the input (moved here when its job starts), JOB.results.jsonl,
                    JOB.errors.jsonl, JOB.summary.json, JOB.meta.json (status, times,
                    profile, model, --meta pairs)

  INBOX/failed/JOB/ jobs that could not run at all: unreadable or corrupt input, or outputs
                    left by another run (JOB.meta.json says why); move the input back into
                    INBOX to retry it. A file whose every line is bad still ran: it goes to
                    done/, its errors file says what is wrong with each line.

Files are taken oldest first (modification time, then name). Only names ending in .jsonl,
.jsonl.gz or .parquet are picked up, and never hidden ones (.name): copy a file in under
another name (big.jsonl.part) and rename it when complete, so a half-written file is never
read. Files that arrive while a drain runs are run by that drain too.

One drain per inbox at a time (lock file INBOX/.vbatch-drain.lock): a second one prints
"another drain (pid N) is running; nothing to do" and exits 0 without touching anything. A
drain killed mid-way (kill -9, reboot) leaves its job marked running; the next drain resumes
that job first, with no request lost or duplicated, then runs the rest. An empty inbox loads
no model.

Examples:
  vbatch drain /srv/batches --profile mistral-7b --meta team=nlp

  vbatch drain ~/inbox --outbox /data/results --json > drain-report.json

  vbatch drain /srv/batches --engine server=http://127.0.0.1:8000   (through a running vbatch serve)

  vbatch drain /srv/batches --metrics-textfile /var/lib/node_exporter/textfile/vbatch.prom
    (each job's last success, duration and tokens for node_exporter, labelled batch=its file's stem)

  vbatch status /srv/batches

Exit codes: 0 every job done with no failed request (also: nothing to do, or another drain
holds the inbox); 1 some requests failed or some jobs went to failed/; 2 usage error;
3 profile error; 5 engine error (the drain stopped; its job and the rest run next time);
130 / 143 SIGINT (Ctrl-C) / SIGTERM: the engine is stopped; the job resumes next time.
"""

InboxArg = Annotated[Path, typer.Argument(help="Directory batch files are put in.", show_default=False)]


def drain(
    inbox: InboxArg,
    outbox: OutboxOpt = None,
    failed: FailedOpt = None,
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    engine_arg: EngineArgOpt = None,
    served_model_name: ServedModelNameOpt = None,
    metrics_textfile: MetricsTextfileOpt = None,
    meta: Annotated[
        Optional[list[str]],
        typer.Option(
            "--meta",
            help="Label every job of this drain, KEY=VALUE (repeatable); written into each job's meta and summary.",
            show_default=False,
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            envvar="VBATCH_ENGINE",
            help="Where the model runs, chosen once for all jobs: auto, local, server or server=URL (see `vbatch run --help`).",
        ),
    ] = "auto",
    json_report: Annotated[
        bool, typer.Option("--json", help="Print the drain report as JSON on stdout (progress stays on stderr).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    chosen = with_batch_settings(
        profile_from_options(profile, model, engine_arg, served_model_name), metrics_textfile=metrics_textfile
    )
    out = Output.of(json=json_report, quiet=quiet)
    spec = DrainSpec(
        layout=InboxLayout.of(inbox, outbox, failed),
        profile=chosen,
        labels=parse_labels(meta or []),
        metrics=MetricsTextfile.of(chosen.batch.metrics_textfile, warn=out.warning),
    )
    report = _drain(spec, engine, out, engine_log_path("drain", verbose))
    if report.busy is None and (report.failed_jobs or report.failed_requests):
        raise typer.Exit(int(ExitCode.SOME_REQUESTS_FAILED))


def _drain(spec: DrainSpec, engine: str, out: Output, log: Path | None) -> DrainReport:
    from rich.markup import escape

    def reporter_for(job: Job, number: int, total: int, resumed: bool) -> Reporter:
        again = " (resuming an interrupted job)" if resumed else ""
        out.status(f"[bold]job {number}/{total}[/]: {escape(job.record.input)} -> {escape(str(job.dir))}{again}")
        return out.reporter()

    def say(text: str) -> None:
        out.status(escape(text))

    # A bad --engine is refused now; the model loads (or the server is reached) only when the
    # first job needs it, so a timer firing on an empty inbox stays cheap.
    load = engine_loader(engine, announce=say)

    with stop_on_signals(), out.engine_output(log):
        report = drain_inbox(spec, reporter_for, load)
    if out.mode == "json":
        out.json(report.to_dict())
    if report.busy is not None:
        out.status(f"another drain (pid {report.busy.get('pid', '?')}) is running; nothing to do")
    elif not report.jobs:
        out.status(f"nothing to do: no batch files (*.jsonl, *.jsonl.gz, *.parquet) in {escape(report.inbox)}")
    elif out.mode == "human":
        _print_report(out, report)
    if log is not None and log.exists():
        out.status(f"vLLM's log: {escape(str(log))}")
    return report


def _print_report(out: Output, report: DrainReport) -> None:
    from rich.markup import escape

    for job in report.jobs:
        if job.status == "failed":
            out.status(f"[red]failed[/] {escape(job.input)}: {escape(job.error['message'])} -> {escape(job.dir)}")
            continue
        req = job.requests
        state = "[green]done[/]" if not req["failed"] else "[yellow]done with failures[/]"
        out.status(
            f"{state} {escape(job.input)}: {req['ok']} ok, {req['failed']} failed, "
            f"{job.output_tokens_per_s:,.0f} out tok/s -> {escape(job.dir)}"
        )
    loads = f"{report.model_loads} model load ({report.load_seconds:.1f}s)" if report.model_loads else "no model load"
    out.status(f"{len(report.jobs)} jobs ({report.failed_jobs} failed), {loads}, {report.wall_seconds:.1f}s")
