"""The batch executor's own decisions, on a real catalog and file store (no engine needed):
whether a file can run at all, and when finished outputs are deleted."""

from __future__ import annotations

import json
import sqlite3
import time
import types
from pathlib import Path

from vbatch.config.profiles import Profile
from vbatch.services.batch_server.executor import BatchExecutor
from vbatch.storage.catalog import Catalog
from vbatch.storage.filestore import FileStore


def executor(tmp_path: Path, **settings) -> BatchExecutor:
    engine = types.SimpleNamespace(model_name="tiny", task="generate")
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    store = FileStore(tmp_path / "files")
    return BatchExecutor(catalog, store, tmp_path / "work", Profile(name="t", model="m"), engine, **settings)  # type: ignore[arg-type]


def stored(run: BatchExecutor, text: str, purpose: str = "batch") -> str:
    file_id = run.catalog.new_file_id()
    path = run.store.path(file_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    run.catalog.add_file("in.jsonl", purpose, len(text), file_id=file_id)
    return file_id


def chat(custom_id: str, url: str = "/v1/chat/completions") -> str:
    body = {"messages": [{"role": "user", "content": "hi"}]} if "chat" in url else {"input": "hi"}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}) + "\n"


def test_a_file_with_one_runnable_line_is_valid(tmp_path):
    run = executor(tmp_path)
    file_id = stored(run, "not json\n" + chat("ok"))
    batch = run.catalog.create_batch(file_id, "/v1/chat/completions", "24h", metadata=None, expires_at=0, model="tiny")
    assert run._validate(batch) == []


def test_an_unusable_file_is_described_line_by_line(tmp_path):
    run = executor(tmp_path)
    file_id = stored(run, "not json\n" + chat("e", "/v1/embeddings") + "{}\n")
    batch = run.catalog.create_batch(file_id, "/v1/chat/completions", "24h", metadata=None, expires_at=0, model="tiny")
    problems = run._validate(batch)
    assert problems[0]["code"] == "no_valid_line" and "3 lines" in problems[0]["message"]
    assert [(p["code"], p.get("line")) for p in problems[1:]] == [
        ("invalid_json_line", 1),
        ("wrong_endpoint", 2),
        ("invalid_request", 3),
    ]
    empty = run.catalog.create_batch(
        stored(run, ""), "/v1/chat/completions", "24h", metadata=None, expires_at=0, model="tiny"
    )
    assert run._validate(empty) == [{"code": "empty_file", "message": "the input file has no requests"}]


def test_old_outputs_are_deleted_and_inputs_kept(tmp_path):
    run = executor(tmp_path, keep_outputs_s=3600)
    kept_input = stored(run, chat("a"))
    old_output = stored(run, "{}\n", purpose="batch_output")
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as db:  # as if written two hours ago
        db.execute("UPDATE files SET created_at = ? WHERE id = ?", (int(time.time()) - 7200, old_output))
    new_output = stored(run, "{}\n", purpose="batch_output")
    assert run.remove_old_outputs() == 1
    assert run.catalog.get_file(old_output) is None and not run.store.path(old_output).exists()
    assert run.catalog.get_file(new_output) and run.catalog.get_file(kept_input)
    assert executor(tmp_path / "forever").remove_old_outputs() == 0  # keep_outputs_s 0: kept


def test_files_past_their_own_expiry_go_unless_a_running_batch_reads_them(tmp_path):
    run = executor(tmp_path)
    expired, in_use = stored(run, chat("a")), stored(run, chat("b"))
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as db:
        db.execute("UPDATE files SET expires_at = ?", (int(time.time()) - 1,))
    run.catalog.create_batch(in_use, "/v1/chat/completions", "24h", metadata=None, expires_at=0, model="tiny")
    assert run.remove_old_outputs() == 1
    assert run.catalog.get_file(expired) is None and run.catalog.get_file(in_use) is not None


def test_a_batch_past_its_window_is_told_to_stop_as_expired(tmp_path):
    run = executor(tmp_path)
    file_id = stored(run, chat("a"))
    late = run.catalog.create_batch(
        file_id, "/v1/chat/completions", "1h", metadata=None, expires_at=int(time.time()) - 1, model="tiny"
    )
    on_time = run.catalog.create_batch(
        file_id, "/v1/chat/completions", "1h", metadata=None, expires_at=int(time.time()) + 3600, model="tiny"
    )
    assert run._stop_reason(late) == "expired" and run._stop_reason(on_time) is None
    run.close()  # starts no batch threads: there is no engine here
    run.cancel(on_time.id)
    assert run._stop_reason(on_time) == "cancelled"
