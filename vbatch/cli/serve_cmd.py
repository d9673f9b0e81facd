"""`vbatch serve`: parse options, build a ServeSpec, call serve.serve (or print its command line)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from vbatch.cli.options import EngineArgOpt, ModelOpt, ProfileOpt, ServedModelNameOpt, profile_from_options
from vbatch.cli.output import Output
from vbatch.services.launch import ManagedServer
from vbatch.services.serve import ServerPlan, ServeSpec, plan_server
from vbatch.services.serve import serve as run_server

SERVE_HELP = """Serve a profile's model over vLLM's OpenAI-compatible HTTP API.

Starts vLLM's server with the profile's engine settings, checked by
vLLM's own argument parser first (a bad profile fails in seconds), waits
until /health answers, then prints the URL and the model name clients
send. Ctrl-C or SIGTERM stops the server and everything it started; the
exit status is the server's.

The server listens on 127.0.0.1 unless --host says otherwise. To require
an API key from clients, set VBATCH_API_KEY or pass --api-key-file FILE
(the key never appears on a command line). With a key, every route but
/health and the web page's files (/v1/*, /invocations, /tokenize,
/metrics, /docs, ...) answers 401 unless the request carries
"Authorization: Bearer KEY". Listening
beyond this machine needs a key, or --insecure.

Beside single requests, the server answers OpenAI's Files and Batches
API on the same engine: upload a batch file (POST /v1/files, purpose
"batch"), create a batch (POST /v1/batches), poll it, download its output
and error files. Interactive requests go first; a batch runs in prefix
order within a share of the KV cache, and resumes where it stopped after
a restart or a crash. The catalog and files live in
$XDG_STATE_HOME/vbatch/batches/MODEL (default ~/.local/state/...);
\\[serve].batches = false turns the API off, \\[serve].max_upload_bytes
and \\[serve].keep_outputs_hours bound uploads and how long outputs are
kept; \\[serve].interactive_reserve is what batches leave to single requests.

A web page for the batches is at /ui on the same port (and / leads
there): watch them run, start one from a file, cancel, download the
results. It asks for the API key once and keeps it for the browser tab.

Examples:
  vbatch serve --profile mistral-7b

  vbatch serve --host 0.0.0.0 --api-key-file ~/.config/vbatch/api-key

  vbatch serve --profile cpu --model ./my-model -E max_model_len=2048

  vbatch serve --profile gemma3-12b --dry-run   # print the command only

Then, from any OpenAI client (base URL http://127.0.0.1:8000/v1):
  curl http://127.0.0.1:8000/v1/models -H "Authorization: Bearer $KEY"

A batch with the official openai client (docs/batch-server.md):
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)
  file = client.files.create(file=open("batch.jsonl", "rb"), purpose="batch")
  batch = client.batches.create(input_file_id=file.id,
      endpoint="/v1/chat/completions", completion_window="24h")
  client.batches.retrieve(batch.id)   # until status is "completed"
  client.files.content(batch.output_file_id).write_to_file("out.jsonl")
"""


def serve(
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Address to listen on, e.g. 0.0.0.0 for every interface. Default: the profile's \\[serve].host (127.0.0.1).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            min=1,
            max=65535,
            help="Port to listen on. Default: the profile's \\[serve].port (8000).",
            show_default=False,
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            "--api-key-file",
            help="File whose first line is the API key clients must send. Default: $VBATCH_API_KEY, then the profile's \\[serve].api_key_file.",
            show_default=False,
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow listening beyond loopback without an API key.")
    ] = False,
    engine_arg: EngineArgOpt = None,
    served_model_name: ServedModelNameOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the settings and print the server's command line; start nothing.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Do not copy the server's log to stderr (it is still written to a log file)."
        ),
    ] = False,
) -> None:
    chosen = profile_from_options(profile, model, engine_arg, served_model_name)
    spec = ServeSpec(profile=chosen, host=host, port=port, api_key_file=api_key_file, insecure=insecure)
    # --quiet here only keeps the server's log off stderr; what vbatch says is always shown.
    out = Output()
    if dry_run:
        plan = plan_server(spec)
        if plan.api_key_source:
            out.notice(
                f"# API key from {plan.api_key_source}, passed in the environment as VLLM_API_KEY; "
                "--middleware requires it on every route but /health"
            )
        out.text(plan.command_line())
        return

    def print_ready(plan: ServerPlan, server: ManagedServer) -> None:
        key = f"required (from {plan.api_key_source})" if plan.api_key_source else "none"
        out.status(f"[green]ready[/]: {plan.base_url}/v1  model [bold]{plan.served_model_name}[/]  API key: {key}")
        out.status(f"log: {server.log_path}  (Ctrl-C stops the server)")

    outcome = run_server(spec, on_ready=print_ready, log_echo=None if quiet else out.stderr)
    if outcome.stop_signal is not None:
        out.notice(f"stopped ({signal.Signals(outcome.stop_signal).name}); server exit status {outcome.status}")
    elif outcome.status:
        out.notice(f"the server exited with status {outcome.status}; its log: {outcome.log_path}")
    if outcome.status:
        raise typer.Exit(outcome.status)
