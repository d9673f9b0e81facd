"""Stream input records from JSONL, gzipped JSONL, Parquet or stdin, one format downstream.

Every source yields `InputRecord`s: the 1-based line (JSONL) or row (Parquet) number and
either the parsed JSON object or a short, actionable error. Bad lines never stop the stream;
the pipeline turns them into records of the errors file. Files are streamed, never read
whole, so inputs larger than memory work.

Which reader: `-` is stdin (JSONL), `*.gz` is gzipped JSONL, `*.parquet` is Parquet, anything
else is JSONL.

JSONL: one JSON object per line, UTF-8, optional BOM at the start, LF or CRLF endings.
Blank lines are skipped but still counted, so line numbers match your editor.

Parquet columns map to the same objects a JSONL line would hold:

* With a `body` column (a JSON string, or a struct) that is not null in a row, the row is a
  full Batch API request: `{"custom_id", "method", "url", "body"}`. `method` defaults to
  "POST"; other columns are ignored.
* Otherwise the row is a shorthand request: every non-null column becomes a key, e.g.
  `custom_id`, `messages` (list<struct<role: string, content: string>>), `prompt`, `input`,
  `max_tokens`, `temperature`, ...

Null values are dropped everywhere, including inside structs, so an absent value and a null
one mean the same thing.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import itertools
import os
import re
import sys
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from vbatch.errors import DiskFullError, InputError, is_no_space

_BOM = b"\xef\xbb\xbf"
_SCAN_CHUNK = 1 << 20
_PARQUET_BATCH_ROWS = 8192
#: A line holding only whitespace (the bytes `bytes.strip()` removes), preceded by its "\n".
_BLANK_LINE_AFTER_NEWLINE = re.compile(rb"\n[ \t\r\x0b\x0c]*(?=\n)")
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
_NOT_AN_OBJECT = "line is {kind}, not an object: each line must be one JSON object"


@dataclass(slots=True)
class InputRecord:
    """One request line: exactly one of `data` (the parsed object) and `error` is set."""

    line: int
    data: dict | None
    error: str | None


@dataclass(slots=True)
class InputScan:
    """What one cheap pass over an input tells: requests to expect and a content fingerprint."""

    count: int
    size: int
    digest: str


class InputSource(ABC):
    """An input that can be streamed (`records`) and, unless it is stdin, scanned first."""

    path: str

    @abstractmethod
    def records(self) -> Iterator[InputRecord]:
        """Stream every non-blank line (row) in order, bad ones as records with `error` set."""

    @abstractmethod
    def scan(self) -> InputScan | None:
        """Count, size and digest in one pass; None where the input cannot be read twice."""


def open_input(path: str) -> InputSource:
    """Pick the reader for `path`; raise InputError now if the file cannot be read."""
    if path == "-":
        return _StdinSource()
    _check_readable(path)
    if path.endswith(".parquet"):
        return _ParquetSource(path)
    if path.endswith(".gz"):
        return _GzipJsonlSource(path)
    return _JsonlSource(path)


def copy_stdin(path: str) -> None:
    """Copy stdin to `path` as it streams in (tmp file, fsync, rename), in bounded memory.

    Stdin can be read only once, so a run cannot scan it for a count and a digest, nor tell on
    resume whether it was fed the same content. A copy on disk can be scanned like a file, and
    its digest is what a resume compares. A disk that fills up raises DiskFullError."""
    tmp = f"{path}.partial"
    try:
        with open(tmp, "wb") as copy:
            while chunk := sys.stdin.buffer.read(_SCAN_CHUNK):
                copy.write(chunk)
            copy.flush()
            os.fsync(copy.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_no_space(e):
            raise DiskFullError.writing(path) from None
        raise InputError(f"reading stdin into {path} failed: {e}", hint="check the disk") from None
    os.replace(tmp, path)


def _check_readable(path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise InputError(f"input {path} is a directory", hint="pass a .jsonl, .jsonl.gz or .parquet file") from None
    except OSError as e:
        raise InputError(f"cannot read input file {path}: {e.strerror}", hint="check its permissions") from None


# --- JSONL -----------------------------------------------------------------------------------


def _parse_jsonl_lines(lines: Iterator[bytes]) -> Iterator[InputRecord]:
    """Parse raw lines (endings included) into records; blank lines are skipped but numbered."""
    first = next(lines, None)
    if first is None:
        return
    # The hot loop: one orjson.loads per line, which also validates UTF-8; what went wrong is
    # worked out only for a line that fails.
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    for number, line in enumerate(itertools.chain((first.removeprefix(_BOM),), lines), 1):
        try:
            data = loads(line)
        except decode_error as e:
            if line.strip():
                yield InputRecord(number, None, _describe_bad_line(line, e))
            continue
        if type(data) is dict:
            yield InputRecord(number, data, None)
        else:
            kind = _JSON_KINDS.get(type(data), "null")
            yield InputRecord(number, None, _NOT_AN_OBJECT.format(kind=kind))


def _describe_bad_line(line: bytes, error: orjson.JSONDecodeError) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        column = len(line[: e.start].decode("utf-8")) + 1
        return f"line is not valid UTF-8 (byte 0x{line[e.start]:02x} at column {column}): save the file as UTF-8"
    return f"invalid JSON ({error.msg} at column {error.colno}): each line must be one JSON object"


class _JsonlSource(InputSource):
    def __init__(self, path: str):
        self.path = path

    def _open(self) -> BinaryIO:
        return open(self.path, "rb", buffering=1 << 20)

    def records(self) -> Iterator[InputRecord]:
        with self._open() as stream:
            yield from _records_or_input_error(self.path, stream)

    def scan(self) -> InputScan | None:
        with open(self.path, "rb", buffering=0) as raw:
            hashing = _HashingReader(raw)
            count = _count_nonblank_lines(self._decoded(hashing))
            hashing.drain()
            return InputScan(count=count, size=hashing.size, digest=hashing.hexdigest())

    def _decoded(self, raw: io.RawIOBase) -> BinaryIO:
        return raw


class _GzipJsonlSource(_JsonlSource):
    def _open(self) -> BinaryIO:
        return io.BufferedReader(gzip.GzipFile(self.path, "rb"), buffer_size=1 << 20)

    def _decoded(self, raw: io.RawIOBase) -> BinaryIO:
        return gzip.GzipFile(fileobj=raw, mode="rb")

    def scan(self) -> InputScan | None:
        try:
            return super().scan()
        except (OSError, EOFError, zlib.error) as e:
            raise _corrupt_gzip(self.path, e) from None


class _StdinSource(InputSource):
    path = "-"

    def records(self) -> Iterator[InputRecord]:
        yield from _records_or_input_error("stdin", sys.stdin.buffer)

    def scan(self) -> InputScan | None:
        return None  # stdin cannot be read twice


def _records_or_input_error(name: str, stream: BinaryIO) -> Iterator[InputRecord]:
    try:
        yield from _parse_jsonl_lines(iter(stream))
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt_gzip(name, e) from None
    except OSError as e:
        raise InputError(f"reading {name} failed: {e}", hint="check the file and the disk") from None


def _corrupt_gzip(name: str, error: Exception) -> InputError:
    return InputError(
        f"{name} is not a valid gzip file or is truncated ({error})",
        hint="re-create the .gz file, or decompress it and pass the .jsonl",
    )


class _HashingReader(io.RawIOBase):
    """Pass bytes through while hashing them, so one read both digests and counts."""

    def __init__(self, raw: io.RawIOBase):
        self._raw = raw
        self._hash = hashlib.blake2b(digest_size=16)
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self._hash.update(memoryview(buffer)[:n])
            self.size += n
        return n

    def drain(self) -> None:
        """Hash what the decoder left unread (gzip trailers, trailing bytes)."""
        while self.read(_SCAN_CHUNK):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _count_nonblank_lines(stream: BinaryIO) -> int:
    """Count the lines `_parse_jsonl_lines` yields a record for, chunk by chunk in C."""
    head = b""
    while len(head) < len(_BOM) and (more := stream.read(_SCAN_CHUNK)):
        head += more
    count = 0
    pending = b"\n"  # each line is kept with the "\n" before it, the first with a made-up one
    rest = iter(lambda: stream.read(_SCAN_CHUNK), b"")
    for chunk in itertools.chain((head.removeprefix(_BOM),), rest):
        data = pending + chunk
        end = data.rfind(b"\n") + 1  # never 0: data starts with "\n"
        blank = len(_BLANK_LINE_AFTER_NEWLINE.findall(data, 0, end))
        count += data.count(b"\n", 1, end) - blank
        pending = data[end - 1 :]
    if pending[1:].strip():
        count += 1
    return count


def _file_digest(path: str) -> tuple[int, str]:
    with open(path, "rb", buffering=0) as raw:
        hashing = _HashingReader(raw)
        hashing.drain()
        return hashing.size, hashing.hexdigest()


# --- Parquet ---------------------------------------------------------------------------------


class _ParquetSource(InputSource):
    def __init__(self, path: str):
        self.path = path
        with self._open() as parquet_file:  # reads only the footer: a non-Parquet file fails now
            self._has_body = "body" in parquet_file.schema_arrow.names

    def _open(self) -> Any:
        import pyarrow
        import pyarrow.parquet

        try:
            return pyarrow.parquet.ParquetFile(self.path)
        except (pyarrow.ArrowException, OSError) as e:
            raise InputError(
                f"{self.path} is not a readable Parquet file ({e})",
                hint="check the file; name JSONL inputs *.jsonl",
            ) from None

    def scan(self) -> InputScan | None:
        with self._open() as parquet_file:
            count = parquet_file.metadata.num_rows
        size, digest = _file_digest(self.path)
        return InputScan(count=count, size=size, digest=digest)

    def records(self) -> Iterator[InputRecord]:
        import pyarrow

        number = 0
        with self._open() as parquet_file:
            try:
                for batch in parquet_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                    with_inner_nulls = {
                        name for name, column in zip(batch.schema.names, batch.columns) if _has_inner_nulls(column)
                    }
                    for row in batch.to_pylist():
                        number += 1
                        yield self._record(number, row, with_inner_nulls)
            except (pyarrow.ArrowException, OSError) as e:
                raise InputError(
                    f"reading {self.path} failed after row {number} ({e})",
                    hint="the Parquet file is damaged; re-create it",
                ) from None

    def _record(self, number: int, row: dict[str, Any], with_inner_nulls: set[str]) -> InputRecord:
        if self._has_body and row["body"] is not None:
            return _body_row(number, row)
        data = {
            key: _drop_nulls(value) if key in with_inner_nulls else value
            for key, value in row.items()
            if value is not None
        }
        return InputRecord(number, data, None)


def _body_row(number: int, row: dict[str, Any]) -> InputRecord:
    body = row["body"]
    if isinstance(body, (str, bytes)):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return InputRecord(number, None, f"body is not valid JSON ({e.msg} at column {e.colno})")
    else:
        body = _drop_nulls(body)
    data: dict[str, Any] = {}
    if row.get("custom_id") is not None:
        data["custom_id"] = row["custom_id"]
    data["method"] = row.get("method") or "POST"
    if row.get("url") is not None:
        data["url"] = row["url"]
    data["body"] = body
    return InputRecord(number, data, None)


def _has_inner_nulls(column: Any) -> bool:
    """Whether a struct or list column holds nulls inside its values (only those need dropping)."""
    import pyarrow

    kind = column.type
    if pyarrow.types.is_struct(kind):
        children = column.flatten()
    elif pyarrow.types.is_list(kind) or pyarrow.types.is_large_list(kind) or pyarrow.types.is_fixed_size_list(kind):
        children = [column.flatten()]
    else:
        return False
    return any(child.null_count or _has_inner_nulls(child) for child in children)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_nulls(item) for item in value]
    return value
