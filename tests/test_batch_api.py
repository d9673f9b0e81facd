"""The batch server's Files and Batches routes (services/batch_server/api), driven by the official
openai client through a real ASGI stack: BatchApi in front of an inner app that answers 404, over
a real catalog and file store. The executor is a recorder: the real one has its own tests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.jsonl import chat_line

from vbatch.services.batch_server.api import ApiSettings, BatchApi
from vbatch.storage.catalog import Catalog
from vbatch.storage.filestore import FileStore

openai = pytest.importorskip("openai")
pytest.importorskip("python_multipart")  # comes with vLLM's FastAPI, as in the server

LIMIT = 64 * 1024
INPUT = b"".join(json.dumps(chat_line(i)).encode() + b"\n" for i in range(20))


@dataclass
class Recorder:
    """The executor as the routes see it."""

    model: str = "tiny"
    endpoints: frozenset[str] = frozenset({"/v1/chat/completions", "/v1/completions"})
    created_ids: list[str] = field(default_factory=list)
    cancelled_ids: list[str] = field(default_factory=list)
    fail: bool = False

    def created(self, batch_id: str) -> None:
        if self.fail:
            raise RuntimeError("executor exploded")
        self.created_ids.append(batch_id)

    def cancel(self, batch_id: str) -> None:
        self.cancelled_ids.append(batch_id)


@dataclass
class Server:
    api: BatchApi
    executor: Recorder
    files: Path
    client: Any  # openai.AsyncOpenAI
    http: httpx.AsyncClient

    @property
    def catalog(self) -> Catalog:
        return self.api.catalog


async def inner_app(scope, receive, send) -> None:
    """What vLLM's app stands for: every path it gets is unknown."""
    body = b'{"inner": true}'
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def serve(tmp_path: Path, scenario: Callable[[Server], Awaitable[None]], *, root_path: str = "") -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    executor = Recorder()
    api = BatchApi(catalog, FileStore(tmp_path / "files"), executor, ApiSettings(max_upload_bytes=LIMIT))

    async def app(scope, receive, send) -> None:
        if not await api.handle(scope, receive, send):
            await inner_app(scope, receive, send)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://test" + root_path) as http:
            client = openai.AsyncOpenAI(
                base_url=f"http://test{root_path}/v1", api_key="x", http_client=http, max_retries=0
            )
            await scenario(Server(api, executor, tmp_path / "files", client, http))

    try:
        asyncio.run(main())
    finally:
        catalog.close()


async def upload(server: Server, data: bytes = INPUT, name: str = "in.jsonl"):
    return await server.client.files.create(file=(name, data), purpose="batch")


def assert_error(exc: Any, status: int, param: str | None = None) -> None:
    """OpenAI's error shape, as the client parsed it."""
    assert exc.status_code == status
    assert set(exc.body) == {"message", "type", "param", "code"} and exc.body["message"]
    assert exc.body["type"] in ("invalid_request_error", "server_error")
    if param is not None:
        assert exc.param == param


def stored(server: Server) -> list[str]:
    return sorted(path.name for path in server.files.iterdir())


# --- files -----------------------------------------------------------------------------------


