"""The services of `vbatch submit` and `vbatch batches download`: send a batch file to a batch
API, follow a batch to its end on a progress display (counts, tokens/s, ETA), download its files.
The other `vbatch batches` commands are one `BatchApi` call each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vbatch.client.api import FINISHED_STATES, BatchApi
from vbatch.client.connection import Server
from vbatch.client.endpoints import endpoint_of_file, endpoint_url
from vbatch.errors import ExitCode, StoppedError, UsageError
from vbatch.services.reporting import Reporter, RunStats
from vbatch.storage.outputs import default_errors, default_output

#: Seconds between two looks at a batch while waiting for it.
POLL_SECONDS = 2.0


@dataclass
class SubmitSpec:
    input: Path
    server: Server
    #: chat, completions, embeddings or a URL; None: the one the file's first line asks for.
    endpoint: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    #: Follow the batch to its end and download its files (else: create it and return).
    wait: bool = False
    #: The results file when waiting. Default: INPUT's stem + .results.jsonl; errors beside it.
    output: Path | None = None
    interval: float = POLL_SECONDS


@dataclass
class Downloaded:
    """A batch, and where its files were written (None: not downloaded, or the batch has none)."""

    batch: Any
    results: str | Path | None = None
    errors: str | Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch.to_dict(),
            "results": None if self.results is None else str(self.results),
            "errors": None if self.errors is None else str(self.errors),
        }


def submit_file(spec: SubmitSpec, reporter: Reporter) -> Downloaded:
    """Upload the file and create its batch; with `spec.wait`, follow it and download its files."""
    api = BatchApi.of(spec.server)
    endpoint = endpoint_url(spec.endpoint) if spec.endpoint else endpoint_of_file(spec.input)
    batch = api.create(spec.input, endpoint, spec.metadata or None)
    if not spec.wait:
        return Downloaded(batch)
    reporter.phase(f"created batch {batch.id} on {api.base_url}")
    output = spec.output or default_output(str(spec.input))
    return follow_and_download(api, batch.id, output, reporter, spec.interval)


def download(
    server: Server, batch_id: str, output: Path | None, reporter: Reporter, wait: bool, interval: float = POLL_SECONDS
) -> Downloaded:
    """Download a batch's files (to OUT, default <id>.results.jsonl, and the errors beside it);
    with `wait`, follow it to its end first."""
    api = BatchApi.of(server)
    output = output or Path(f"{batch_id}.results.jsonl")
    if wait:
        return follow_and_download(api, batch_id, output, reporter, interval)
    batch = api.retrieve(batch_id)
    if batch.status not in FINISHED_STATES:
        raise UsageError(
            f"batch {batch_id} is {batch.status}: its files are written when it ends",
            hint=f"wait for it with `vbatch batches download {batch_id} --wait`",
        )
    return Downloaded(batch, *api.download(batch, output, default_errors(output)))


def follow_and_download(api: BatchApi, batch_id: str, output: Path, reporter: Reporter, interval: float) -> Downloaded:
    batch = follow(api, batch_id, reporter, interval)
    return Downloaded(batch, *api.download(batch, output, default_errors(output)))


def follow(api: BatchApi, batch_id: str, reporter: Reporter, interval: float) -> Any:
    """Look at the batch every `interval` seconds until it ends, showing its status changes and
    its progress; Ctrl-C stops the waiting, never the batch."""
    stats = RunStats()
    shown_status = None
    started = False
    try:
        while True:
            batch = api.retrieve(batch_id)
            if batch.status != shown_status:
                shown_status = batch.status
                reporter.phase(f"batch {batch_id}: {batch.status}")
            _count(stats, batch)
            if started:
                reporter.update(stats)
            elif batch.status != "validating":  # the number of requests is known from here on
                reporter.start(stats)
                started = True
            if batch.status in FINISHED_STATES:
                return batch
            time.sleep(interval)
    except KeyboardInterrupt:
        raise StoppedError(
            f"stopped waiting; batch {batch_id} goes on at {api.base_url}: "
            f"`vbatch batches download {batch_id} --wait` waits again",
            ExitCode.INTERRUPTED,
        ) from None
    finally:
        if started:
            reporter.stop(stats)


def _count(stats: RunStats, batch: Any) -> None:
    """The batch's counters in the terms of a run's progress display."""
    if batch.request_counts is not None:
        stats.total = batch.request_counts.total or None
        stats.ok, stats.failed = batch.request_counts.completed, batch.request_counts.failed
    if batch.usage is not None:
        stats.prompt_tokens, stats.completion_tokens = batch.usage.input_tokens, batch.usage.output_tokens
        details = batch.usage.input_tokens_details
        stats.cached_tokens = (details.cached_tokens or 0) if details is not None else 0
    if batch.in_progress_at and stats.processing_started is None:
        stats.processing_started = time.monotonic() - max(time.time() - batch.in_progress_at, 0.0)
