"""The batch server's catalog: uploaded files and batches in one SQLite database.

The database is in WAL mode, so readers (the HTTP routes) never wait on the executor's writes.
Every commit outlives a kill -9: with WAL it is in the OS page cache before the call returns.
`synchronous=NORMAL` is the default, so the counter updates the executor makes as requests finish
cost no fsync; a power loss may lose the last of those, which a resumed batch recounts. What a
client was told about (a file id, a batch created, cancelled or finished, an output file named)
commits with `synchronous=FULL`: that fsync also makes every earlier commit durable.

One connection behind a lock serves every thread: calls are short, and a single writer in this
process means a read-modify-write (`update_batch`) cannot interleave with another.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict

from vbatch.errors import StateError

#: OpenAI's batch statuses.
BATCH_STATUSES = frozenset(
    {"validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"}
)
#: Statuses of a batch that still reads its input file.
LIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24  # 62**24 is about 2**143: ids cannot be guessed
#: What a file id looks like; the file store refuses any other name.
FILE_ID = re.compile(rf"file-[{_ID_ALPHABET}]{{{_ID_LENGTH}}}")
BATCH_ID = re.compile(rf"batch_[{_ID_ALPHABET}]{{{_ID_LENGTH}}}")

#: Milliseconds a connection waits for another process's write lock (a `vbatch` command reading).
BUSY_TIMEOUT_MS = 10_000

#: Schema version n is reached by running _MIGRATIONS[n - 1]; PRAGMA user_version holds n.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE files (
            id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
            created_at INTEGER NOT NULL, expires_at INTEGER)""",
        "CREATE INDEX files_order ON files (created_at, id)",
        """CREATE TABLE batches (
            id TEXT PRIMARY KEY, input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL,
            completion_window TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
            expires_at INTEGER, in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER,
            failed_at INTEGER, expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER,
            output_file_id TEXT, error_file_id TEXT,
            request_total INTEGER NOT NULL DEFAULT 0, request_completed INTEGER NOT NULL DEFAULT 0,
            request_failed INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
            metadata TEXT, errors TEXT, model TEXT, output_expires_after INTEGER)""",
        "CREATE INDEX batches_order ON batches (created_at, id)",
        "CREATE INDEX batches_status ON batches (status)",
        "CREATE INDEX batches_input ON batches (input_file_id)",
    ),
    # 2: the output tokens gpt-oss spent reasoning (usage.output_tokens_details.reasoning_tokens)
    ("ALTER TABLE batches ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0",),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class FileRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None = None


class BatchRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: str
    created_at: int
    expires_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_total: int = 0
    request_completed: int = 0
    request_failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    #: Of output_tokens: spent in a reasoning model's analysis channel.
    reasoning_tokens: int = 0
    metadata: dict[str, str] | None = None
    #: Batch-level errors: [{"code", "message", "line"?, "param"?}].
    errors: list[dict[str, Any]] | None = None
    model: str | None = None
    #: Seconds after their creation that the output and error files expire (the client's
    #: output_expires_after); None: they are kept until retention removes them.
    output_expires_after: int | None = None


_JSON_COLUMNS = ("metadata", "errors")
#: Fields whose change a client sees as a new state: committed with synchronous=FULL.
_DURABLE_FIELDS = frozenset({"status", "output_file_id", "error_file_id", "errors"})
_Row = TypeVar("_Row", FileRow, BatchRow)


def _now() -> int:
    return int(time.time())


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


