"""Crash safety for one output: an exclusive lock, torn-line repair, resume state, run record.

The results and errors files are the journal: every finished request is one whole line in
one of them, so resuming means reading which requests are already there. A kill can leave
at most a half-written last line, which `repair_tail` cuts off. The run record holds what
the run was started with, so a resume with a changed input or settings is caught.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from vbatch import __version__, processes
from vbatch.errors import StateError, UsageError
from vbatch.storage.writers import write_atomically

_TAIL_CHUNK = 1 << 16


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- Lock ------------------------------------------------------------------------------------


class OutputLock:
    """Exclusive, non-blocking `flock` on `<results>.lock`, holding who holds it.

    The kernel drops a flock when its holder dies, even on kill -9, so a lock file left
    behind never blocks a new run. The file is removed on release while still locked; an
    acquirer that locked a file since removed retries on the new one. The file also records
    the holder's engine processes: an acquirer that finds the record of a dead holder stops
    those still running, before its own run loads a model.
    """

    def __init__(self, results_path: str, lock_path: str | None = None):
        self.results_path = results_path
        self.lock_path = lock_path or f"{results_path}.lock"
        self._fd: int | None = None
        self._info: dict[str, Any] = {}

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UsageError(
                    f"cannot create the lock file {self.lock_path}: {e.strerror}",
                    hint="check that the output directory exists and is writable",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise StateError(
                    f"{self.results_path} is being written by another vbatch run ({holder})",
                    hint="wait for it to finish, or write to another -o",
                ) from None
            if _same_file(fd, self.lock_path):
                break
            os.close(fd)  # the previous holder removed this file after we opened it
        self._fd = fd
        previous = _holder_info(fd)  # left by a holder that died: one that finished removed the file
        me = processes.Proc.of(os.getpid())
        self._info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _now(),
            "command": " ".join(sys.argv),
            "start": me.start if me else None,
            "boot": processes.boot_id(),
        }
        self._write_info()
        _HELD.add(self)
        processes.listen(self._write_info)
        processes.stop_leftovers(previous, self.results_path)

    def _write_info(self) -> None:
        """Who holds the lock, with their engine's processes as (pid, start time) pairs."""
        if self._fd is None:
            return
        engine = [[proc.pid, proc.start] for proc in processes.engine_processes()]
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, orjson.dumps({**self._info, "engine": engine}) + b"\n", 0)

    def release(self) -> None:
        if self._fd is None:
            return
        processes.unlisten(self._write_info)
        _HELD.discard(self)
        try:
            os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None


#: The locks this process holds.
_HELD: set[OutputLock] = set()


def _drop_locks_in_child() -> None:
    """A forked child (vLLM starts its engine with fork by default) closes its copies of the
    lock files: an engine that outlived a killed run would otherwise keep its output locked,
    and the next run could not stop it. The parent's flocks stay (they end at the last close)."""
    for lock in _HELD:
        if lock._fd is not None:
            os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


def read_lock_holder(path: Path) -> dict[str, Any] | None:
    """What an OutputLock file says about its holder (pid, host, started, command, engine), or None."""
    try:
        return _parse_holder(path.read_bytes())
    except OSError:
        return None


def _holder_info(fd: int) -> dict[str, Any] | None:
    try:
        return _parse_holder(os.pread(fd, 1 << 16, 0))
    except OSError:
        return None


def _parse_holder(data: bytes) -> dict[str, Any] | None:
    try:
        holder = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_holder(fd: int) -> str:
    info = _holder_info(fd)
    try:
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (KeyError, TypeError):
        return "it is just starting"  # locked, but the holder has not written its info yet


# --- Resume state ----------------------------------------------------------------------------


def repair_tail(path: str) -> int:
    """Cut a half-written last line (left by a kill) so the file ends on a whole line.

    Returns the bytes dropped (0 for a missing or intact file). Reads backwards from the end,
    so it costs the same on a multi-GB file.
    """
    try:
        file = open(path, "r+b")
    except FileNotFoundError:
        return 0
    with file:
        size = file.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            file.seek(start)
            chunk = file.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return 0
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        file.truncate(end)
        file.flush()
        os.fsync(file.fileno())
        return size - end


