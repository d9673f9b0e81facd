"""What several commands share: the profile options, building the profile from them, and
keeping stdout clean for machine-readable output."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from vbatch.config.profiles import (
    Profile,
    apply_overrides,
    default_profile_name,
    load_profile,
    parse_engine_override,
)

ProfileOpt = Annotated[
    Optional[str],
    typer.Option(
        "--profile",
        "-p",
        envvar="VBATCH_PROFILE",
        help="Profile name (see `vbatch profiles list`) or path to a .toml. "
        "Default: mistral-7b with an NVIDIA GPU, cpu without.",
        show_default=False,
    ),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        envvar="VBATCH_MODEL",
        help="Override the profile's model: a Hugging Face id or a local directory.",
        show_default=False,
    ),
]
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


def profile_from_options(profile: str | None, model: str | None, engine_args: list[str] | None) -> Profile:
    """The profile a command runs with: named (or the default), then --model and -E on top."""

    chosen = load_profile(profile or default_profile_name())
    overrides = dict(parse_engine_override(item) for item in engine_args or [])
    return apply_overrides(chosen, model=model, engine_overrides=overrides)


def quiet_vllm_info_logs() -> None:
    """vLLM's INFO lines would bury the progress display; VLLM_LOGGING_LEVEL=INFO or
    VBATCH_DEBUG=1 brings them back."""
    if not os.environ.get("VBATCH_DEBUG"):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr (for this process and the engine processes it starts),
    so vLLM's logging cannot mix with a JSON summary or table written to stdout afterwards."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
