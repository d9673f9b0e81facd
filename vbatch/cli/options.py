"""What several commands share: their common options (every option more than one command
module takes is defined here, once), building the profile from them, and vLLM's log level."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vbatch.config.profiles import (
    Profile,
    apply_overrides,
    default_profile_name,
    load_profile,
    parse_engine_override,
)
from vbatch.paths import state_dir

_DEFAULT_PROFILE = "Default: mistral-7b with an NVIDIA GPU, cpu without."


def _profile_option(help: str) -> Any:
    return Annotated[
        Optional[str],
        typer.Option("--profile", "-p", envvar="VBATCH_PROFILE", help=help, show_default=False),
    ]


def _model_option(envvar: str | None) -> Any:
    return Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            envvar=envvar,
            help="Override the profile's model: a Hugging Face id or a local directory.",
            show_default=False,
        ),
    ]


#: The profile a command runs with now.
ProfileOpt = _profile_option(f"Profile name (see `vbatch profiles list`) or path to a .toml. {_DEFAULT_PROFILE}")
ModelOpt = _model_option(envvar="VBATCH_MODEL")
#: The profile a systemd unit or crontab line will run with: checked now, written into the unit.
UnitProfileOpt = _profile_option(f"Profile name or path to a .toml (checked now). {_DEFAULT_PROFILE}")
#: A unit's --model is written into it: not taken from $VBATCH_MODEL, which the unit does not see.
UnitModelOpt = _model_option(envvar=None)
EngineArgOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--engine-arg",
        "-E",
        help="Override a vLLM engine argument of the profile, KEY=VALUE (repeatable), "
        "e.g. -E max_model_len=4096 -E gpu_memory_utilization=0.85.",
        show_default=False,
    ),
]


def _outbox_option(help: str) -> Any:
    return Annotated[Optional[Path], typer.Option("--outbox", help=help, show_default=False)]


#: The job directories of an inbox (drain, status).
OutboxOpt = _outbox_option("Where job directories go. Default: INBOX/done.")
#: The outbox the drain of a unit or crontab line fills.
UnitOutboxOpt = _outbox_option("Where drain puts finished jobs. Default: INBOX/done.")
FailedOpt = Annotated[
    Optional[Path],
    typer.Option("--failed", help="Where jobs that could not run go. Default: INBOX/failed.", show_default=False),
]


MetricsTextfileOpt = Annotated[
    Optional[str],
    typer.Option(
        "--metrics-textfile",
        envvar="VBATCH_METRICS_TEXTFILE",
        metavar="PATH",
        help="Write the run's metrics (drain: each job's) into this .prom file for node_exporter's textfile "
        "collector (its --collector.textfile.directory), replaced atomically: last success and failure time, "
        "duration, requests ok and failed, prompt, cached and output tokens, output tok/s, prefix-cache hit "
        "ratio, labelled batch=the input file's stem (nightly.jsonl: nightly). Other batches' series in the file are "
        "kept, so several cron lines may share it. A failed write is a warning, never a failed run. "
        "Default: the profile's \\[batch].metrics_textfile.",
        show_default=False,
    ),
]


UnitMetricsTextfileOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--metrics-textfile",
        metavar="PATH",
        help="Pass --metrics-textfile PATH to the scheduled `vbatch drain`: each job's metrics go into this .prom "
        "file of node_exporter's textfile collector (e.g. /var/lib/node_exporter/textfile/vbatch.prom).",
        show_default=False,
    ),
]


ServedModelNameOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--served-model-name",
        metavar="NAME",
        help="A name clients and batch lines may use for the model (repeatable; vLLM's option), e.g. "
        "--served-model-name gpt-4o-mini to run a file written for OpenAI unchanged. The first is the "
        "name results report. Default: the profile's served_model_name.",
        show_default=False,
    ),
]


#: The batch API of `vbatch submit` and `vbatch batches`.
ServerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--server",
        envvar="VBATCH_BASE_URL",
        metavar="URL",
        help="The batch API: a `vbatch serve` (http://HOST:PORT) or any OpenAI-compatible base URL, e.g. "
        "https://api.openai.com/v1. Default: $VBATCH_BASE_URL, else the default profile's \\[serve] address "
        "on this machine (http://127.0.0.1:8000/v1). The key: $VBATCH_API_KEY, else $OPENAI_API_KEY.",
        show_default=False,
    ),
]
BatchJsonOpt = Annotated[bool, typer.Option("--json", help="Print the batch API's JSON objects on stdout.")]
#: No progress display (errors, and what a command must print, still show).
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
#: Where a batch's files are downloaded to.
BatchOutputOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Results file; the errors file goes beside it (its stem + .errors.jsonl). "
        "Default: INPUT's stem (submit) or the batch id (download) + .results.jsonl.",
        show_default=False,
    ),
]


def profile_from_options(
    profile: str | None, model: str | None, engine_args: list[str] | None, served_names: list[str] | None = None
) -> Profile:
    """The profile a command runs with: named (or the default), then --model, -E and
    --served-model-name on top."""

    chosen = load_profile(profile or default_profile_name())
    overrides = dict(parse_engine_override(item) for item in engine_args or [])
    return apply_overrides(chosen, model=model, engine_overrides=overrides, served_model_names=served_names)


def with_batch_settings(profile: Profile, **settings: Any) -> Profile:
    """The profile with the [batch] settings given on the command line (those not None) on top."""
    given = {key: value for key, value in settings.items() if value is not None}
    if not given:
        return profile
    return profile.model_copy(update={"batch": profile.batch.model_copy(update=given)})


#: Engine logs kept in the state directory: one per run or drain, the oldest removed beyond this.
ENGINE_LOGS_KEPT = 20

VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Show vLLM's own log (and torch's warnings) on the terminal. By default it goes to a file in $XDG_STATE_HOME/vbatch/logs, named at the end and in any error.",
    ),
]


def engine_log_path(command: str, verbose: bool) -> Path | None:
    """A new file for vLLM's output during this command (the oldest of the state directory's
    engine logs removed beyond ENGINE_LOGS_KEPT), or None: -v or VBATCH_DEBUG=1 keep it on the
    terminal."""
    if verbose or os.environ.get("VBATCH_DEBUG"):
        return None
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in sorted(logs.glob("*.log"), key=lambda path: path.stat().st_mtime)[: -ENGINE_LOGS_KEPT + 1]:
        old.unlink(missing_ok=True)
    return logs / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def quiet_vllm_info_logs() -> None:
    """vLLM's INFO lines would bury the progress display; VLLM_LOGGING_LEVEL=INFO or
    VBATCH_DEBUG=1 brings them back."""
    if not os.environ.get("VBATCH_DEBUG"):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
