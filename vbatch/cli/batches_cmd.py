"""`vbatch batches`: list, show, cancel and download the batches of a batch API (a `vbatch serve`,
OpenAI, any compatible one). Thin: parse, call vbatch.client, render."""

from __future__ import annotations

from typing import Annotated

import typer

from vbatch.cli.batch_view import batch_details, done_share, local_time, report_downloaded
from vbatch.cli.options import BatchJsonOpt, BatchOutputOpt, QuietOpt, ServerOpt
from vbatch.cli.output import Output
from vbatch.client.api import BatchApi
from vbatch.client.batches import download
from vbatch.client.connection import Server

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
            done_share(batch),
            str(batch.request_counts.failed if batch.request_counts else 0),
            local_time(batch.created_at),
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
    for name, value in batch_details(batch):
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
