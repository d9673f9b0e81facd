"""`vbatch submit`: parse options, build a SubmitSpec, call vbatch.client.batches.submit_file, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vbatch.cli.batch_view import report_downloaded
from vbatch.cli.options import BatchJsonOpt, BatchOutputOpt, QuietOpt, ServerOpt
from vbatch.cli.output import Output
from vbatch.client.batches import POLL_SECONDS, SubmitSpec, submit_file
from vbatch.client.connection import Server
from vbatch.config.labels import parse_labels

SUBMIT_HELP = """Send a batch file to a batch API (vbatch serve, OpenAI, any compatible one).

It uploads FILE and creates its batch; with --wait it follows the batch to its end (requests done,
tokens/s, ETA) and downloads its output and error files.

FILE holds OpenAI Batch API lines ({"custom_id", "method": "POST", "url", "body"}), or vbatch's
shorthand lines for a vbatch server. The endpoint is the one its first line asks for, unless
--endpoint names it. Without --wait the batch id is printed (--json: the batch); follow it with
`vbatch batches show ID` and fetch its files with `vbatch batches download ID`.

The server: --server URL, else $VBATCH_BASE_URL, else the default profile's `vbatch serve` on
this machine; the key: $VBATCH_API_KEY. To run a file with no server, use `vbatch run`.

Examples:
  vbatch submit batch.jsonl --wait        (batch.results.jsonl and batch.errors.jsonl)

  id=$(vbatch submit nightly.jsonl --metadata job=nightly)

  vbatch submit batch.jsonl --server http://gpu-box:8000 --wait -o out/batch.results.jsonl

  OPENAI_API_KEY=sk-... vbatch submit batch.jsonl --server https://api.openai.com/v1
"""


def submit(
    input: Annotated[
        Path,
        typer.Argument(metavar="FILE", exists=True, dir_okay=False, help="The batch file (JSONL).", show_default=False),
    ],
    server: ServerOpt = None,
    endpoint: Annotated[
        Optional[str],
        typer.Option(
            "--endpoint",
            help="chat, completions, embeddings, or a URL such as /v1/chat/completions. "
            "Default: the one the file's first line asks for.",
            show_default=False,
        ),
    ] = None,
    metadata: Annotated[
        Optional[list[str]],
        typer.Option(
            "--metadata",
            "--meta",
            metavar="KEY=VALUE",
            help="Label the batch (repeatable), e.g. --metadata job=nightly; the batch's metadata.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the batch to its end, then download its output and error files.")
    ] = False,
    output: BatchOutputOpt = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between two looks at the batch while waiting.")
    ] = POLL_SECONDS,
    json_out: BatchJsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    spec = SubmitSpec(
        input=input,
        server=Server.resolve(server),
        endpoint=endpoint,
        metadata=parse_labels(metadata or []),
        wait=wait,
        output=output,
        interval=interval,
    )
    out = Output.of(json=json_out, quiet=quiet)
    result = submit_file(spec, out.reporter())
    if wait:
        report_downloaded(out, result)
    elif out.mode == "json":
        out.json(result.batch.to_dict())
    else:
        out.text(result.batch.id)
        out.say(
            f"follow it: vbatch batches show {result.batch.id}; its files: vbatch batches download {result.batch.id} --wait"
        )
