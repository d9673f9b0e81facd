"""`drain`: run every batch file waiting in an inbox directory, with one model load.

Made for a timer (systemd, cron): each firing runs what arrived since the last one; a firing
that overlaps a running drain finds the inbox lock held and leaves without touching anything.
The layout, with the default --outbox and --failed:

    INBOX/a.jsonl              waiting (*.jsonl, *.jsonl.gz, *.parquet), run oldest first
    INBOX/.vbatch-drain.lock   held (flock) while a drain runs; names the pid holding it
    INBOX/done/a/              one directory per job:
        a.jsonl                  the input, moved here when the job starts
        a.results.jsonl  a.errors.jsonl  a.summary.json  a.run.json  (as `vbatch run` writes)
        a.meta.json              status, times, profile, model, --meta pairs, error
    INBOX/failed/a/            jobs that could not run at all (unreadable or corrupt input,
                               outputs that belong to another run)

A job claims its input by moving it into the job directory before it starts, so the inbox
only ever holds waiting files and a new file of the same name may arrive at any time (its
job gets the directory a-2). A drain killed mid-way leaves its job with status "running";
the next drain resumes that job first (run_batch resumes from what reached the disk, since a
job's output paths never change), then runs the rest. A job whose every request failed still
ran: its errors file says why for each line, so it goes to done/ like any other.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from vbatch.config.profiles import Profile
from vbatch.engines.base import Engine
from vbatch.engines.vllm.engine import load_profile_engine
from vbatch.errors import (
    EngineError,
    InputError,
    ProfileError,
    StateError,
    UsageError,
    VbatchError,
)
from vbatch.services.reporting import Reporter, RunSummary
from vbatch.services.run import EngineLoader, RunSpec, run_batch, safe_metrics
from vbatch.services.textfile_metrics import MetricsTextfile
from vbatch.storage.journal import OutputLock, read_lock_holder
from vbatch.storage.outputs import OutputPaths
from vbatch.storage.writers import write_json

#: Input names a drain picks up. Anything else (a.jsonl.part, a.tmp, .a.jsonl) is left alone:
#: write a file under such a name and rename it into place when it is complete.
BATCH_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")
LOCK_NAME = ".vbatch-drain.lock"

JobStatus = Literal["running", "done", "failed"]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- Where things are ------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxLayout:
    inbox: Path
    #: Job directories, running and done.
    outbox: Path
    #: Job directories of jobs that could not run.
    failed: Path

    @classmethod
    def of(cls, inbox: Path, outbox: Path | None = None, failed: Path | None = None) -> InboxLayout:
        """Absolute paths, so a job's record names its inbox the same way from any directory."""
        inbox = inbox.expanduser().resolve()
        return cls(
            inbox=inbox,
            outbox=(outbox.expanduser().resolve() if outbox else inbox / "done"),
            failed=(failed.expanduser().resolve() if failed else inbox / "failed"),
        )

    @property
    def lock(self) -> Path:
        return self.inbox / LOCK_NAME


def batch_suffix(name: str) -> str | None:
    """The batch suffix of a file name a drain picks up, or None (hidden and partial files)."""
    if name.startswith("."):
        return None
    return next((suffix for suffix in BATCH_SUFFIXES if name.endswith(suffix) and name != suffix), None)


def job_name(file_name: str) -> str:
    """a.jsonl.gz -> a: the name of the job directory and of the files in it."""
    suffix = batch_suffix(file_name)
    return file_name[: -len(suffix)] if suffix else file_name


def waiting_files(inbox: Path) -> list[Path]:
    """Batch files directly in the inbox, oldest first (modification time, then name)."""
    found = []
    with os.scandir(inbox) as entries:
        for entry in entries:
            if batch_suffix(entry.name) and entry.is_file():
                found.append((entry.stat().st_mtime_ns, entry.name, Path(entry.path)))
    return [path for _, _, path in sorted(found)]


def free_dir(parent: Path, name: str) -> Path:
    """parent/name, else name-2, name-3, ...: the first that does not exist or is empty."""
    number = 1
    while True:
        candidate = parent / (name if number == 1 else f"{name}-{number}")
        if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
            return candidate
        number += 1


