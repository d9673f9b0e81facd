"""A batch run in this process, with no server: `Batch(provider="local")`. Submitting runs the
whole batch through `vbatch run`'s pipeline (`run_batch`) with a profile, writing the output and
error files where a download would put them (with the run's summary and run record beside them,
as `vbatch run` leaves them); its status is an OpenAI Batch object built from the run's summary,
so code written for a server reads it unchanged."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from vbatch.client.api import COMPLETION_WINDOW
from vbatch.client.connection import openai_module
from vbatch.config.profiles import Profile, default_profile_name, load_profile
from vbatch.core.records import batch_usage
from vbatch.core.requests import ENDPOINT_OF_URL
from vbatch.services.reporting import Reporter
from vbatch.services.run import RunSpec, run_batch

LOCAL = "local"


def new_batch_id() -> str:
    return f"batch_local_{secrets.token_hex(12)}"


def local_profile(profile: str | Path | Profile | None) -> Profile:
    """The profile a local batch runs with: given (a name, a path or a Profile), else the default."""
    if isinstance(profile, Profile):
        return profile
    return load_profile(str(profile) if profile is not None else default_profile_name())


def run_local_batch(
    batch_id: str,
    profile: Profile,
    source: Path,
    endpoint: str,
    output: Path,
    errors: Path,
    metadata: dict[str, str] | None,
) -> Any:
    """Run the batch file `source` to the end (the model loads and closes here) and return its
    OpenAI Batch object. Outputs of an earlier batch at the same paths are replaced, as a download
    would replace them."""
    name = ENDPOINT_OF_URL.get(endpoint)
    if name is None:
        raise ValueError(f"a local batch runs {', '.join(ENDPOINT_OF_URL)} requests, not {endpoint}")
    created = int(time.time())
    spec = RunSpec(
        input=str(source),
        output=output,
        errors=errors,
        profile=profile,
        restart=True,
        endpoint=name,
        labels=dict(metadata or {}),
    )
    summary = run_batch(spec, Reporter())
    finished = int(time.time())
    requests, tokens = summary.requests, summary.tokens
    return openai_module().types.Batch.model_validate(
        {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "model": summary.model,
            "input_file_id": str(source),
            "completion_window": COMPLETION_WINDOW,
            "status": "completed",
            # Paths stand for file ids; a file with no line is not named, as a server does.
            "output_file_id": summary.results if requests.ok else None,
            "error_file_id": summary.errors if requests.failed else None,
            "created_at": created,
            "in_progress_at": created,
            "finalizing_at": finished,
            "completed_at": finished,
            "request_counts": {"total": requests.total, "completed": requests.ok, "failed": requests.failed},
            "usage": batch_usage(tokens.prompt, tokens.cached, tokens.completion, tokens.reasoning),
            "metadata": metadata,
        }
    )
