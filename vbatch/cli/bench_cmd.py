"""`vbatch bench`: parse options, build a BenchSpec, call runner.run_bench, render and save.

`vbatch bench show` re-renders a saved report (and can plot it); `vbatch bench compare` sets
two reports side by side.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vbatch.cli.options import quiet_vllm_info_logs
from vbatch.cli.output import Output, stdout_to_stderr
from vbatch.errors import ExitCode
from vbatch.services.bench.plot import write_plot
from vbatch.services.bench.report import (
    BenchReport,
    compare_reports,
    load_report,
    render_comparison,
    render_report,
    report_json,
    save_report,
)
from vbatch.services.bench.runner import BenchSpec, default_targets, run_bench
from vbatch.services.bench.targets import Limits, parse_concurrency, parse_target
from vbatch.services.bench.workloads import WorkloadSpec

if TYPE_CHECKING:
    from rich.console import Console

BENCH_HELP = """Benchmark vbatch and other servers on exactly the same requests.

Every target gets the same prompts and output lengths (max_tokens with
ignore_eos; Ollama: num_predict). Per target and concurrency level it reports
requests/s, output tok/s, time to first token (TTFT), inter-token latency
(ITL), time per output token (TPOT) and end-to-end latency (E2E) at
p50/p95/p99, and errors. Each target is warmed up first (not timed). The
settings that decide the result (model, quantization, server version, GPU)
are recorded with it.

