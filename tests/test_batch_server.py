"""The Batches API of `vbatch serve`, as a user drives it: the official `openai` client against a
real server on the tiny CPU model (the session's `batch_server`; the restart test has its own)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from support.batch import KEY, batch_file, client_for, records, start_server, wait_for
from support.net import free_port
from support.procs import descendants

from vbatch.services.launch import ManagedServer

pytestmark = pytest.mark.engine


@pytest.fixture
def server(batch_server):
    return batch_server


def test_the_readme_snippet_runs_a_batch_and_a_chat_request(server, tmp_path):
    client = client_for(server)
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.role == "assistant"

    path = batch_file(tmp_path / "batch.jsonl", 40, bad=2)
    with open(path, "rb") as data:
        uploaded = client.files.create(file=data, purpose="batch")
    assert uploaded.bytes == path.stat().st_size and uploaded.purpose == "batch"
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"} and batch.model == "tiny"
    during = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "still there?"}], max_tokens=4
    )
    assert during.choices[0].message.role == "assistant"  # answered while the batch runs
    done = wait_for(client, batch.id, ("completed", "failed"))
    assert done.status == "completed", done.errors
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (42, 40, 2)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    output, errors = records(client, done.output_file_id), records(client, done.error_file_id)
    ids = [r["custom_id"] for r in output + errors]
    assert sorted(ids) == sorted([f"q{i}" for i in range(40)] + ["bad0", "bad1"])  # each line once
    assert all(r["response"]["status_code"] == 200 for r in output)
    assert all(r["response"]["body"]["choices"][0]["message"]["role"] == "assistant" for r in output)
    assert {r["custom_id"] for r in errors} == {"bad0", "bad1"} and all(r["error"]["message"] for r in errors)
    assert client.batches.retrieve(batch.id).metadata == {"job": "nightly"}
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"


def test_an_unusable_file_fails_the_batch_with_its_reasons(server, tmp_path):
    client = client_for(server)
    path = tmp_path / "junk.jsonl"
    path.write_text('not json\n{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}\n')
    with open(path, "rb") as data:
        uploaded = client.files.create(file=data, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    failed = wait_for(client, batch.id, ("failed", "completed"))
    assert failed.status == "failed" and failed.failed_at
    codes = [error.code for error in failed.errors.data]
    assert "no_valid_line" in codes and "wrong_endpoint" in codes
    assert any(error.line == 1 for error in failed.errors.data)


def test_cancel_stops_within_seconds_and_keeps_what_finished(server, tmp_path):
    client = client_for(server)
    with open(batch_file(tmp_path / "big.jsonl", 400, max_tokens=64, prefix="c"), "rb") as data:
        uploaded = client.files.create(file=data, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(client, batch.id, ("in_progress",))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    started = time.monotonic()
    cancelled = wait_for(client, batch.id, ("cancelled",), timeout=30)
    assert time.monotonic() - started < 15
    assert cancelled.cancelling_at and cancelled.cancelled_at
    output = records(client, cancelled.output_file_id)
    assert len(output) == cancelled.request_counts.completed < 400
    assert len({r["custom_id"] for r in output}) == len(output)


def test_a_small_batch_does_not_wait_for_a_big_one(server, tmp_path):
    client = client_for(server)
    batches = []
    for name, count, tokens in (("huge", 400, 64), ("small", 3, 4)):
        with open(batch_file(tmp_path / f"{name}.jsonl", count, max_tokens=tokens, prefix=name), "rb") as data:
            uploaded = client.files.create(file=data, purpose="batch")
        batches.append(
            client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        )
    huge, small = batches
    wait_for(client, small.id, ("completed",), timeout=120)
    assert client.batches.retrieve(huge.id).status == "in_progress"  # the small one finished first
    client.batches.cancel(huge.id)
    wait_for(client, huge.id, ("cancelled",), timeout=30)


def test_list_pages_through_every_batch_and_file(server, tmp_path):
    client = client_for(server)
    made = []
    for n in range(3):
        with open(batch_file(tmp_path / f"p{n}.jsonl", 2, prefix=f"p{n}-"), "rb") as data:
            uploaded = client.files.create(file=data, purpose="batch")
        made.append(
            client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
        )
    listed = [batch.id for batch in client.batches.list(limit=1)]  # the client follows has_more / after
    assert set(made) <= set(listed) and len(listed) == len(set(listed))
    assert listed.index(made[2]) < listed.index(made[0])  # newest first
    page = client.batches.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    files = [f.id for f in client.files.list(purpose="batch")]
    assert len(files) == len(set(files)) >= 3
    for batch_id in made:
        wait_for(client, batch_id, ("completed",))


def test_a_wrong_key_is_refused_on_every_batch_route(server):
    from openai import AuthenticationError

    wrong = client_for(server, key="not-the-key")
    for call in (wrong.files.list, wrong.batches.list, lambda: wrong.batches.retrieve("batch_x")):
        with pytest.raises(AuthenticationError):
            call()


def test_metrics_show_the_batch_queue(server):
    import httpx

    text = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'vbatch_batches{status="completed"}' in text
    assert "vbatch_batch_requests_waiting" in text


def kill_hard(server: ManagedServer) -> None:
    """SIGKILL `vbatch serve` and every process under it (the vLLM server, its engine core)."""
    pids = descendants(server.pid) | {server.pid}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while server.returncode is None and time.monotonic() < deadline:
        time.sleep(0.1)
    server.stop()  # closes its log; nothing is left to stop


def test_kill_9_mid_batch_then_restart_finishes_every_line_once(tmp_path):
    pytest.importorskip("vllm")
    from openai import OpenAI

    state, port = tmp_path / "state", free_port()
    count = 300
    batch_id = None
    for attempt in range(3):  # killed twice in the middle, then left to finish
        server = start_server(state, port, tmp_path / f"serve-{attempt}.log").start()
        client = OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0)
        if batch_id is None:
            with open(batch_file(tmp_path / "long.jsonl", count, max_tokens=48, prefix="k"), "rb") as data:
                uploaded = client.files.create(file=data, purpose="batch")
            batch_id = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
        if attempt == 2:
            done = wait_for(client, batch_id, ("completed",), timeout=600)
            output = records(client, done.output_file_id)
            server.stop()
            break
        before = client.batches.retrieve(batch_id).request_counts.completed
        deadline = time.monotonic() + 300
        while client.batches.retrieve(batch_id).request_counts.completed < before + 40:
            assert time.monotonic() < deadline, "the batch made no progress"
            time.sleep(0.2)
        assert client.batches.retrieve(batch_id).status == "in_progress"
        kill_hard(server)
    assert sorted(r["custom_id"] for r in output) == sorted(f"k{i}" for i in range(count))
    assert done.request_counts.completed == count and done.request_counts.failed == 0


def test_a_batch_past_its_window_after_a_restart_ends_expired_with_what_finished(tmp_path):
    """The server was down (killed) past the batch's completion_window: on restart the batch ends
    `expired`, its output file holding what finished before, each custom_id once."""
    pytest.importorskip("vllm")
    from vbatch.storage.catalog import Catalog

    state, port = tmp_path / "state", free_port()
    server = start_server(state, port, tmp_path / "serve-0.log").start()
    client = client_for(server)
    with open(batch_file(tmp_path / "long.jsonl", 300, max_tokens=48, prefix="e"), "rb") as data:
        uploaded = client.files.create(file=data, purpose="batch")
    batch_id = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    deadline = time.monotonic() + 300
    while client.batches.retrieve(batch_id).request_counts.completed < 30:
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.2)
    kill_hard(server)
    (catalog_path,) = state.rglob("catalog.sqlite3")
    catalog = Catalog(catalog_path)
    catalog.update_batch(batch_id, expires_at=int(time.time()) - 1)  # a day went by while it was down
    catalog.close()

    server = start_server(state, port, tmp_path / "serve-1.log").start()
    try:
        client = client_for(server)
        expired = wait_for(client, batch_id, ("expired", "completed"), timeout=120)
        assert expired.status == "expired" and expired.expired_at
        output = records(client, expired.output_file_id)
        assert 30 <= len(output) == expired.request_counts.completed < 300
        assert len({r["custom_id"] for r in output}) == len(output)
        assert all(r["response"]["status_code"] == 200 for r in output)
    finally:
        server.stop()
