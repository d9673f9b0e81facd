"""Write results: durable grouped appends to JSONL, and a streamed JSONL → Parquet export.

Appends are buffered in small groups and each group goes to disk in one write followed by
fsync, so a kill or a power loss loses at most the last group and can tear at most the last
line, which `vbatch.storage.journal.repair_tail` cuts off on resume. A full disk tears nothing: the
file is cut back to its last whole record before the error is raised.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from vbatch.errors import DiskFullError, StateError, is_no_space

_PARQUET_SCHEMA_FIELDS = (
    ("id", "string"),
    ("custom_id", "string"),
    ("status_code", "int32"),
    ("request_id", "string"),
    ("body", "string"),
    ("error", "string"),
    ("line", "int64"),
)


class JsonlAppender:
    """Append records as whole JSON lines, flushed and fsynced every few records or seconds.

    The time limit is checked on `append`; call `flush` yourself when records may stop
    arriving for a while.
    """

    def __init__(self, path: str, *, flush_every: int = 64, flush_seconds: float = 1.0):
        self.path = path
        self.count = 0
        self._file = open(path, "ab", buffering=0)
        #: Bytes known to be whole records: where a failed write is cut back to.
        self._whole_size = os.fstat(self._file.fileno()).st_size
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._pending: list[bytes] = []
        self._last_flush = time.monotonic()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def append(self, record: dict[str, Any]) -> None:
        self._pending.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self.count += 1
        if len(self._pending) >= self._flush_every or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines in one write call, then fsync.

        On a full disk the file is truncated back to its last whole record, the group is
        dropped (a resume runs those requests again) and DiskFullError names the file."""
        if self._pending:
            group = b"".join(self._pending)
            self._pending.clear()
            try:
                unwritten = memoryview(group)
                while unwritten:  # a regular file takes it all at once; this guards short writes
                    unwritten = unwritten[self._file.write(unwritten) :]
                os.fsync(self._file.fileno())
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                self._file.truncate(self._whole_size)
                raise DiskFullError.writing(self.path) from None
            self._whole_size += len(group)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self.flush()
        finally:
            self._file.close()


def jsonl_to_parquet(jsonl_path: str, parquet_path: str, batch_rows: int = 10_000) -> None:
    """Convert a results or errors file to Parquet with flat columns, in bounded memory.

    Columns: id, custom_id, status_code, request_id, body (JSON string), error (JSON string),
    line (input line number, null for results). Written to a tmp file, then renamed.
    """
    import pyarrow
    import pyarrow.parquet

    schema = pyarrow.schema([(name, type_name) for name, type_name in _PARQUET_SCHEMA_FIELDS])
    tmp = f"{parquet_path}.tmp"
    try:
        with (
            open(jsonl_path, "rb", buffering=1 << 20) as source,
            pyarrow.parquet.ParquetWriter(tmp, schema, compression="zstd") as writer,
        ):
            columns: dict[str, list] = {name: [] for name in schema.names}
            for number, line in enumerate(source, 1):
                if not line.strip():
                    continue
                _add_row(columns, _load_output_line(jsonl_path, number, line))
                if len(columns["id"]) >= batch_rows:
                    writer.write_batch(pyarrow.record_batch(columns, schema=schema))
                    columns = {name: [] for name in schema.names}
            if columns["id"]:
                writer.write_batch(pyarrow.record_batch(columns, schema=schema))
        os.replace(tmp, parquet_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _load_output_line(path: str, number: int, line: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = None
    if type(record) is not dict:
        raise StateError(
            f"{path} line {number} is not a JSON object; it was not written by vbatch",
            hint="fix or delete that line, then convert again",
        )
    return record


def _add_row(columns: dict[str, list], record: dict[str, Any]) -> None:
    response = record.get("response") or {}
    error = record.get("error")
    columns["id"].append(record.get("id"))
    columns["custom_id"].append(record.get("custom_id"))
    columns["status_code"].append(response.get("status_code"))
    columns["request_id"].append(response.get("request_id"))
    columns["body"].append(_json_or_null(response.get("body")))
    columns["error"].append(_json_or_null(error))
    columns["line"].append(record.get("line"))


def _json_or_null(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def write_atomically(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data` all at once, durably: a reader, a crash or a power loss never
    sees half a file (the data and the rename are fsynced). The one writer of whole files:
    summaries, run records, job labels, bench reports, systemd units (`mode` sets permissions)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if mode is not None:
            tmp.chmod(mode)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_no_space(exc):
            raise DiskFullError.writing(str(path)) from None
        raise
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself survive a power loss
    finally:
        os.close(directory)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """A JSON document (summary, labels) written as write_atomically writes."""
    write_atomically(path, orjson.dumps(data, option=orjson.OPT_INDENT_2))
