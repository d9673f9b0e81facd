"""`vbatch submit` and `vbatch batches` as a user runs them: the real CLI against the session's
real `vbatch serve` (`batch_server`, with the key `support.batch.KEY`)."""

from __future__ import annotations

import json

import pytest
from support.batch import KEY, batch_file
from support.cli import user_env, vbatch
from support.jsonl import read_jsonl, write_lines
from support.net import free_port

pytestmark = pytest.mark.engine


@pytest.fixture
def server(batch_server) -> list[str]:
    """The --server option naming the session's server (its address: /v1 is added)."""
    return ["--server", batch_server.base_url]


ENV = user_env(VBATCH_API_KEY=KEY)


def test_submit_wait_downloads_one_record_per_input_line(server, tmp_path):
    batch = batch_file(tmp_path / "nightly.jsonl", 12, bad=2)
    proc = vbatch("submit", str(batch), *server, "--wait", "--metadata", "job=nightly", env=ENV)
    assert proc.returncode == 1, proc.stderr  # finished, two requests failed
    results, errors = read_jsonl(tmp_path / "nightly.results.jsonl"), read_jsonl(tmp_path / "nightly.errors.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"q{i}" for i in range(12))
    assert sorted(r["custom_id"] for r in errors) == ["bad0", "bad1"]
    assert "12 completed, 2 failed, 14 total" in proc.stderr and "nightly.results.jsonl" in proc.stderr
    assert "done" in proc.stderr and "out tok/s" in proc.stderr and proc.stdout == ""  # the progress lines

    out = tmp_path / "out" / "all.results.jsonl"
    proc = vbatch(
        "submit", str(batch_file(tmp_path / "good.jsonl", 3)), *server, "--wait", "-o", str(out), "--json", env=ENV
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["results"] == str(out) and document["errors"] is None
    assert document["batch"]["status"] == "completed" and document["batch"]["request_counts"]["completed"] == 3
    assert len(read_jsonl(out)) == 3


def test_submit_then_list_show_download_and_cancel(server, tmp_path):
    small = vbatch("submit", str(batch_file(tmp_path / "small.jsonl", 3)), *server, "--meta", "who=me", env=ENV)
    assert small.returncode == 0, small.stderr
    batch_id = small.stdout.strip()
    assert batch_id.startswith("batch_") and f"vbatch batches download {batch_id}" in small.stderr

    listed = vbatch("batches", "list", *server, "--json", env=ENV)
    assert batch_id in [batch["id"] for batch in json.loads(listed.stdout)]
    table = vbatch("batches", "list", *server, env=ENV).stdout
    assert table.startswith("id ") and batch_id in table and "who=me" in table

    shown = json.loads(vbatch("batches", "show", batch_id, *server, "--json", env=ENV).stdout)
    assert (
        shown["id"] == batch_id and shown["metadata"] == {"who": "me"} and shown["endpoint"] == "/v1/chat/completions"
    )
    assert "endpoint     /v1/chat/completions" in vbatch("batches", "show", batch_id, *server, env=ENV).stdout

    fetched = vbatch("batches", "download", batch_id, *server, "--wait", "-o", str(tmp_path / "s.jsonl"), env=ENV)
    assert fetched.returncode == 0, fetched.stderr
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 3 and not (tmp_path / "s.errors.jsonl").exists()

    big = vbatch(
        "submit", str(batch_file(tmp_path / "big.jsonl", 400, max_tokens=64, prefix="c")), *server, "--json", env=ENV
    )
    big_id = json.loads(big.stdout)["id"]
    early = vbatch("batches", "download", big_id, *server, env=ENV)
    assert early.returncode == 2 and f"vbatch batches download {big_id} --wait" in early.stderr
    cancelled = json.loads(vbatch("batches", "cancel", big_id, *server, "--json", env=ENV).stdout)
    assert cancelled["status"] in ("cancelling", "cancelled")
    final = vbatch("batches", "download", big_id, *server, "--wait", "--json", env=ENV, cwd=tmp_path)
    assert final.returncode == 1, final.stderr  # cancelled: not every request ran
    assert json.loads(final.stdout)["batch"]["status"] == "cancelled"


def test_a_batch_the_server_fails_exits_4_with_its_reasons(server, tmp_path):
    completion = {"method": "POST", "url": "/v1/completions", "body": {"prompt": "hi", "max_tokens": 2}}
    path = write_lines(tmp_path / "completions.jsonl", [{"custom_id": f"p{i}", **completion} for i in range(2)])
    proc = vbatch("submit", str(path), *server, "--endpoint", "chat", "--wait", env=ENV)
    assert proc.returncode == 4, proc.stderr
    assert "failed: " in proc.stderr and "wrong_endpoint (line 1)" in proc.stderr

    refused = vbatch("submit", str(path), *server, "--endpoint", "embeddings", env=ENV)
    assert refused.returncode == 2 and "not '/v1/embeddings' (HTTP 400)" in refused.stderr


def test_a_wrong_key_says_to_set_vbatch_api_key(server, tmp_path):
    proc = vbatch("batches", "list", *server, env=user_env(VBATCH_API_KEY="wrong"))
    assert proc.returncode == 5
    assert "refused the API key (HTTP 401)" in proc.stderr and "VBATCH_API_KEY" in proc.stderr


def test_an_unreachable_server_says_how_to_start_one(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    proc = vbatch("submit", str(batch_file(tmp_path / "b.jsonl", 1)), "--server", url, env=ENV)
    assert proc.returncode == 5
    assert f"no batch API answers at {url}/v1" in proc.stderr and "vbatch serve --profile" in proc.stderr