class Catalog:
    """The files and batches of one batch server, in the SQLite database at `path`."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":  # e.g. a network file system without shared memory
            self._db.close()
            raise StateError(
                f"the batch catalog {path} cannot use SQLite's WAL mode (got {mode!r})",
                hint="put the batch server's state on a local disk",
            )
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._migrate(path)

    def _migrate(self, path: Path) -> None:
        try:
            with self._transaction(durable=True):  # the version is read under the write lock: one migrator
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StateError(
                        f"the batch catalog {path} has schema version {version}; this vbatch knows up to "
                        f"{SCHEMA_VERSION}",
                        hint="run the newer vbatch that wrote it, or point the server at another state directory",
                    )
                for statements in _MIGRATIONS[version:]:
                    for statement in statements:
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writes ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, durable: bool) -> Iterator[None]:
        """One write transaction under the lock; `durable` commits it with synchronous=FULL."""
        with self._lock:
            if durable:
                self._db.execute("PRAGMA synchronous = FULL")  # refused inside a transaction: set first
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous = NORMAL")

    def _insert(self, table: str, row: BaseModel) -> None:
        values = _encode(row.model_dump())
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        with self._transaction(durable=True):
            self._db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(values.values()))

    # --- files ----------------------------------------------------------------------------

    def new_file_id(self) -> str:
        """A fresh file id, so the file store can write the bytes under it before `add_file`."""
        return _new_id("file-")

    def add_file(
        self, filename: str, purpose: str, size: int, *, file_id: str | None = None, expires_at: int | None = None
    ) -> FileRow:
        if file_id is not None and not FILE_ID.fullmatch(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        row = FileRow(
            id=file_id or self.new_file_id(),
            filename=filename,
            purpose=purpose,
            bytes=size,
            created_at=_now(),
            expires_at=expires_at,
        )
        self._insert("files", row)
        return row

    def get_file(self, file_id: str) -> FileRow | None:
        return self._get("files", FileRow, file_id)

    def list_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int = 10000, order: str = "desc"
    ) -> tuple[list[FileRow], bool]:
        """One page of files, newest first unless order="asc", and whether more follow."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
        where = [("purpose = ?", purpose)] if purpose is not None else []
        return self._page("files", FileRow, where, after, limit, descending=order == "desc")

    def delete_file(self, file_id: str) -> bool:
        """Forget the file; False if there was none. The caller removes its bytes from the store."""
        with self._transaction(durable=True):
            deleted = self._db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        return deleted

    def outputs_older_than(self, cutoff: int) -> list[str]:
        """Ids of the output and error files of batches created before `cutoff` (for retention)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM files WHERE purpose = 'batch_output' AND created_at < ? ORDER BY created_at, id",
                (cutoff,),
            ).fetchall()
        return [row[0] for row in rows]

    def files_expired(self, now: int) -> list[str]:
        """Ids of files whose own expires_at (an upload's expires_after, a batch's
        output_expires_after) has passed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at, id",
                (now,),
            ).fetchall()
        return [row[0] for row in rows]

    # --- batches --------------------------------------------------------------------------

    def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        *,
        metadata: dict[str, str] | None,
        expires_at: int,
        model: str | None,
        output_expires_after: int | None = None,
    ) -> BatchRow:
        """A new batch in status "validating"."""
        row = BatchRow(
            id=_new_id("batch_"),
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            status="validating",
            created_at=_now(),
            expires_at=expires_at,
            metadata=metadata,
            model=model,
            output_expires_after=output_expires_after,
        )
        self._insert("batches", row)
        return row

    def get_batch(self, batch_id: str) -> BatchRow | None:
        return self._get("batches", BatchRow, batch_id)

    def list_batches(self, *, after: str | None = None, limit: int = 20) -> tuple[list[BatchRow], bool]:
        """One page of batches, newest first, and whether more follow."""
        return self._page("batches", BatchRow, [], after, limit, descending=True)

    def update_batch(self, batch_id: str, *, if_status: Collection[str] | None = None, **fields: Any) -> BatchRow:
        """Set any BatchRow fields but the id and return the row as stored.

        A new `status` also stamps its `<status>_at` with now unless that is already set (or
        given). With `if_status`, nothing changes unless the batch is in one of those statuses:
        compare the returned status to tell (how a cancel avoids overwriting a batch that has just
        finished). KeyError if there is no such batch.
        """
        unknown = set(fields) - (set(BatchRow.model_fields) - {"id"})
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} on a batch")
        status = fields.get("status")
        if status is not None and status not in BATCH_STATUSES:
            raise ValueError(f"not a batch status: {status!r}")
        with self._transaction(durable=bool(_DURABLE_FIELDS & set(fields))):
            found = self._db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if found is None:
                raise KeyError(batch_id)
            current = _decode(BatchRow, found)
            if if_status is not None and current.status not in if_status:
                return current
            changes = dict(fields)
            stamp = f"{status}_at"
            if status is not None and stamp in BatchRow.model_fields and getattr(current, stamp) is None:
                changes.setdefault(stamp, _now())
            updated = BatchRow.model_validate(current.model_dump() | changes)  # type-checks the changes
            values = _encode(updated.model_dump(include=set(changes)))
            if values:
                assignments = ", ".join(f"{name} = ?" for name in values)
                self._db.execute(f"UPDATE batches SET {assignments} WHERE id = ?", (*values.values(), batch_id))
        return updated

    def batches_with_status(self, *statuses: str) -> list[BatchRow]:
        """Batches in any of `statuses`, oldest first (the order a restarted executor resumes them)."""
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY created_at, rowid", statuses
            ).fetchall()
        return [_decode(BatchRow, row) for row in rows]

    def live_batches_using(self, file_id: str) -> list[str]:
        """Ids of the batches not yet finished whose input is `file_id` (it must not be deleted)."""
        marks = ", ".join("?" * len(LIVE_STATUSES))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM batches WHERE input_file_id = ? AND status IN ({marks}) ORDER BY created_at, id",
                (file_id, *LIVE_STATUSES),
            ).fetchall()
        return [row[0] for row in rows]

    def count_by_status(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM batches GROUP BY status").fetchall()
        return {row[0]: row[1] for row in rows}

    # --- reads ----------------------------------------------------------------------------

    def _get(self, table: str, model: type[_Row], row_id: str) -> _Row | None:
        with self._lock:
            row = self._db.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchone()
        return None if row is None else _decode(model, row)

    def _page(
        self,
        table: str,
        model: type[_Row],
        where: list[tuple[str, Any]],
        after: str | None,
        limit: int,
        *,
        descending: bool,
    ) -> tuple[list[_Row], bool]:
        """Rows in creation order (created_at, then rowid: the order of insertion within a second),
        strictly after the row `after` (none if it is unknown: a cursor says where a listing stood,
        and a row that no longer exists says nowhere)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        conditions = [condition for condition, _ in where]
        params: list[Any] = [value for _, value in where]
        direction = "DESC" if descending else "ASC"
        with self._lock:
            if after is not None:
                cursor = self._db.execute(f"SELECT created_at, rowid FROM {table} WHERE id = ?", (after,)).fetchone()
                if cursor is None:
                    return [], False
                conditions.append(f"(created_at, rowid) {'<' if descending else '>'} (?, ?)")
                params += [cursor[0], cursor[1]]
            clause = f"WHERE {' AND '.join(conditions)}" if conditions else ""
            rows = self._db.execute(
                f"SELECT * FROM {table} {clause} ORDER BY created_at {direction}, rowid {direction} LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        return [_decode(model, row) for row in rows[:limit]], len(rows) > limit


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    return {
        name: orjson.dumps(value).decode() if name in _JSON_COLUMNS and value is not None else value
        for name, value in values.items()
    }


def _decode(model: type[_Row], row: sqlite3.Row) -> _Row:
    values = dict(row)
    for column in _JSON_COLUMNS:
        if values.get(column) is not None:
            values[column] = orjson.loads(values[column])
    return model.model_validate(values)
