"""`vbatch batches`: list, show, cancel and download the batches of a batch API (a `vbatch serve`,
OpenAI, any compatible one). Thin: parse, call vbatch.client, render."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from vbatch.cli.options import BatchJsonOpt, BatchOutputOpt, QuietOpt, ServerOpt
from vbatch.cli.output import Output
from vbatch.client.api import BatchApi
from vbatch.client.batches import Downloaded, download
from vbatch.client.connection import Server
from vbatch.errors import ExitCode, InputError

app = typer.Typer(
    help="The batches of a batch API: a `vbatch serve`, OpenAI or any OpenAI-compatible one.\n\n"
    "Send a file with `vbatch submit FILE`; follow, cancel and fetch its batch here. The server is "
    "--server URL or $VBATCH_BASE_URL, else the default profile's `vbatch serve` on this machine; "
    "the key $VBATCH_API_KEY.\n\n"
    "Examples:\n\n"
    "  vbatch batches list\n\n"
    "  vbatch batches show batch_abc123 --json | jq .request_counts\n\n"
    "  vbatch batches download batch_abc123 --wait -o nightly.results.jsonl\n\n"
    "  vbatch batches list --server https://api.openai.com/v1   (with $OPENAI_API_KEY)",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

BatchIdArg = Annotated[str, typer.Argument(metavar="ID", help="The batch's id (batch_...).", show_default=False)]


def _api(server: str | None) -> BatchApi:
    return BatchApi.of(Server.resolve(server))


@app.command("list", help="List the newest batches: id, status, endpoint, requests done and failed, created, metadata.")
def list_cmd(
    server: ServerOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="How many batches.")] = 20,
    json_out: BatchJsonOpt = False,
) -> None:
    out = Output.of(json=json_out)
    batches = _api(server).newest(limit)
    if out.mode == "json":
        out.json([batch.to_dict() for batch in batches])
        return
    rows = [["id", "status", "endpoint", "done", "failed", "created", "metadata"]]
    rows += [
        [
            batch.id,
            batch.status,
            batch.endpoint,
            _done(batch),
            str(batch.request_counts.failed if batch.request_counts else 0),
            _when(batch.created_at),
            " ".join(f"{key}={value}" for key, value in (batch.metadata or {}).items()),
        ]
        for batch in batches
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.text("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@app.command(
    "show",
    help="Show one batch: status, requests, tokens, times, files, metadata and, when it failed, why.\n\n"
    "Example: vbatch batches show batch_abc123",
)
def show_cmd(batch_id: BatchIdArg, server: ServerOpt = None, json_out: BatchJsonOpt = False) -> None:
    out = Output.of(json=json_out)
    batch = _api(server).retrieve(batch_id)
    if out.mode == "json":
        out.json(batch.to_dict())
        return
    for name, value in _details(batch):
        out.text(f"{name:<12} {value}")


@app.command(
    "cancel",
    help="Cancel a batch: requests in flight stop within seconds; what finished stays in its output "
    "file (`vbatch batches download ID`).",
)
def cancel_cmd(batch_id: BatchIdArg, server: ServerOpt = None, json_out: BatchJsonOpt = False) -> None:
    out = Output.of(json=json_out)
    batch = _api(server).cancel(batch_id)
    if out.mode == "json":
        out.json(batch.to_dict())
    else:
        out.text(f"{batch.id} {batch.status}")


@app.command(
    "download",
    help="Download a finished batch's output and error files (--wait: follow it to its end first, "
    "with its progress). Exit 1 when some requests failed or the batch was cancelled or expired.\n\n"
    "Example: vbatch batches download batch_abc123 -o nightly.results.jsonl",
)
def download_cmd(
    batch_id: BatchIdArg,
    output: BatchOutputOpt = None,
    server: ServerOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the batch to end, showing its progress.")] = False,
    json_out: BatchJsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    out = Output.of(json=json_out, quiet=quiet)
    report_downloaded(out, download(Server.resolve(server), batch_id, output, out.reporter(), wait))


def report_downloaded(out: Output, result: Downloaded) -> None:
    """Show where a batch's files went; exit 1 when not every request ran, and fail a failed batch
    with its reasons."""
    batch = result.batch
    if out.mode == "json":
        out.json(result.to_dict())
    else:
        out.say(f"batch {batch.id} {batch.status}: {_counts(batch)}")
        for name, path in (("results", result.results), ("errors", result.errors)):
            if path is not None:
                out.say(f"{name + ':':<8} {path}")
    if batch.status == "failed":
        raise InputError(f"batch {batch.id} failed: {_reasons(batch)}", hint="fix the file, then submit it again")
    counts = batch.request_counts
    if batch.status != "completed" or (counts is not None and counts.failed):
        raise typer.Exit(int(ExitCode.SOME_REQUESTS_FAILED))


def _details(batch: Any) -> list[tuple[str, str]]:
    rows = [("id", batch.id), ("status", batch.status), ("endpoint", batch.endpoint)]
    rows += [("model", batch.model)] if batch.model else []
    rows += [("requests", _counts(batch))]
    if batch.usage is not None:
        cached = batch.usage.input_tokens_details.cached_tokens if batch.usage.input_tokens_details else 0
        rows.append(
            ("tokens", f"{batch.usage.input_tokens:,} input ({cached:,} cached), {batch.usage.output_tokens:,} output")
        )
    for state in ("created", "in_progress", "finalizing", "completed", "failed", "cancelling", "cancelled", "expired"):
        at = getattr(batch, f"{state}_at", None)
        if at:
            rows.append((state, _when(at)))
    files = {"input": batch.input_file_id, "output": batch.output_file_id, "errors": batch.error_file_id}
    rows.append(("files", ", ".join(f"{name} {file_id}" for name, file_id in files.items() if file_id)))
    if batch.metadata:
        rows.append(("metadata", " ".join(f"{key}={value}" for key, value in batch.metadata.items())))
    if batch.errors is not None and batch.errors.data:
        rows.append(("why", _reasons(batch)))
    return rows


def _done(batch: Any) -> str:
    counts = batch.request_counts
    return "-" if counts is None else f"{counts.completed + counts.failed}/{counts.total}"


def _counts(batch: Any) -> str:
    counts = batch.request_counts
    if counts is None:
        return "no request counts yet"
    return f"{counts.completed} completed, {counts.failed} failed, {counts.total} total"


def _reasons(batch: Any) -> str:
    data = batch.errors.data if batch.errors is not None else None
    if not data:
        return "the server gave no reason"
    return "; ".join(
        f"{error.code}" + (f" (line {error.line})" if error.line else "") + f": {error.message}" for error in data
    )


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")
