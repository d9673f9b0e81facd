"""`status`: what a drained inbox holds, read from the job directories alone (no model, no lock
taken): jobs done, running, interrupted (a killed drain's job: the next drain resumes it),
failed and waiting, with request counts and throughput from each job's summary."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from vbatch.errors import UsageError
from vbatch.services.drain import InboxLayout, Job, job_name, jobs_in, waiting_files
from vbatch.storage.journal import read_lock_holder

JobState = Literal["running", "interrupted", "waiting", "done", "failed"]
STATES: tuple[JobState, ...] = ("running", "interrupted", "waiting", "done", "failed")


@dataclass
class JobRow:
    job: str
    state: JobState
    input: str
    dir: str
    started: str | None = None
    finished: str | None = None
    profile: str | None = None
    model: str | None = None
    #: Request counts and throughput from the job's summary (None until the job has finished).
    ok: int | None = None
    failed: int | None = None
    output_tokens_per_s: float | None = None
    wall_seconds: float | None = None
    #: The job's --meta labels ("meta" in `vbatch status --json`, as in the summary).
    meta: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class InboxStatus:
    inbox: str
    outbox: str
    failed: str
    #: The running drain's lock facts (pid, host, started, command), or None when none runs.
    drain: dict[str, Any] | None
    counts: dict[str, int]
    #: Requests of the finished jobs: {"ok": ..., "failed": ...}.
    requests: dict[str, int]
    jobs: list[JobRow]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inbox_status(layout: InboxLayout) -> InboxStatus:
    """Finished and running jobs in start order, then waiting files in the order a drain takes them."""
    if not layout.inbox.is_dir():
        raise UsageError(
            f"inbox {layout.inbox} is not a directory",
            hint="pass the directory `vbatch drain` works on, or set VBATCH_INBOX",
        )
    rows = [_job_row(job) for job in [*jobs_in(layout.outbox), *jobs_in(layout.failed)]]
    rows.sort(key=lambda row: (row.started or "", row.job))
    rows += [
        JobRow(job_name(path.name), "waiting", path.name, str(layout.inbox)) for path in waiting_files(layout.inbox)
    ]
    counts = {state: sum(row.state == state for row in rows) for state in STATES}
    requests = {key: sum(getattr(row, key) or 0 for row in rows) for key in ("ok", "failed")}
    return InboxStatus(
        str(layout.inbox), str(layout.outbox), str(layout.failed), live_holder(layout.lock), counts, requests, rows
    )


def _job_row(job: Job) -> JobRow:
    record = job.record
    state: JobState = record.status
    if state == "running" and live_holder(job.paths.lock) is None:
        state = "interrupted"
    row = JobRow(
        record.job,
        state,
        record.input,
        str(job.dir),
        record.started,
        record.finished,
        record.profile,
        record.model,
        meta=record.labels,
        error=(record.error or {}).get("message"),
    )
    summary = _read_summary(job.paths.summary) if state == "done" else None
    if summary is not None:
        row.ok = summary.requests.ok
        row.failed = summary.requests.failed
        row.output_tokens_per_s = summary.output_tokens_per_s
        row.wall_seconds = summary.wall_seconds
    return row


class _SummaryRequests(BaseModel):
    ok: int
    failed: int


class _SummaryFigures(BaseModel):
    """The fields of a job's RunSummary (services/reporting) a status row shows. Read leniently,
    keys beyond these ignored: a summary an older vbatch wrote, or a hand-made one, still shows."""

    requests: _SummaryRequests
    output_tokens_per_s: float | None = None
    wall_seconds: float | None = None


def _read_summary(path: Path) -> _SummaryFigures | None:
    """None where the summary is missing, not JSON, or not a vbatch summary."""
    try:
        return _SummaryFigures.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def live_holder(lock_path: Path) -> dict[str, Any] | None:
    """The facts of a lock file whose process still runs; None if there is none or it died.

    A process on another host (a shared file system) cannot be checked: it counts as running.
    """
    holder = read_lock_holder(lock_path)
    if holder is None:
        return None
    if holder.get("host") != socket.gethostname():
        return holder
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, ValueError, TypeError):
        pass  # alive under another user; or a file we cannot judge: say running, never guess dead
    return holder
