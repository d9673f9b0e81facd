"""`vbatch run`: parse options, build a RunSpec, call services.run.run_batch, render the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vbatch.cli.options import (
    EngineArgOpt,
    MetricsTextfileOpt,
    ModelOpt,
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
from vbatch.services.engine_choice import engine_loader
from vbatch.services.reporting import RunSummary
from vbatch.services.run import RunSpec
from vbatch.services.textfile_metrics import MetricsTextfile, run_recorded

RUN_HELP = """Run a batch file through vLLM and write OpenAI batch-format results.

INPUT is a JSONL file of OpenAI Batch API lines ({"custom_id", "method": "POST", "url", "body"}
with url /v1/chat/completions, /v1/completions or /v1/embeddings), or shorthand lines
({"messages": [...]}, {"prompt": "..."}, {"input": ...}); also .jsonl.gz, Parquet, or - for stdin.

Results go to OUT (default: INPUT's stem + .results.jsonl, or Parquet if OUT ends in .parquet)
as they finish; every bad line becomes one record in the errors file, never a crash.
Requests are reordered so shared prompt prefixes hit vLLM's prefix cache (--ordered writes
results in input order anyway).

Interrupted (Ctrl-C, kill -9, power loss)? Run the same command again: it resumes where it
stopped, with no request lost or duplicated. A changed input or profile is refused;
--restart starts over.

Examples:
  vbatch run batch.jsonl --profile mistral-7b

  vbatch run batch.jsonl -o out.parquet --profile gemma3-12b -E max_model_len=4096

  vbatch run batch.jsonl --engine server=http://127.0.0.1:8000   (through a running vbatch serve)

  cat batch.jsonl | vbatch run - -o results.jsonl --json > summary.json

  0 2 * * * vbatch run /data/nightly.jsonl -q --metrics-textfile /var/lib/node_exporter/textfile/vbatch.prom
    (a crontab line: node_exporter --collector.textfile.directory=/var/lib/node_exporter/textfile
    then shows the run's last success, duration, requests and tokens, labelled batch="nightly")
"""


def run(
    input: Annotated[
        str, typer.Argument(help="Batch file: .jsonl, .jsonl.gz, .parquet, or - for stdin.", show_default=False)
    ],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Results file (.jsonl or .parquet). Default: INPUT stem + .results.jsonl.",
            show_default=False,
        ),
    ] = None,
    errors: Annotated[
        Optional[Path],
        typer.Option("--errors", help="Errors file. Default: OUT stem + .errors.jsonl.", show_default=False),
    ] = None,
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    engine_arg: EngineArgOpt = None,
    served_model_name: ServedModelNameOpt = None,
    window: Annotated[
        Optional[int],
        typer.Option(
            "--window",
            envvar="VBATCH_WINDOW",
            min=1,
            help="Look-ahead window of the prefix planner, in requests (bounds memory). Default: the profile's.",
            show_default=False,
        ),
    ] = None,
    max_in_flight: Annotated[
        Optional[int],
        typer.Option(
            "--max-in-flight",
            envvar="VBATCH_MAX_IN_FLIGHT",
            min=1,
            help="Requests handed to the engine at once. Default: the profile's.",
            show_default=False,
        ),
    ] = None,
    ordered: Annotated[
        bool,
        typer.Option(
            "--ordered", help="Write results in input order (a bounded reorder buffer) instead of as they finish."
        ),
    ] = False,
    fail_fast: Annotated[
        bool,
        typer.Option("--fail-fast", help="Stop at the first bad line (exit 4) instead of recording it and going on."),
    ] = False,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart", help="Discard the results of an earlier, interrupted run to this output and start over."
        ),
    ] = False,
    metrics_textfile: MetricsTextfileOpt = None,
    meta: Annotated[
        Optional[list[str]],
        typer.Option(
            "--meta",
            help="Label the run, KEY=VALUE (repeatable), e.g. --meta team=nlp --meta ticket=42; written into the summary.",
            show_default=False,
        ),
    ] = None,
    json_summary: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout (progress stays on stderr).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    verbose: VerboseOpt = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            envvar="VBATCH_ENGINE",
            help="Where the model runs. auto: through a running `vbatch serve` at the profile's \\[serve] host:port when it serves this model (a 16 GB GPU cannot hold the model twice), else loaded here. local: always load it in this process. server: the profile's server; server=URL: any vLLM OpenAI server, e.g. server=http://gpu-box:8000.",
        ),
    ] = "auto",
) -> None:
    chosen = with_batch_settings(
        profile_from_options(profile, model, engine_arg, served_model_name),
        window=window,
        max_in_flight=max_in_flight,
        metrics_textfile=metrics_textfile,
    )
    spec = RunSpec.with_outputs(
        input,
        output,
        errors,
        profile=chosen,
        ordered=ordered,
        fail_fast=fail_fast,
        restart=restart,
        labels=parse_labels(meta or []),
    )
    out = Output.of(json=json_summary, quiet=quiet)
    metrics = MetricsTextfile.of(chosen.batch.metrics_textfile, warn=out.warning)
    log = engine_log_path("run", verbose)
    with stop_on_signals(), out.engine_output(log):
        reporter = out.reporter()
        load = engine_loader(engine, announce=reporter.phase)
        summary = run_recorded(spec, reporter, load, metrics)
    if out.mode == "json":
        out.json(summary.to_dict())
    elif out.mode == "human":
        _print_summary(out, summary)
    if log is not None and log.exists():
        out.status(f"vLLM's log: {log}")
    if summary.requests.failed:
        raise typer.Exit(int(ExitCode.SOME_REQUESTS_FAILED))


def _print_summary(out: Output, summary: RunSummary) -> None:
    req, tok = summary.requests, summary.tokens
    if summary.already_complete:
        out.status("[green]already complete[/]: nothing left to do (use --restart to run again)")
    if not req.total:
        out.status(
            f"[yellow]no requests[/]: {summary.input} is empty or holds only blank lines; the model was not loaded"
        )
        return
    resumed = f", {req.resumed} from the earlier run" if req.resumed else ""
    copies = f" ({req.deduplicated} answered by an identical request)" if req.deduplicated else ""
    status = "[green]ok[/]" if not req.failed else "[yellow]finished with failures[/]"
    out.status(f"{status}: {req.ok} ok{copies}, {req.failed} failed{resumed}")
    reasoning = f" ({tok.reasoning:,} of them reasoning)" if tok.reasoning else ""
    output = (
        f", {tok.completion:,} output{reasoning} at {summary.output_tokens_per_s:,.0f} tok/s" if tok.completion else ""
    )
    out.status(f"tokens: {tok.prompt:,} prompt ({100 * summary.prefix_cache_hit_share:.1f}% from prefix cache){output}")
    out.status(
        f"prefix sharing: {100 * summary.planned_prefix_share:.1f}% of prompt tokens in planned order "
        f"(file order: {100 * summary.file_order_prefix_share:.1f}%)"
    )
    out.status(
        f"time: {summary.wall_seconds:.1f}s wall, {summary.load_seconds:.1f}s model load, "
        f"first result after {summary.first_result_seconds:.1f}s, "
        f"{summary.processing_seconds:.1f}s processing"
    )
    out.status(f"results: {summary.results}")
    if req.failed:
        out.status(f"errors:  {summary.errors}")