def test_upload_retrieve_and_content_round_trip(tmp_path: Path):
    # Bytes that look like multipart framing, across every chunk boundary the parser may see.
    tricky = INPUT + b"\r\n--boundary\r\n--\r\n\r\n" + os.urandom(LIMIT // 2) + b"\r\n-"

    async def scenario(server: Server) -> None:
        uploaded = await upload(server, tricky)
        assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.status == "processed"
        assert uploaded.bytes == len(tricky) and uploaded.filename == "in.jsonl"
        assert uploaded.id.startswith("file-") and abs(uploaded.created_at - time.time()) < 5
        assert uploaded.expires_at is None
        assert await server.client.files.retrieve(uploaded.id) == uploaded
        content = await server.client.files.content(uploaded.id)
        assert content.read() == tricky
        raw = await server.http.get(f"/v1/files/{uploaded.id}/content")
        assert raw.headers["content-type"] == "application/jsonl"
        assert raw.headers["content-length"] == str(len(tricky))
        assert (server.files / uploaded.id).read_bytes() == tricky
        assert stored(server) == [uploaded.id]

    serve(tmp_path, scenario)


def test_upload_keeps_the_client_file_name_as_a_label_only(tmp_path: Path):
    async def scenario(server: Server) -> None:
        uploaded = await upload(server, name="../../etc/evil.jsonl")
        assert uploaded.filename == "evil.jsonl"
        windows = await upload(server, name="C:\\Users\\me\\" + "x" * 300 + ".jsonl")
        assert windows.filename == "x" * 255
        assert stored(server) == sorted([uploaded.id, windows.id])
        content = await server.http.get(f"/v1/files/{uploaded.id}/content")
        assert content.content == INPUT

    serve(tmp_path, scenario)


def test_upload_with_an_expiry(tmp_path: Path):
    async def scenario(server: Server) -> None:
        uploaded = await server.client.files.create(
            file=("in.jsonl", INPUT), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
        )
        assert uploaded.expires_at - uploaded.created_at in (3600, 3601)
        with pytest.raises(openai.BadRequestError) as refused:
            await server.client.files.create(
                file=("in.jsonl", INPUT), purpose="batch", expires_after={"anchor": "created_at", "seconds": 5}
            )
        assert_error(refused.value, 400, "expires_after[seconds]")
        assert stored(server) == [uploaded.id]

    serve(tmp_path, scenario)


def test_upload_refusals_leave_no_file(tmp_path: Path):
    async def scenario(server: Server) -> None:
        with pytest.raises(openai.BadRequestError) as wrong_purpose:
            await server.client.files.create(file=("in.jsonl", INPUT), purpose="fine-tune")
        assert_error(wrong_purpose.value, 400, "purpose")
        with pytest.raises(openai.APIStatusError) as too_large:
            await upload(server, b"x" * (LIMIT + 1))
        assert_error(too_large.value, 413, "file")
        assert too_large.value.code == "file_too_large"
        # The limit is on the file: one of exactly the limit is taken.
        exact = await upload(server, b"y" * LIMIT)
        assert exact.bytes == LIMIT
        assert stored(server) == [exact.id]
        rows, _ = server.catalog.list_files()
        assert [row.id for row in rows] == [exact.id]

    serve(tmp_path, scenario)


def test_a_full_disk_refuses_the_upload_in_openai_shape_and_keeps_nothing(tmp_path: Path, monkeypatch):
    import errno

    class FullDisk:
        """The store's partial file on a full disk: created, but no write goes through."""

        def __init__(self, real):
            self.real = real

        def write(self, chunk: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.real, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.real.__exit__(*exc)

    import builtins

    import vbatch.storage.filestore as filestore

    real_open = builtins.open
    monkeypatch.setattr(filestore, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)

    async def scenario(server: Server) -> None:
        with pytest.raises(openai.APIStatusError) as full:
            await upload(server, os.urandom(LIMIT // 2))
        assert_error(full.value, 507)
        assert full.value.code == "insufficient_storage" and "disk is full" in full.value.message
        assert stored(server) == [] and server.catalog.list_files()[0] == []

    serve(tmp_path, scenario)


def test_a_file_whose_bytes_are_gone_is_a_404_that_says_so(tmp_path: Path):
    async def scenario(server: Server) -> None:
        uploaded = await upload(server)
        (server.files / uploaded.id).unlink()  # removed behind the server's back
        with pytest.raises(openai.NotFoundError) as missing:
            await server.client.files.content(uploaded.id)
        assert_error(missing.value, 404, "file_id")
        assert missing.value.code == "file_content_missing"

    serve(tmp_path, scenario)


def upload_scope(content_length: int | None = None) -> dict:
    headers = [(b"content-type", b"multipart/form-data; boundary=x")]
    if content_length is not None:
        headers.append((b"content-length", b"%d" % content_length))
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/files",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
    }


async def call(api: BatchApi, scope: dict, messages: list[dict]) -> list[dict]:
    """One request straight through BatchApi.handle: what it sent back."""
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    assert await api.handle(scope, receive, send) is True
    return sent


def test_a_body_declared_too_large_is_refused_before_it_is_parsed(tmp_path: Path):
    async def scenario(server: Server) -> None:
        messages = [{"type": "http.request", "body": b"--x\r\n", "more_body": True}, {"type": "http.request"}]
        sent = await call(server.api, upload_scope(content_length=LIMIT + (2 << 20)), messages)
        assert messages == []  # drained, so that the client reads the answer
        assert sent[0]["status"] == 413
        assert json.loads(sent[1]["body"])["error"]["code"] == "file_too_large"

    serve(tmp_path, scenario)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/json", b'{"purpose": "batch"}'),
        ("multipart/form-data", b"--x\r\n"),  # no boundary
        ("multipart/form-data; boundary=x", b"garbage without any boundary"),
        (  # cut off before the closing boundary
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{}\n',
        ),
        (  # a part without a name
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data\r\n\r\nbatch\r\n--x--\r\n",
        ),
        (  # no file at all
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--x--\r\n',
        ),
        (  # two files
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n{}\r\n'
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="b"\r\n\r\n{}\r\n--x--\r\n',
        ),
        (  # a bad header line
            "multipart/form-data; boundary=x",
            b"--x\r\nno colon here\r\n\r\nbatch\r\n--x--\r\n",
        ),
    ],
    ids=["not-multipart", "no-boundary", "garbage", "truncated", "nameless-part", "no-file", "two-files", "bad-header"],
)
def test_malformed_uploads_are_400(tmp_path: Path, content_type: str, body: bytes):
    async def scenario(server: Server) -> None:
        response = await server.http.post("/v1/files", content=body, headers={"content-type": content_type})
        assert response.status_code == 400, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert stored(server) == [] and server.catalog.list_files() == ([], False)

    serve(tmp_path, scenario)


def test_a_client_that_disconnects_mid_upload_leaves_nothing(tmp_path: Path):
    body = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n' + b"{}\n" * 1000

    async def scenario(server: Server) -> None:
        messages = [{"type": "http.request", "body": body, "more_body": True}, {"type": "http.disconnect"}]
        assert await call(server.api, upload_scope(), messages) == []
        assert stored(server) == []

    serve(tmp_path, scenario)


def test_list_files_pages_with_the_client(tmp_path: Path):
    async def scenario(server: Server) -> None:
        ids = [(await upload(server, name=f"f{n}.jsonl")).id for n in range(5)]
        listed = [f.id async for f in server.client.files.list(limit=2)]
        assert sorted(listed) == sorted(ids) and len(listed) == 5
        ascending = [f.id async for f in server.client.files.list(limit=2, order="asc")]
        assert ascending == listed[::-1]
        page = await server.client.files.list(limit=2)
        assert page.has_more is True and len(page.data) == 2
        raw = (await server.http.get("/v1/files", params={"limit": 5})).json()
        assert raw["object"] == "list" and raw["has_more"] is False
        assert (raw["first_id"], raw["last_id"]) == (listed[0], listed[-1])
        assert [f.id async for f in server.client.files.list(purpose="batch_output")] == []
        for bad in ({"limit": 0}, {"limit": 10001}, {"limit": "many"}, {"order": "up"}):
            response = await server.http.get("/v1/files", params=bad)
            assert response.status_code == 400 and response.json()["error"]["param"] == next(iter(bad))

    serve(tmp_path, scenario)


def test_delete_is_refused_while_a_batch_reads_the_file(tmp_path: Path):
    async def scenario(server: Server) -> None:
        uploaded = await upload(server)
        batch = await server.client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(openai.ConflictError) as refused:
            await server.client.files.delete(uploaded.id)
        assert_error(refused.value, 409, "file_id")
        assert batch.id in refused.value.message
        server.catalog.update_batch(batch.id, status="completed")
        deleted = await server.client.files.delete(uploaded.id)
        assert (deleted.id, deleted.object, deleted.deleted) == (uploaded.id, "file", True)
        assert stored(server) == []
        with pytest.raises(openai.NotFoundError):
            await server.client.files.retrieve(uploaded.id)

    serve(tmp_path, scenario)


def test_unknown_ids_are_404(tmp_path: Path):
    async def scenario(server: Server) -> None:
        missing = "file-" + "a" * 24
        for request in (
            lambda: server.client.files.retrieve(missing),
            lambda: server.client.files.content(missing),
            lambda: server.client.files.delete("file-nope"),
            lambda: server.client.batches.retrieve("batch_nope"),
            lambda: server.client.batches.cancel("batch_nope"),
        ):
            with pytest.raises(openai.NotFoundError) as not_found:
                await request()
            assert_error(not_found.value, 404)
            assert not_found.value.code == "not_found"

    serve(tmp_path, scenario)


# --- batches ---------------------------------------------------------------------------------


def test_batches_create_retrieve_list_and_cancel(tmp_path: Path):
    async def scenario(server: Server) -> None:
        uploaded = await upload(server)
        batch = await server.client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"team": "search", "run": "7"},
        )
        assert batch.object == "batch" and batch.status == "validating" and batch.model == "tiny"
        assert batch.metadata == {"team": "search", "run": "7"}
        assert batch.expires_at - batch.created_at in (86400, 86401)
        assert batch.request_counts.total == 0 and batch.usage.total_tokens == 0 and batch.errors is None
        assert server.executor.created_ids == [batch.id]
        assert await server.client.batches.retrieve(batch.id) == batch

        more = [
            (await server.client.batches.create(input_file_id=uploaded.id, endpoint=e, completion_window="1h")).id
            for e in ("/v1/completions", "/v1/chat/completions")
        ]
        listed = [b.id async for b in server.client.batches.list(limit=2)]
        assert sorted(listed) == sorted([batch.id, *more])

        cancelled = await server.client.batches.cancel(batch.id)
        assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
        assert server.executor.cancelled_ids == [batch.id]
        again = await server.client.batches.cancel(batch.id)
        assert again == cancelled and server.executor.cancelled_ids == [batch.id]

        server.catalog.update_batch(
            more[0], status="completed", request_total=3, request_completed=2, request_failed=1,
            input_tokens=10, cached_tokens=4, output_tokens=5, errors=[{"code": "bad_line", "message": "x", "line": 2}],
        )  # fmt: skip
        finished = await server.client.batches.cancel(more[0])
        assert finished.status == "completed" and finished.cancelling_at is None
        assert (finished.request_counts.total, finished.request_counts.completed, finished.request_counts.failed) == (
            3,
            2,
            1,
        )
        assert finished.usage.input_tokens_details.cached_tokens == 4 and finished.usage.total_tokens == 15
        assert finished.errors.object == "list" and finished.errors.data[0].line == 2
        assert server.executor.cancelled_ids == [batch.id]

    serve(tmp_path, scenario)