Targets (repeat --target):
  vbatch:PROFILE      the in-process engine with a profile (name or .toml)

  openai:URL:MODEL    an OpenAI-compatible server (vllm serve, llama.cpp,
                      Ollama's /v1), e.g. openai:http://127.0.0.1:8000/v1:tiny

  ollama:MODEL        Ollama's native API at http://localhost:11434
  ollama:URL:MODEL    ... elsewhere, e.g. ollama:http://gpu:11434:llama3.2:1b

Without --target: the default profile (cpu-chat without a GPU) and, if one
answers on localhost:11434, Ollama. OPENAI_API_KEY, when set, is sent to
OpenAI-compatible servers.

Workloads: shared-prefix (one long system prompt, short questions), unique
(nothing shared), chat-short (short messages), or any OpenAI batch FILE.

Examples:
  vbatch bench --target vbatch:cpu-chat -c 1,4 -n 32

  vbatch bench -t openai:http://127.0.0.1:8000/v1:tiny -t vbatch:cpu-chat
  -c 1,4 -n 32 --plot bench.png -o report.json

  vbatch bench -w batch.jsonl -t ollama:llama3.2:1b --json > report.json

  vbatch bench show report.json --plot bench.png

  vbatch bench compare before.json after.json
"""

BENCH_EPILOG = (
    "Exit codes: 0 every request succeeded; 1 some requests failed (they are in the report); "
    "2 usage error; 3 profile error; 4 input error (workload file, report file)."
)

app = typer.Typer(rich_markup_mode="rich", pretty_exceptions_enable=False)


@app.callback(invoke_without_command=True, help=BENCH_HELP, epilog=BENCH_EPILOG)
def bench(
    ctx: typer.Context,
    target: Annotated[
        Optional[list[str]],
        typer.Option(
            "--target",
            "-t",
            help="What to benchmark: vbatch:PROFILE, openai:URL:MODEL, ollama:MODEL or ollama:URL:MODEL (repeatable).",
            show_default=False,
        ),
    ] = None,
    workload: Annotated[
        str,
        typer.Option(
            "--workload", "-w", help="shared-prefix, unique, chat-short, or the path of an OpenAI batch .jsonl file."
        ),
    ] = "shared-prefix",
    requests: Annotated[
        Optional[int],
        typer.Option(
            "--requests",
            "-n",
            min=1,
            help="Requests per concurrency level. Default: 64 (a FILE: all its lines).",
            show_default=False,
        ),
    ] = None,
    max_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-tokens",
            min=1,
            help="Output tokens per request. Default: 64 (a FILE: each line's max_tokens, else 64).",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        str,
        typer.Option("--concurrency", "-c", help="Concurrency levels, comma-separated: requests in flight at once."),
    ] = "1,4,16,64",
    prompt_words: Annotated[
        Optional[int],
        typer.Option(
            "--prompt-words",
            min=1,
            help="Prompt size of a built-in workload in words (shared-prefix: the shared system prompt). Defaults: shared-prefix 128, unique 96, chat-short 16.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the built-in workloads' prompts.")] = 0,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed requests sent to each target first.")] = 4,
    time_limit: Annotated[
        float,
        typer.Option(
            "--time-limit",
            min=1,
            help="Seconds allowed per target and concurrency level; unfinished requests count as errors.",
        ),
    ] = 600.0,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=1, help="Seconds allowed per request.")
    ] = 120.0,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout (the table goes to stderr).")
    ] = False,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write the JSON report to this file.", show_default=False)
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Write a PNG of throughput and latency vs concurrency.", show_default=False),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    if ctx.invoked_subcommand is not None:
        return

    out = Output.of(json=json_out, quiet=quiet)

    def say(text: str) -> None:
        out.say(f"bench: {text}")

    spec = BenchSpec(
        targets=[parse_target(text) for text in target or []] or default_targets(say),
        workload=WorkloadSpec(workload, requests=requests, max_tokens=max_tokens, prompt_words=prompt_words, seed=seed),
        concurrency=parse_concurrency(concurrency),
        warmup=warmup,
        limits=Limits(time_limit_s=time_limit, request_timeout_s=request_timeout),
        command=shlex.join(["vbatch", *sys.argv[1:]]),
    )
    quiet_vllm_info_logs()
    try:
        with stdout_to_stderr():  # vLLM logs to stdout; keep stdout for the table or the JSON
            report = run_bench(spec, say)
    except KeyboardInterrupt:
        out.notice("bench: interrupted, no report written")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    _emit(out, report, output=output, plot=plot)
    if report.failed_requests:
        raise typer.Exit(int(ExitCode.SOME_REQUESTS_FAILED))


@app.command(
    "show",
    help="Render a saved report again: its table, settings and notes; optionally its plot.\n\n"
    "Example: vbatch bench show report.json --plot bench.png",
)
def show(
    report_path: Annotated[Path, typer.Argument(metavar="REPORT", help="A JSON report written by vbatch bench -o.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write its PNG plot here.", show_default=False)] = None,
) -> None:
    _emit(Output.of(json=json_out), load_report(report_path), output=None, plot=plot)


@app.command(
    "compare",
    help="Set two reports side by side: throughput and latency per target and "
    "concurrency (B / A ratios), and the settings in which the runs differ.\n\n"
    "Example: vbatch bench compare before.json after.json",
)
def compare(
    a: Annotated[Path, typer.Argument(metavar="A", help="The first report (the baseline).")],
    b: Annotated[Path, typer.Argument(metavar="B", help="The second report.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON on stdout.")] = False,
) -> None:
    out = Output.of(json=json_out)
    comparison = compare_reports(load_report(a), load_report(b), str(a), str(b))
    if out.mode == "json":
        out.json(comparison.model_dump(mode="json"))
    else:
        render_comparison(comparison, _wide(out, stderr=False))


def _emit(out: Output, report: BenchReport, *, output: Path | None, plot: Path | None) -> None:
    """Table (stdout, or stderr under --json), JSON, report file, plot."""

    json_out = out.mode == "json"
    render_report(report, _wide(out, stderr=json_out))
    if json_out:
        out.json(report.model_dump(mode="json"))
    notices = _wide(out, stderr=True)
    if output is not None:
        save_report(output, report_json(report))
        notices.print(f"report: {output}", highlight=False)
    if plot is not None:
        write_plot(report, plot)
        notices.print(f"plot: {plot}", highlight=False)


def _wide(out: Output, *, stderr: bool) -> Console:
    """A terminal's own width; 160 columns for files and pipes, so the table does not fold."""
    return out.page(stderr=stderr, width_off_terminal=160)