def move(source: Path, target: Path) -> None:
    """Rename source to target (a file, or a directory onto a missing or empty one).

    Across file systems, copy to a hidden name beside target and rename that, so target
    appears whole or not at all; then remove source.
    """
    try:
        os.rename(source, target)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    partial = target.with_name(f".{target.name}.part")
    if source.is_dir():
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial)
        os.rename(partial, target)
        shutil.rmtree(source)
    else:
        shutil.copy2(source, partial)
        os.replace(partial, target)
        os.unlink(source)


# --- Jobs ------------------------------------------------------------------------------------


@dataclass
class JobRecord:
    """<job>.meta.json: the job's facts, for `vbatch status` and for the next drain."""

    job: str
    #: The input's file name, inside the job directory.
    input: str
    #: Where the input was found.
    source: str
    #: The inbox the job came from: only a drain of that inbox resumes it.
    inbox: str
    status: JobStatus = "running"
    started: str = field(default_factory=utc_now)
    finished: str | None = None
    profile: str | None = None
    model: str | None = None
    #: The --meta labels, stored under "meta" in the file.
    labels: dict[str, str] = field(default_factory=dict)
    #: {"message", "hint"} of what stopped the job (failed, or interrupted by an engine error).
    error: dict[str, str | None] | None = None

    @classmethod
    def read(cls, path: Path) -> JobRecord | None:
        """The record at path; None where it is missing or not a vbatch job's (left alone)."""
        try:
            raw = orjson.loads(path.read_bytes())
            raw["labels"] = raw.pop("meta", {})
            known = {f.name for f in fields(cls)}
            return cls(**{key: value for key, value in raw.items() if key in known})
        except (OSError, orjson.JSONDecodeError, TypeError, AttributeError):
            return None

    def to_dict(self) -> dict[str, Any]:
        """The file's form, with the labels under "meta" (the key every version reads)."""
        return {("meta" if key == "labels" else key): value for key, value in asdict(self).items()}


@dataclass
class Job:
    dir: Path
    record: JobRecord

    def file(self, suffix: str) -> Path:
        return self.dir / f"{self.record.job}{suffix}"

    @property
    def input_path(self) -> Path:
        return self.dir / self.record.input

    def save(self) -> None:
        write_json(self.file(".meta.json"), self.record.to_dict())

    @property
    def paths(self) -> OutputPaths:
        """The job's run files, named as `vbatch run` names them (lock, summary, ...)."""
        return OutputPaths.for_run(self.file(".results.jsonl"), self.file(".errors.jsonl"))

    def run_spec(self, profile: Profile) -> RunSpec:
        return RunSpec(
            input=str(self.input_path),
            output=self.paths.results,
            errors=self.paths.errors,
            profile=profile,
            labels=self.record.labels,
        )


def jobs_in(directory: Path) -> Iterator[Job]:
    """Every job directory (one holding a readable *.meta.json) directly under directory."""
    if not directory.is_dir():
        return
    for job_dir in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for record_path in job_dir.glob("*.meta.json"):
            record = JobRecord.read(record_path)
            if record is not None and record_path.name == f"{record.job}.meta.json":
                yield Job(job_dir, record)
                break


def claim(source: Path, layout: InboxLayout, profile: Profile, labels: dict[str, str]) -> Job:
    """Give a waiting file its job directory and move it in (the job's record is written first,
    so a kill in between leaves a job the next drain finishes claiming)."""
    job_dir = free_dir(layout.outbox, job_name(source.name))
    job_dir.mkdir(parents=True, exist_ok=True)
    job = Job(
        job_dir,
        JobRecord(
            job=job_dir.name,
            input=source.name,
            source=str(source),
            inbox=str(layout.inbox),
            profile=profile.name,
            model=profile.model,
            labels=dict(labels),
        ),
    )
    job.save()
    move(source, job.input_path)
    return job


def interrupted_jobs(layout: InboxLayout) -> list[Job]:
    """This inbox's jobs a killed drain left running, in the order they started."""
    jobs = [j for j in jobs_in(layout.outbox) if j.record.status == "running" and j.record.inbox == str(layout.inbox)]
    return sorted(jobs, key=lambda job: (job.record.started, job.dir.name))