def test_batch_object_has_every_field_of_openai_shape(tmp_path: Path):
    async def scenario(server: Server) -> None:
        uploaded = await upload(server)
        raw = await server.http.post(
            "/v1/batches",
            json={"input_file_id": uploaded.id, "endpoint": "/v1/completions", "completion_window": "48h"},
        )
        assert raw.status_code == 200
        body = raw.json()
        assert set(body) == set(openai.types.Batch.model_fields)
        assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}

    serve(tmp_path, scenario)


@pytest.mark.parametrize(
    "change, param",
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "24"}, "completion_window"),
        ({"completion_window": "0h"}, "completion_window"),
        ({"completion_window": "1d"}, "completion_window"),
        ({"completion_window": "9999999999h"}, "completion_window"),
        ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": ["k"]}, "metadata"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, "output_expires_after[seconds]"),
        ({"output_expires_after": {"anchor": "completed_at", "seconds": 3600}}, "output_expires_after[anchor]"),
        ({"input_file_id": None}, "input_file_id"),
    ],
)
def test_bad_batch_requests_are_400(tmp_path: Path, change: dict, param: str):
    async def scenario(server: Server) -> None:
        uploaded = await upload(server)
        body = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"} | change
        response = await server.http.post("/v1/batches", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"
        if param == "endpoint":
            assert "/v1/chat/completions" in error["message"] and "/v1/completions" in error["message"]
        assert server.catalog.list_batches() == ([], False) and server.executor.created_ids == []

    serve(tmp_path, scenario)


def test_batch_input_must_be_a_batch_file_that_exists(tmp_path: Path):
    async def scenario(server: Server) -> None:
        output = server.catalog.add_file("out.jsonl", "batch_output", 3)
        with pytest.raises(openai.BadRequestError) as wrong:
            await server.client.batches.create(
                input_file_id=output.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert_error(wrong.value, 400, "input_file_id")
        with pytest.raises(openai.NotFoundError) as missing:
            await server.client.batches.create(
                input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert_error(missing.value, 404, "input_file_id")
        for body in (b"not json", b"[1, 2]"):
            response = await server.http.post("/v1/batches", content=body)
            assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"

    serve(tmp_path, scenario)


def test_metadata_and_output_expiry_are_kept(tmp_path: Path):
    async def scenario(server: Server) -> None:
        uploaded = await upload(server)
        batch = await server.client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"k" * 64: "v" * 512},
            extra_body={"output_expires_after": {"anchor": "created_at", "seconds": 7200}},
        )
        assert (await server.client.batches.retrieve(batch.id)).metadata == {"k" * 64: "v" * 512}
        assert server.catalog.get_batch(batch.id).output_expires_after == 7200

    serve(tmp_path, scenario)


# --- the HTTP edges --------------------------------------------------------------------------


def test_other_paths_and_preflights_go_to_the_inner_app(tmp_path: Path):
    async def scenario(server: Server) -> None:
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("OPTIONS", "/v1/files")):
            response = await server.http.request(method, path)
            assert (response.status_code, response.json()) == (404, {"inner": True})
        response = await server.http.put("/v1/files")
        assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"

    serve(tmp_path, scenario)


def test_routes_under_a_root_path(tmp_path: Path):
    async def scenario(server: Server) -> None:
        uploaded = await upload(server)
        assert (await server.client.files.retrieve(uploaded.id)).id == uploaded.id

    serve(tmp_path, scenario, root_path="/api")


def test_an_unexpected_failure_is_a_500_in_openai_shape(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    async def scenario(server: Server) -> None:
        uploaded = await upload(server)
        server.executor.fail = True
        with pytest.raises(openai.InternalServerError) as failed:
            await server.client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert_error(failed.value, 500)
        assert failed.value.body["type"] == "server_error"

    serve(tmp_path, scenario)
    assert "executor exploded" in caplog.text


def test_the_api_module_loads_no_web_framework():
    code = (
        "import sys, vbatch.cli, vbatch.services.batch_server.api; "
        "print(sorted(m for m in ('starlette', 'fastapi', 'python_multipart') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
