"""The OpenAI Files and Batches routes of the batch server, as one pure ASGI handler.

The batch server's middleware asks `BatchApi.handle` first and passes every other path (and CORS
preflights) on to vLLM's app. vLLM's exception handlers sit inside the middleware and never see
these routes, so every answer here, errors and crashes included, is built in OpenAI's shapes.

Stdlib and vbatch only at import: python_multipart (which comes with vLLM's FastAPI) is imported
when an upload arrives, so the CLI can name this module without pulling in a web framework.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson

from vbatch.core.records import batch_usage
from vbatch.errors import is_no_space
from vbatch.services.server_auth import Receive, Scope, Send
from vbatch.storage.catalog import BatchRow, Catalog, FileRow
from vbatch.storage.filestore import FileStore, FileTooLarge

log = logging.getLogger(__name__)

#: Room for the form's other fields and the multipart framing beside the file itself.
_FORM_OVERHEAD = 1 << 20
#: The most a form field other than the file may hold, and how many parts a form may have.
_MAX_FIELD_BYTES = 64 << 10
_MAX_PARTS = 16
#: The most a JSON request body may hold.
_MAX_JSON_BYTES = 1 << 20
#: What a refused upload's unread body is read (and dropped) up to before the answer: most HTTP
#: clients still writing a body read no answer, and report a broken connection instead of the error.
_MAX_DRAIN_BYTES = 1 << 30
_CHUNK = 1 << 20
_MAX_FILENAME = 255
#: completion_window: whole hours, up to a year.
_WINDOW = re.compile(r"[1-9][0-9]*h")
_MAX_WINDOW_HOURS = 24 * 365
#: expires_after / output_expires_after seconds, as OpenAI allows: an hour to 30 days.
_EXPIRY_SECONDS = (3600, 2_592_000)
_CANCELLABLE = ("validating", "in_progress")


class ExecutorHandle(Protocol):
    """What the routes need from the executor."""

    #: The served model name, reported in Batch.model.
    model: str
    #: The endpoints the loaded model serves, e.g. {"/v1/chat/completions", "/v1/completions"}.
    endpoints: frozenset[str]

    def created(self, batch_id: str) -> None:
        """A new batch in "validating": start it."""

    def cancel(self, batch_id: str) -> None:
        """The route has set the batch to "cancelling"."""


@dataclass
class ApiSettings:
    max_upload_bytes: int = 512 * 2**20
    max_metadata_pairs: int = 16


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


class _ClientGone(Exception):
    """The client disconnected before its request body was read: nobody to answer."""


def file_object(row: FileRow) -> dict[str, Any]:
    """OpenAI's FileObject for a catalog row."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",  # the SDK's wait_for_processing polls for it
        "expires_at": row.expires_at,
        "status_details": None,
    }


def batch_object(row: BatchRow) -> dict[str, Any]:
    """OpenAI's Batch object for a catalog row."""
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": None if row.errors is None else {"object": "list", "data": row.errors},
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": row.created_at,
        "in_progress_at": row.in_progress_at,
        "expires_at": row.expires_at,
        "finalizing_at": row.finalizing_at,
        "completed_at": row.completed_at,
        "failed_at": row.failed_at,
        "expired_at": row.expired_at,
        "cancelling_at": row.cancelling_at,
        "cancelled_at": row.cancelled_at,
        "request_counts": {
            "total": row.request_total,
            "completed": row.request_completed,
            "failed": row.request_failed,
        },
        "usage": batch_usage(row.input_tokens, row.cached_tokens, row.output_tokens, row.reasoning_tokens),
        "metadata": row.metadata,
        "model": row.model,
    }


def _list_object(objects: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": objects,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
        "has_more": has_more,
    }


# --- HTTP plumbing ---------------------------------------------------------------------------