@dataclass(slots=True)
class DoneSet:
    """What an interrupted run already finished: skip these on resume."""

    result_ids: set[str] = field(default_factory=set)
    error_lines: set[int] = field(default_factory=set)
    ok: int = 0
    failed: int = 0


def scan_done(results_path: str, errors_path: str) -> DoneSet:
    """Read back the results (by custom_id) and errors (by input line) written so far."""
    done = DoneSet()
    for record in _whole_records(results_path):
        if record.get("custom_id") is not None:
            done.result_ids.add(record["custom_id"])
        done.ok += 1
    for record in _whole_records(errors_path):
        if record.get("line") is not None:
            done.error_lines.add(record["line"])
        done.failed += 1
    return done


def _whole_records(path: str) -> Iterator[dict]:
    repair_tail(path)
    try:
        file = open(path, "rb", buffering=1 << 20)
    except FileNotFoundError:
        return
    with file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise StateError(
                    f"{path} line {number} is not valid JSON ({e.msg}); it was not written by vbatch",
                    hint="fix or delete that line, or pass --restart to start over",
                ) from None
            if type(record) is dict:
                yield record


# --- Manifest --------------------------------------------------------------------------------


@dataclass(slots=True)
class InputFingerprint:
    """The input a run read; size and digest are None for stdin, which cannot be scanned."""

    path: str
    size: int | None = None
    digest: str | None = None
    count: int | None = None


@dataclass(slots=True)
class RunRecord:
    """What a run was started with, written next to its outputs to check a resume against."""

    input: InputFingerprint
    #: JSON-able fingerprint of model, engine arguments and sampling, chosen by the caller.
    settings: dict[str, Any]
    #: Output paths by role, e.g. {"results": ..., "errors": ...}.
    outputs: dict[str, str]
    status: Literal["running", "complete"] = "running"
    version: str = __version__
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)


def write_run_record(path: str, record: RunRecord) -> None:
    """Stamp `updated` and replace the run record atomically and durably."""
    record.updated = _now()
    write_atomically(Path(path), orjson.dumps(dataclasses.asdict(record), option=orjson.OPT_INDENT_2) + b"\n")


def read_run_record(path: str) -> RunRecord | None:
    """The record at `path`, or None if there is none; unknown keys are ignored."""
    try:
        with open(path, "rb") as file:
            raw = orjson.loads(file.read())
        known = {f.name for f in dataclasses.fields(RunRecord)} - {"input"}
        record = RunRecord(
            input=InputFingerprint(**raw["input"]),
            **{key: value for key, value in raw.items() if key in known},
        )
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise StateError(
            f"run record {path} is unreadable ({e})",
            hint="pass --restart to start over",
        ) from None
    return record


def run_record_differences(old: RunRecord, new: RunRecord) -> list[str]:
    """Sentences naming what changed since the interrupted run; empty means the same run.

    Compares the input content (size and digest; the path only where there is no digest)
    and every setting. Version, status, timestamps and output paths are not compared.
    """
    differences = []
    before, after = old.input, new.input
    if before.digest is None or after.digest is None:
        if before.path != after.path or before.digest != after.digest:
            differences.append(f"input changed: {before.path} → {after.path}, content cannot be compared")
    elif before.digest != after.digest:
        if before.size != after.size:
            sizes = f"{before.size} → {after.size} bytes"
        else:
            sizes = f"same size ({after.size} bytes)"
        differences.append(f"input file changed: {sizes}, content digest differs")
    _diff_settings("settings", old.settings, new.settings, differences)
    return differences


_UNSET = object()


def _diff_settings(prefix: str, old: Any, new: Any, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(key for key in new if key not in old)]:
            _diff_settings(f"{prefix}.{key}", old.get(key, _UNSET), new.get(key, _UNSET), out)
    elif old != new:
        out.append(f"{prefix}: {_show(old)} → {_show(new)}")


def _show(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
