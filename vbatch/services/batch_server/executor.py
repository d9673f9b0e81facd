"""Runs the Batches API's batches on the server's own engine, and finishes them after a restart.

Each batch is `vbatch run`'s pipeline (services.run.run_batch: read, validate, render, plan,
admission, write, the run journal) in a worker thread, on `engines.vllm.served.ServedEngine`:
its requests go to the engine the server's routes use, with a lower priority than interactive
requests, within one KV budget shared by every running batch. So a batch resumes after kill -9
exactly as `vbatch run` does: from the results already on disk, each custom_id once.

Policy (docs/batch-server.md): up to MAX_RUNNING batches run at once, oldest first, sharing the
KV budget (`[batch].kv_budget` of the cache, the rest left to interactive requests), so a small
batch queued behind a huge one starts at once rather than after it. They plan one stream
(`served.SharedAdmission`): a batch that starts joins the others' prefix sweep where it is, and
a request that continues what the engine holds goes before one that does not, so prompts the
batches share are computed once. More batches wait in the catalog, in creation order.

States (OpenAI's): validating -> in_progress -> finalizing -> completed; failed (the file as a
whole is unusable); cancelling -> cancelled; expired (not done within completion_window). Each
change is in the catalog before the work it announces, so a restart picks up where it stopped.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from vbatch.config.profiles import Profile
from vbatch.core.engine_io import Task
from vbatch.core.requests import ENDPOINT_OF_URL, RequestError, parse_request
from vbatch.engines.vllm.served import BatchStopped, ServedEngine, ServerEngineAccess
from vbatch.errors import EngineError, StoppedError, VbatchError
from vbatch.services.reporting import Reporter, RunStats
from vbatch.services.run import RunSpec, run_batch
from vbatch.storage.catalog import BatchRow, Catalog
from vbatch.storage.filestore import FileStore
from vbatch.storage.journal import repair_tail
from vbatch.storage.readers import open_input

log = logging.getLogger("vbatch.batch_server")

#: Batches running at once; the rest wait in creation order.
MAX_RUNNING = 4
#: Seconds between progress writes to the catalog (request counts while a batch runs).
PROGRESS_EVERY_S = 1.0
#: Batch-level errors listed at most (the errors file holds every bad line).
MAX_BATCH_ERRORS = 20
LIVE = ("validating", "in_progress", "finalizing", "cancelling")
ENDPOINTS_OF_TASK: dict[Task, frozenset[str]] = {
    "generate": frozenset({"/v1/chat/completions", "/v1/completions"}),
    "embed": frozenset({"/v1/embeddings"}),
}


class BatchExecutor:
    """The ExecutorHandle of the API: starts, cancels and resumes batches."""

    def __init__(
        self,
        catalog: Catalog,
        store: FileStore,
        work_dir: Path,
        profile: Profile,
        engine: ServerEngineAccess,
        *,
        keep_outputs_s: float = 0.0,
    ):
        self.catalog = catalog
        self.store = store
        self.work_dir = work_dir
        self.profile = profile
        self.engine = engine
        self.model = engine.model_name
        self.endpoints = ENDPOINTS_OF_TASK[engine.task]
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        self._stop_reasons: dict[str, str] = {}
        self._closed = False
        #: Finished batches' files are deleted this long after they were written (0: kept).
        self.keep_outputs_s = keep_outputs_s

    # ------------------------------------------------------------------ ExecutorHandle

    def created(self, batch_id: str) -> None:
        self._schedule()

    def cancel(self, batch_id: str) -> None:
        with self._lock:
            self._stop_reasons[batch_id] = "cancelled"
        self._schedule()  # a batch still waiting its turn is finished at once

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Resume what a previous server left unfinished; from now on, delete expired outputs hourly."""
        self._schedule()
        threading.Thread(target=self._clean_hourly, name="vbatch-retention", daemon=True).start()

    def remove_old_outputs(self) -> int:
        """Delete the output and error files older than keep_outputs_s, and every file past its
        own expires_at that no running batch reads; how many went."""
        now = int(time.time())
        old = set(self.catalog.files_expired(now))
        if self.keep_outputs_s:
            old.update(self.catalog.outputs_older_than(int(now - self.keep_outputs_s)))
        gone = 0
        for file_id in sorted(old):
            if self.catalog.live_batches_using(file_id):
                continue
            self.store.delete(file_id)
            self.catalog.delete_file(file_id)
            gone += 1
        return gone

    def _clean_hourly(self) -> None:
        while not self._closed:
            try:
                self.remove_old_outputs()
            except Exception:  # noqa: BLE001 - retention must never take the server down
                log.exception("could not delete old batch outputs")
            time.sleep(3600)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for batch_id in self._running:
                self._stop_reasons.setdefault(batch_id, "shutdown")

    def _schedule(self) -> None:
        with self._lock:
            if self._closed:
                return
            for row in self.catalog.batches_with_status(*LIVE):
                if row.id in self._running:
                    continue
                waiting_cancel = row.status == "cancelling"
                if len(self._running) >= MAX_RUNNING and not waiting_cancel:
                    continue
                thread = threading.Thread(target=self._work_on, args=(row.id,), name=f"vbatch-{row.id}", daemon=True)
                self._running[row.id] = thread
                thread.start()

    def _work_on(self, batch_id: str) -> None:
        try:
            self._advance(batch_id)
        except Exception:  # noqa: BLE001 - a bug in one batch must not stop the others
            log.exception("batch %s stopped unexpectedly; it resumes when the server restarts", batch_id)
        finally:
            with self._lock:
                self._running.pop(batch_id, None)
                self._stop_reasons.pop(batch_id, None)
            self._schedule()

    # ------------------------------------------------------------------ one batch

    def _advance(self, batch_id: str) -> None:
        row = self.catalog.get_batch(batch_id)
        if row is None:
            return
        if row.status == "validating":
            problems = self._validate(row)
            if problems:
                row = self.catalog.update_batch(batch_id, status="failed", errors=problems, if_status=("validating",))
                if row.status == "failed":
                    return
            else:
                row = self.catalog.update_batch(batch_id, status="in_progress", if_status=("validating",))
        if row.status == "cancelling" or self._stop_reason(row) == "cancelled":
            self._finish(row, "cancelled")
            return
        if row.status == "in_progress":
            if not self._run_requests(row):
                return
            # A cancel that came in as the last request finished wins: the batch ends cancelled.
            row = self.catalog.update_batch(batch_id, status="finalizing", if_status=("in_progress",))
        if row.status in ("finalizing", "cancelling"):
            self._finish(row, "completed" if row.status == "finalizing" else "cancelled")

    def _run_requests(self, row: BatchRow) -> bool:
        """Run the batch's requests; True when all are done, False when it ended otherwise
        (cancelled or expired: finished here; the server stopping: resumed by the next one)."""
        try:
            summary = run_batch(
                self._spec(row), _CatalogProgress(self.catalog, row.id), load=lambda _: self._engine_for(row)
            )
        except BatchStopped as stopped:
            if stopped.reason in ("cancelled", "expired"):
                self._finish(self.catalog.get_batch(row.id) or row, stopped.reason)
            return False
        except (EngineError, StoppedError):
            return False
        except VbatchError as err:
            self.catalog.update_batch(
                row.id,
                status="failed",
                errors=[{"code": "batch_failed", "message": err.message}],
                if_status=("in_progress",),
            )
            return False
        log.info(
            "batch %s: %d ok, %d failed (%d resumed); %.1f s processing, %.0f output tok/s, %.1f%% of prompt tokens cached",
            row.id,
            summary.requests.ok,
            summary.requests.failed,
            summary.requests.resumed,
            summary.processing_seconds,
            summary.output_tokens_per_s,
            100 * summary.prefix_cache_hit_share,
        )
        return True

    def _stop_reason(self, row: BatchRow) -> str | None:
        with self._lock:
            reason = self._stop_reasons.get(row.id)
        if reason is None and row.expires_at is not None and time.time() >= row.expires_at:
            return "expired"
        return reason

    def _engine_for(self, row: BatchRow) -> ServedEngine:
        engine = self.engine
        return ServedEngine(
            engine.client,
            engine.loop,
            model_name=engine.model_name,
            task=engine.task,
            max_model_len=engine.max_model_len,
            tokenizer=engine.new_tokenizer(),
            admission=engine.admission,
            should_stop=lambda: self._stop_reason(row),
        )

    def _paths(self, batch_id: str) -> tuple[Path, Path]:
        work = self.work_dir / batch_id
        return work / "output.jsonl", work / "errors.jsonl"

    def _spec(self, row: BatchRow) -> RunSpec:
        output, errors = self._paths(row.id)
        return RunSpec(
            input=str(self.store.path(row.input_file_id)),
            output=output,
            errors=errors,
            profile=self.profile,
            endpoint=ENDPOINT_OF_URL[row.endpoint],  # type: ignore[index]  # the API checked it
            labels=dict(row.metadata or {}),
            plan_start=self.engine.admission.position,
        )

    def _validate(self, row: BatchRow) -> list[dict[str, Any]]:
        """Batch-level errors when the file as a whole is unusable; none when at least one line
        can run (the bad ones then become records of the errors file)."""
        endpoint = ENDPOINT_OF_URL.get(row.endpoint)
        try:
            source = open_input(str(self.store.path(row.input_file_id)))
            problems: list[dict[str, Any]] = []
            for record in source.records():
                if record.error is not None or record.data is None:
                    problems.append({"code": "invalid_json_line", "line": record.line, "message": record.error})
                    continue
                parsed = parse_request(record.line, record.data)
                if isinstance(parsed, RequestError):
                    problems.append({"code": parsed.code, "line": record.line, "message": parsed.message})
                elif parsed.endpoint != endpoint:
                    problems.append(
                        {
                            "code": "wrong_endpoint",
                            "line": record.line,
                            "message": f"this line is a {parsed.endpoint} request; the batch's endpoint is {row.endpoint}",
                        }
                    )
                else:
                    return []
        except VbatchError as err:
            return [{"code": "invalid_file", "message": err.message}]
        if not problems:
            return [{"code": "empty_file", "message": "the input file has no requests"}]
        head = problems[:MAX_BATCH_ERRORS]
        head.insert(0, {"code": "no_valid_line", "message": f"none of the file's {len(problems)} lines can run"})
        return head

    def _finish(self, row: BatchRow, status: str) -> None:
        """Move the output and error files into the store and end the batch; safe to repeat after
        a crash at any point (the file ids are chosen, and written down, before the move)."""
        output, errors = self._paths(row.id)
        output_id = row.output_file_id or (self.catalog.new_file_id() if _has_lines(output) else None)
        error_id = row.error_file_id or (self.catalog.new_file_id() if _has_lines(errors) else None)
        row = self.catalog.update_batch(row.id, output_file_id=output_id, error_file_id=error_id)
        usage = _Usage()
        for file_id, path, name in ((output_id, output, "output"), (error_id, errors, "errors")):
            if file_id is None:
                continue
            if path.exists():
                repair_tail(str(path))  # a kill mid-write leaves at most half a line
                self.store.adopt(file_id, path)
            usage.read(self.store.path(file_id))
            if self.catalog.get_file(file_id) is None:
                self.catalog.add_file(
                    f"{row.id}_{name}.jsonl",
                    "batch_output",
                    self.store.size(file_id),
                    file_id=file_id,
                    expires_at=row.created_at + row.output_expires_after if row.output_expires_after else None,
                )
        self.catalog.update_batch(
            row.id,
            status=status,
            request_completed=usage.completed,
            request_failed=usage.failed,
            input_tokens=usage.input_tokens,
            cached_tokens=usage.cached_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
        )
        shutil.rmtree(self.work_dir / row.id, ignore_errors=True)