@dataclass
class _Request:
    scope: Scope
    receive: Receive

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.scope.get("headers") or []:
            if key == name:  # names arrive lower-cased (ASGI spec)
                return bytes(value)
        return None

    def query(self) -> dict[str, str]:
        parsed = parse_qs(self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        return {name: values[-1] for name, values in parsed.items()}

    async def json(self) -> dict[str, Any]:
        body = bytearray()
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > _MAX_JSON_BYTES:
                raise ApiError(413, f"the request body is larger than {_MAX_JSON_BYTES:,} bytes", code="body_too_large")
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(parsed, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return parsed


@dataclass
class _Reply:
    send: Send
    started: bool = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def json(self, status: int, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        await self.start(status, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))])
        await self.send({"type": "http.response.body", "body": data})


_Handler = Callable[[_Request, _Reply, str], Awaitable[None]]


# --- multipart uploads -----------------------------------------------------------------------


@dataclass
class _Form:
    fields: dict[str, str] = field(default_factory=dict)
    file_id: str | None = None
    filename: str = ""
    size: int = 0


class _MultipartReader:
    """Feeds the request body to python_multipart as it arrives and hands out what it parsed,
    one event at a time: ("part", headers), ("data", bytes), ("part_end", None), ("end", None)."""

    def __init__(self, receive: Receive, boundary: bytes, file_limit: int):
        from python_multipart.multipart import MultipartParser

        self._receive = receive
        self.file_limit = file_limit
        self.body_limit = file_limit + _FORM_OVERHEAD
        self._received = 0
        self._more = True
        self._events: deque[tuple[str, Any]] = deque()
        self._name = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._headers.clear,
                "on_header_field": self._on_name,
                "on_header_value": self._on_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": lambda: self._events.append(("part", dict(self._headers))),
                "on_part_data": self._on_data,
                "on_part_end": lambda: self._events.append(("part_end", None)),
                "on_end": lambda: self._events.append(("end", None)),
            },
        )

    def _on_name(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name = self._value = b""

    def _on_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", data[start:end]))

    async def next(self) -> tuple[str, Any]:
        from python_multipart.exceptions import MultipartParseError

        while not self._events:
            if not self._more:
                raise ApiError(400, "the multipart body ended before its closing boundary", code="invalid_multipart")
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            self._more = message.get("more_body", False)
            self._received += len(chunk)
            if self._received > self.body_limit:
                raise FileTooLarge(self.file_limit)
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise ApiError(400, f"malformed multipart body: {exc}", code="invalid_multipart") from None
        return self._events.popleft()

    async def part_data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, as they arrive, up to its end."""
        while (event := await self.next())[0] == "data":
            yield event[1]

    async def read_part(self, name: str) -> bytes:
        value = bytearray()
        async for chunk in self.part_data():
            value += chunk
            if len(value) > _MAX_FIELD_BYTES:
                raise ApiError(400, f"the form field {name!r} is larger than {_MAX_FIELD_BYTES:,} bytes", param=name)
        return bytes(value)

    async def drain(self) -> None:
        if self._more:
            self._more = False
            await _drain(self._receive)


async def _drain(receive: Receive) -> None:
    """Read the rest of a body without keeping it, so that the client reads the answer."""
    dropped = 0
    while dropped < _MAX_DRAIN_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        dropped += len(message.get("body", b""))


def _boundary(content_type: bytes | None) -> bytes:
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(
            400,
            "upload the file as multipart/form-data, with the fields 'file' and 'purpose'",
            code="invalid_multipart",
        )
    return options[b"boundary"]


def _part_name(headers: dict[bytes, bytes]) -> tuple[str, bytes | None]:
    """The form field's name and the file name, if the part has one."""
    from python_multipart.multipart import parse_options_header

    _, options = parse_options_header(headers.get(b"content-disposition"))
    if b"name" not in options:
        raise ApiError(400, "a multipart part has no name in its Content-Disposition", code="invalid_multipart")
    return options[b"name"].decode("utf-8", "replace"), options.get(b"filename")


def _safe_filename(raw: bytes | None) -> str:
    """The client's file name, kept as a label only: its last path component, printable, bounded."""
    name = (raw or b"").decode("utf-8", "replace").replace("\\", "/").rpartition("/")[2]
    name = "".join(char for char in name if char.isprintable()).strip()
    return name[:_MAX_FILENAME] or "upload"


def _expiry_seconds(anchor: object, seconds: object, param: str) -> int:
    low, high = _EXPIRY_SECONDS
    if anchor != "created_at":
        raise ApiError(400, f"{param}[anchor] must be 'created_at'", param=f"{param}[anchor]")
    if isinstance(seconds, str) and _is_whole(seconds):
        seconds = int(seconds)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high:
        raise ApiError(400, f"{param}[seconds] must be a whole number from {low} to {high}", param=f"{param}[seconds]")
    return seconds


def _check_purpose(purpose: str) -> None:
    if purpose != "batch":
        raise ApiError(
            400,
            f"this server keeps files for the Batch API only: purpose must be 'batch', not {purpose!r}",
            param="purpose",
        )


# --- the routes ------------------------------------------------------------------------------


class BatchApi:
    """The Files and Batches routes over the catalog, the file store and the executor."""

    def __init__(self, catalog: Catalog, store: FileStore, executor: ExecutorHandle, settings: ApiSettings):
        self.catalog = catalog
        self.store = store
        self.executor = executor
        self.settings = settings
        self._routes: list[tuple[re.Pattern[str], dict[str, _Handler]]] = [
            (re.compile(r"/v1/files"), {"GET": self._list_files, "POST": self._upload}),
            (re.compile(r"/v1/files/([^/]+)"), {"GET": self._get_file, "DELETE": self._delete_file}),
            (re.compile(r"/v1/files/([^/]+)/content"), {"GET": self._file_content}),
            (re.compile(r"/v1/batches"), {"GET": self._list_batches, "POST": self._create_batch}),
            (re.compile(r"/v1/batches/([^/]+)"), {"GET": self._get_batch}),
            (re.compile(r"/v1/batches/([^/]+)/cancel"), {"POST": self._cancel_batch}),
        ]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request if its path is one of ours (True); False: the inner app answers it."""
        if scope["type"] != "http" or scope["method"] == "OPTIONS":  # vLLM's CORS answers preflights
            return False
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        for pattern, methods in self._routes:
            if match := pattern.fullmatch(path):
                break
        else:
            return False
        reply = _Reply(send)
        try:
            handler = methods.get(scope["method"])
            if handler is None:
                raise ApiError(
                    405,
                    f"{scope['method']} is not allowed on {path}; use {' or '.join(methods)}",
                    code="method_not_allowed",
                )
            await handler(_Request(scope, receive), reply, match.group(1) if match.groups() else "")
        except _ClientGone:
            pass
        except Exception as exc:
            if not isinstance(exc, ApiError):
                log.exception("batch API: %s %s failed", scope["method"], path)
                exc = ApiError(500, "internal error in the batch server", type="server_error", code="internal_error")
            if not reply.started:  # else all that is left is to cut the body short
                await reply.json(exc.status, exc.body)
        return True

    # --- files ------------------------------------------------------------------------------

    def _file(self, file_id: str, param: str = "file_id") -> FileRow:
        row = self.catalog.get_file(file_id)
        if row is None:
            raise ApiError(404, f"No such File object: {file_id}", param=param, code="not_found")
        return row

    async def _upload(self, request: _Request, reply: _Reply, _: str) -> None:
        limit = self.settings.max_upload_bytes
        try:
            boundary = _boundary(request.header(b"content-type"))
        except ApiError:
            await _drain(request.receive)
            raise
        reader = _MultipartReader(request.receive, boundary, limit)
        try:
            declared = request.header(b"content-length")
            if declared is not None and _is_whole(declared.decode("latin-1")) and int(declared) > reader.body_limit:
                raise FileTooLarge(limit)
            form = await self._receive_form(reader)
            await reader.drain()  # the epilogue after the closing boundary, if any
        except FileTooLarge as exc:
            await reader.drain()
            raise ApiError(413, exc.message, param="file", code="file_too_large") from None
        except ApiError:
            await reader.drain()
            raise
        except OSError as exc:
            if not is_no_space(exc):
                raise
            await reader.drain()  # the store removed what it had written
            raise ApiError(
                507,
                "the server's disk is full: the file was not stored; free space on the server (its "
                "finished batches' outputs are removed after [serve].keep_outputs_hours) and upload it again",
                type="server_error",
                code="insufficient_storage",
            ) from None
        assert form.file_id is not None  # _receive_form refuses a form without a file
        try:
            purpose = form.fields.get("purpose")
            if purpose is None:
                raise ApiError(400, "missing required parameter: 'purpose'", param="purpose")
            _check_purpose(purpose)
            expires_at = None
            if "expires_after[anchor]" in form.fields or "expires_after[seconds]" in form.fields:
                seconds = _expiry_seconds(
                    form.fields.get("expires_after[anchor]"), form.fields.get("expires_after[seconds]"), "expires_after"
                )
                expires_at = int(time.time()) + seconds
            row = self.catalog.add_file(form.filename, purpose, form.size, file_id=form.file_id, expires_at=expires_at)
        except BaseException:
            self.store.delete(form.file_id)
            raise
        await reply.json(200, file_object(row))

    async def _receive_form(self, reader: _MultipartReader) -> _Form:
        """Read the form, streaming its part named "file" into the store; on any failure the
        stored file is removed."""
        form = _Form()
        parts = 0
        try:
            while (event := await reader.next())[0] != "end":
                parts += 1
                if parts > _MAX_PARTS:
                    raise ApiError(400, f"the form has more than {_MAX_PARTS} parts", code="invalid_multipart")
                name, filename = _part_name(event[1])
                if name != "file":
                    value = await reader.read_part(name)
                    try:
                        form.fields[name] = value.decode()
                    except UnicodeDecodeError:
                        raise ApiError(400, f"the form field {name!r} is not UTF-8 text", param=name) from None
                    continue
                if form.file_id is not None:
                    raise ApiError(400, "upload one file at a time", param="file")
                if "purpose" in form.fields:  # refuse before storing the file, when the client sent it first
                    _check_purpose(form.fields["purpose"])
                file_id = self.catalog.new_file_id()
                form.size = await self.store.write_stream(file_id, reader.part_data(), self.settings.max_upload_bytes)
                form.file_id, form.filename = file_id, _safe_filename(filename)
            if form.file_id is None:
                raise ApiError(400, "missing required parameter: 'file'", param="file")
        except BaseException:
            if form.file_id is not None:
                self.store.delete(form.file_id)
            raise
        return form

    async def _list_files(self, request: _Request, reply: _Reply, _: str) -> None:
        query = request.query()
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, "order must be 'asc' or 'desc'", param="order")
        rows, has_more = self.catalog.list_files(
            purpose=query.get("purpose") or None,
            after=query.get("after") or None,
            limit=_int_param(query, "limit", 10000, 1, 10000),
            order=order,
        )
        await reply.json(200, _list_object([file_object(row) for row in rows], has_more))

    async def _get_file(self, request: _Request, reply: _Reply, file_id: str) -> None:
        await reply.json(200, file_object(self._file(file_id)))

    async def _file_content(self, request: _Request, reply: _Reply, file_id: str) -> None:
        row = self._file(file_id)
        kind = b"application/jsonl" if row.filename.endswith(".jsonl") else b"application/octet-stream"
        try:
            content = open(self.store.path(row.id), "rb")  # noqa: SIM115 - open, it stays readable if deleted meanwhile
        except FileNotFoundError:
            raise ApiError(
                404,
                f"the content of {file_id} is missing from the server's file store (removed outside vbatch)",
                param="file_id",
                code="file_content_missing",
            ) from None
        with content:
            size = os.fstat(content.fileno()).st_size
            await reply.start(200, [(b"content-type", kind), (b"content-length", b"%d" % size)])
            while chunk := await asyncio.to_thread(content.read, _CHUNK):
                await reply.send({"type": "http.response.body", "body": chunk, "more_body": True})
        await reply.send({"type": "http.response.body", "body": b""})

    async def _delete_file(self, request: _Request, reply: _Reply, file_id: str) -> None:
        self._file(file_id)
        if users := self.catalog.live_batches_using(file_id):
            raise ApiError(
                409,
                f"file {file_id} is the input of batch {', '.join(users)}, which has not finished: "
                "cancel it or wait for it to end",
                param="file_id",
                code="file_in_use",
            )
        self.catalog.delete_file(file_id)  # the row first: a crash in between leaves bytes nobody names
        self.store.delete(file_id)
        await reply.json(200, {"id": file_id, "object": "file", "deleted": True})

    # --- batches ----------------------------------------------------------------------------

    def _batch(self, batch_id: str) -> BatchRow:
        row = self.catalog.get_batch(batch_id)
        if row is None:
            raise ApiError(404, f"No such Batch object: {batch_id}", param="batch_id", code="not_found")
        return row

    async def _create_batch(self, request: _Request, reply: _Reply, _: str) -> None:
        body = await request.json()
        input_file_id = _required_str(body, "input_file_id")
        endpoint = _required_str(body, "endpoint")
        window = _required_str(body, "completion_window")
        if endpoint not in self.executor.endpoints:
            raise ApiError(
                400,
                f"this server's model serves {', '.join(sorted(self.executor.endpoints))}; not {endpoint!r}",
                param="endpoint",
            )
        if not _WINDOW.fullmatch(window) or int(window[:-1]) > _MAX_WINDOW_HOURS:
            raise ApiError(
                400,
                f"completion_window must be whole hours such as '24h' (at most {_MAX_WINDOW_HOURS}h), not {window!r}",
                param="completion_window",
            )
        metadata = self._metadata(body.get("metadata"))
        output_expires_after = None
        if (expiry := body.get("output_expires_after")) is not None:
            if not isinstance(expiry, dict):
                raise ApiError(400, "output_expires_after must be an object", param="output_expires_after")
            output_expires_after = _expiry_seconds(expiry.get("anchor"), expiry.get("seconds"), "output_expires_after")
        input_file = self._file(input_file_id, param="input_file_id")
        if input_file.purpose != "batch":
            raise ApiError(
                400,
                f"file {input_file_id} has purpose {input_file.purpose!r}; a batch reads a file uploaded with "
                "purpose 'batch'",
                param="input_file_id",
            )
        row = self.catalog.create_batch(
            input_file_id,
            endpoint,
            window,
            metadata=metadata,
            expires_at=int(time.time()) + int(window[:-1]) * 3600,
            model=self.executor.model,
            output_expires_after=output_expires_after,
        )
        self.executor.created(row.id)
        await reply.json(200, batch_object(row))

    def _metadata(self, metadata: object) -> dict[str, str] | None:
        if metadata is None:
            return None
        pairs = self.settings.max_metadata_pairs
        if not isinstance(metadata, dict) or len(metadata) > pairs:
            raise ApiError(400, f"metadata must be an object of at most {pairs} pairs", param="metadata")
        for key, value in metadata.items():
            if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
                raise ApiError(
                    400,
                    f"metadata {key[:64]!r}: keys are at most 64 characters, values strings of at most 512",
                    param="metadata",
                )
        return metadata

    async def _list_batches(self, request: _Request, reply: _Reply, _: str) -> None:
        query = request.query()
        rows, has_more = self.catalog.list_batches(
            after=query.get("after") or None, limit=_int_param(query, "limit", 20, 1, 100)
        )
        await reply.json(200, _list_object([batch_object(row) for row in rows], has_more))

    async def _get_batch(self, request: _Request, reply: _Reply, batch_id: str) -> None:
        await reply.json(200, batch_object(self._batch(batch_id)))

    async def _cancel_batch(self, request: _Request, reply: _Reply, batch_id: str) -> None:
        """A batch still validating or running goes to "cancelling" and the executor is told; any
        other batch (finalizing, already cancelling or finished) comes back unchanged, with 200."""
        row = self._batch(batch_id)
        if row.status in _CANCELLABLE:
            # Only the executor moves a batch on meanwhile, never to "cancelling": if the row says
            # "cancelling" now, this call set it.
            row = self.catalog.update_batch(batch_id, status="cancelling", if_status=_CANCELLABLE)
            if row.status == "cancelling":
                self.executor.cancel(batch_id)
        await reply.json(200, batch_object(row))


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"missing required parameter: {name!r} (a string)", param=name)
    return value


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not _is_whole(value) or not low <= int(value) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}", param=name)
    return int(value)


def _is_whole(text: str) -> bool:
    return text.isascii() and text.isdigit()