def finish(job: Job, status: JobStatus, layout: InboxLayout, error: VbatchError | None = None) -> None:
    """Record the outcome; a failed job's directory then moves to the failed directory."""
    job.record.status = status
    job.record.finished = utc_now()
    job.record.error = _error_fields(error) if error else None
    job.save()
    if status == "failed":
        _move_to_failed(job, layout)


def _move_to_failed(job: Job, layout: InboxLayout) -> None:
    layout.failed.mkdir(parents=True, exist_ok=True)
    target = free_dir(layout.failed, job.dir.name)
    move(job.dir, target)
    moved_from, job.dir = f"{job.dir}{os.sep}", target
    if job.record.error:  # the error names the input where it was read: name it where it now is
        job.record.error = {
            key: text and text.replace(moved_from, f"{target}{os.sep}") for key, text in job.record.error.items()
        }
        job.save()


def _error_fields(error: VbatchError) -> dict[str, str | None]:
    return {"message": error.message, "hint": error.hint}


def _ensure_input(job: Job) -> None:
    """A kill between writing the record and moving the input leaves the input in the inbox."""
    if job.input_path.exists():
        return
    source = Path(job.record.source)
    if not source.exists():
        raise InputError(
            f"the input of job {job.record.job} is gone: neither {job.input_path} nor {source} exists",
            hint="put the file back into the inbox to run it as a new job",
        )
    move(source, job.input_path)


# --- One engine for every job ----------------------------------------------------------------


class SharedEngine:
    """Loads the model when the first job needs it and lends that one engine to every job.

    An inbox of broken files, or an empty one, never loads the model at all.
    """

    def __init__(self, load: EngineLoader):
        self._load = load
        self._engine: Engine | None = None
        self.loads = 0
        self.load_seconds = 0.0

    def lend(self, profile: Profile) -> Engine:
        first = self._engine is None
        if self._engine is None:
            self._engine = self._load(profile)
            self.loads += 1
            self.load_seconds = self._engine.load_seconds
        return _LentEngine(self._engine, load_seconds=self._engine.load_seconds if first else 0.0)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()


class _LentEngine:
    """One job's view of the shared engine: its close() keeps the model loaded for the next job,
    load_seconds is what this job waited for the load, metrics count from when the job began."""

    def __init__(self, engine: Engine, load_seconds: float):
        self._engine = engine
        self.load_seconds = load_seconds
        self._metrics_base = safe_metrics(engine)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)  # task, model_name, tokenizer(), run(), ...

    def metrics(self) -> dict[str, float]:
        return {key: value - self._metrics_base.get(key, 0.0) for key, value in self._engine.metrics().items()}

    def close(self) -> None:
        pass  # the drain closes the shared engine once, after the last job


# --- The drain -------------------------------------------------------------------------------


@dataclass
class DrainSpec:
    layout: InboxLayout
    profile: Profile
    #: --meta labels given to every job this drain claims.
    labels: dict[str, str] = field(default_factory=dict)
    #: Where each job's metrics go when it ends, if anywhere.
    metrics: MetricsTextfile | None = None


@dataclass
class JobOutcome:
    job: str
    input: str
    status: JobStatus
    dir: str
    #: True for a job an earlier, killed drain had started.
    resumed: bool = False
    #: ok / failed / total / resumed request counts, from the job's summary (None if it could not run).
    requests: dict[str, int] | None = None
    output_tokens_per_s: float | None = None
    wall_seconds: float | None = None
    error: dict[str, str | None] | None = None


@dataclass
class DrainReport:
    inbox: str
    #: The lock holder's facts (pid, host, started) when another drain was running; nothing was done.
    busy: dict[str, Any] | None = None
    jobs: list[JobOutcome] = field(default_factory=list)
    model_loads: int = 0
    load_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def failed_jobs(self) -> int:
        return sum(job.status == "failed" for job in self.jobs)

    @property
    def failed_requests(self) -> int:
        return sum(job.requests["failed"] for job in self.jobs if job.requests)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed_jobs": self.failed_jobs, "failed_requests": self.failed_requests}