class _CatalogProgress(Reporter):
    """Writes a running batch's request counts and token usage to the catalog, at most once a
    second, so a client (or the web page) sees it move; `_finish` writes the exact totals. The
    run's files are synced first (one fsync each a second at most, as they flush anyway), so a
    count a client saw is never more than the output file holds after a crash."""

    def __init__(self, catalog: Catalog, batch_id: str):
        self.catalog = catalog
        self.batch_id = batch_id
        self._written = 0.0

    def start(self, stats: RunStats) -> None:
        self._write(stats)

    def update(self, stats: RunStats) -> None:
        if time.monotonic() - self._written >= PROGRESS_EVERY_S:
            self._write(stats)

    def stop(self, stats: RunStats) -> None:
        self._write(stats)

    def _write(self, stats: RunStats) -> None:
        self._written = time.monotonic()
        stats.sync()  # a client may rely on what it reads: only what a kill -9 cannot take back
        self.catalog.update_batch(
            self.batch_id,
            request_total=stats.total or 0,
            request_completed=stats.ok,
            request_failed=stats.failed,
            input_tokens=stats.prompt_tokens,
            cached_tokens=stats.cached_tokens,
            output_tokens=stats.completion_tokens,
            reasoning_tokens=stats.reasoning_tokens,
        )


class _Usage:
    """Counts and token usage read back from finished output lines (exact after any resume)."""

    def __init__(self) -> None:
        self.completed = self.failed = 0
        self.input_tokens = self.cached_tokens = self.output_tokens = self.reasoning_tokens = 0

    def read(self, path: Path) -> None:
        with open(path, "rb") as lines:
            for line in lines:
                if not line.strip():
                    continue
                record = orjson.loads(line)
                response = record.get("response")
                if not response:
                    self.failed += 1
                    continue
                self.completed += 1
                usage = (response.get("body") or {}).get("usage") or {}
                self.input_tokens += usage.get("prompt_tokens") or 0
                self.output_tokens += usage.get("completion_tokens") or 0
                self.cached_tokens += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                self.reasoning_tokens += (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0


def _has_lines(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0
