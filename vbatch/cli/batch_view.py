"""How `vbatch submit` and `vbatch batches` show a batch (an OpenAI Batch object) and what
its download left; shared by both commands, so it is no command's module."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer

from vbatch.cli.output import Output
from vbatch.client.batches import Downloaded
from vbatch.errors import ExitCode, InputError


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


def batch_details(batch: Any) -> list[tuple[str, str]]:
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
            rows.append((state, local_time(at)))
    files = {"input": batch.input_file_id, "output": batch.output_file_id, "errors": batch.error_file_id}
    rows.append(("files", ", ".join(f"{name} {file_id}" for name, file_id in files.items() if file_id)))
    if batch.metadata:
        rows.append(("metadata", " ".join(f"{key}={value}" for key, value in batch.metadata.items())))
    if batch.errors is not None and batch.errors.data:
        rows.append(("why", _reasons(batch)))
    return rows


def done_share(batch: Any) -> str:
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


def local_time(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")