#: Called before each job with (job, number, jobs known so far, resumed); returns its progress reporter.
ReporterFactory = Callable[[Job, int, int, bool], Reporter]


def drain(spec: DrainSpec, reporter_for: ReporterFactory, load: EngineLoader = load_profile_engine) -> DrainReport:
    """Run this inbox's interrupted jobs, then every waiting file (new arrivals included),
    one job at a time on one shared engine. Holds the inbox lock throughout."""
    started = time.monotonic()
    layout = spec.layout
    if not layout.inbox.is_dir():
        raise UsageError(
            f"inbox {layout.inbox} is not a directory",
            hint=f"create it (mkdir -p {layout.inbox}) or pass the directory batch files are put in",
        )
    report = DrainReport(inbox=str(layout.inbox))
    lock = OutputLock(str(layout.inbox), str(layout.lock))
    try:
        lock.acquire()
    except StateError:
        report.busy = read_lock_holder(layout.lock) or {}
        return report
    shared = SharedEngine(load)
    try:
        for job, resumed, total in _queue(spec):
            reporter = reporter_for(job, len(report.jobs) + 1, len(report.jobs) + total, resumed)
            report.jobs.append(_run_job(job, spec, shared, reporter, resumed))
    finally:
        shared.close()
        lock.release()
        report.model_loads = shared.loads
        report.load_seconds = round(shared.load_seconds, 3)
        report.wall_seconds = round(time.monotonic() - started, 3)
    return report


def _queue(spec: DrainSpec) -> Iterator[tuple[Job, bool, int]]:
    """(job, resumed, jobs left including this one): interrupted jobs first, then waiting files,
    each claimed only when its turn comes; the inbox is looked at again until it is empty."""
    layout = spec.layout
    for job in _stranded_failures(layout):
        _move_to_failed(job, layout)
    interrupted = interrupted_jobs(layout)
    for index, job in enumerate(interrupted):
        yield job, True, len(interrupted) - index + len(waiting_files(layout.inbox))
    while waiting := waiting_files(layout.inbox):
        yield claim(waiting[0], layout, spec.profile, spec.labels), False, len(waiting)


def _stranded_failures(layout: InboxLayout) -> list[Job]:
    """Failed jobs a kill left in the outbox between recording the failure and moving them."""
    return [j for j in jobs_in(layout.outbox) if j.record.status == "failed" and j.record.inbox == str(layout.inbox)]


def _run_job(job: Job, spec: DrainSpec, shared: SharedEngine, reporter: Reporter, resumed: bool) -> JobOutcome:
    try:
        _ensure_input(job)
        summary = run_batch(job.run_spec(spec.profile), reporter, load=shared.lend)
    except (EngineError, ProfileError) as err:
        # The model cannot load or the engine died: no job can run. Stop; this one resumes next time.
        job.record.error = _error_fields(err)
        job.save()
        _record_metrics(spec, job, None)
        raise
    except VbatchError as err:
        finish(job, "failed", spec.layout, err)
        _record_metrics(spec, job, None)
        return JobOutcome(job.record.job, job.record.input, "failed", str(job.dir), resumed, error=job.record.error)
    finish(job, "done", spec.layout)
    _record_metrics(spec, job, summary)
    return JobOutcome(
        job.record.job,
        job.record.input,
        "done",
        str(job.dir),
        resumed,
        requests={
            "ok": summary.requests.ok,
            "failed": summary.requests.failed,
            "total": summary.requests.total,
            "resumed": summary.requests.resumed,
        },
        output_tokens_per_s=summary.output_tokens_per_s,
        wall_seconds=summary.wall_seconds,
    )


def _record_metrics(spec: DrainSpec, job: Job, summary: RunSummary | None) -> None:
    """The job's summary (None: it stopped with an error) into the metrics textfile, labelled
    with its input's stem: the same each time a file of that name arrives, where the job's
    directory becomes a-2, a-3, ..., so a daily file updates one set of series."""
    if spec.metrics is None:
        return
    batch = job_name(job.record.input)
    if summary is None:
        spec.metrics.record_failure(batch)
    else:
        spec.metrics.record_success(batch, summary)
