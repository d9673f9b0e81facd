"""`from vbatch import Batch`, parasail's `openai_batch.Batch` API: its README's example run
unchanged but for the import (and the model the test server serves) on a real `vbatch serve`
and in process with no server, plus what it refuses and how it reads results back."""

from __future__ import annotations

import base64
import json
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.batch import KEY, batch_file
from support.jsonl import read_jsonl, write_lines
from support.net import free_port

from vbatch import Batch
from vbatch.client.connection import Server
from vbatch.client.results import records
from vbatch.errors import InputError, ServerError

engine = pytest.mark.engine


def parasail_readme_example(batch_kwargs: dict) -> tuple:
    """The first example of parasail's README ("Basic Usage") with `from vbatch import Batch`, the
    test model "tiny" for Llama-3-8B, and 16 completion tokens for 1000 (its context is 1024
    tokens, and CPU time is short). The Batch is built with `batch_kwargs` (none for a server)."""
    with Batch(**batch_kwargs) as batch:
        objects = ["cat", "robot", "coffee mug", "spaceship", "banana"]
        for i in range(100):
            batch.add_to_batch(
                model="tiny",
                temperature=0.7,
                max_completion_tokens=16,
                messages=[{"role": "user", "content": f"Tell me a joke about a {random.choice(objects)}"}],
            )

        # Submit, wait for completion, and download results
        result, output_path, error_path = batch.submit_wait_download()
        print(f"Batch completed with status {result.status} and stored in {output_path}")
    return batch, result, output_path, error_path


def assert_one_answer_per_request(batch, result, output_path, error_path) -> None:
    assert result.status == "completed" and error_path is None
    assert (result.request_counts.total, result.request_counts.completed) == (100, 100)
    answers = read_jsonl(Path(output_path))
    assert sorted(r["custom_id"] for r in answers) == sorted(f"line-{i}" for i in range(1, 101))
    assert all(r["response"]["body"]["choices"][0]["message"]["role"] == "assistant" for r in answers)
    assert {custom_id for custom_id, _ in batch.results()} == {f"line-{i}" for i in range(1, 101)}


@engine
def test_the_readme_example_runs_on_a_vbatch_server(batch_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda seconds: sleep(min(seconds, 0.2)))  # its 60 s polls, shortened
    monkeypatch.setenv("VBATCH_BASE_URL", batch_server.base_url + "/v1")
    monkeypatch.setenv("VBATCH_API_KEY", KEY)
    batch, result, output_path, error_path = parasail_readme_example({})
    assert "Batch completed with status completed" in capsys.readouterr().out
    assert_one_answer_per_request(batch, result, output_path, error_path)
    assert output_path == f"{result.id}-output.jsonl"  # parasail's default name, in the current directory
    assert Path(batch.submission_input_file).name.startswith("batch_submission_")


@engine
def test_the_readme_example_runs_in_process_without_a_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VBATCH_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")  # never asked
    batch, result, output_path, error_path = parasail_readme_example({"provider": "local", "profile": "cpu-chat"})
    assert_one_answer_per_request(batch, result, output_path, error_path)
    assert result.id.startswith("batch_local_") and result.model == "tiny" and result.usage.output_tokens > 0


@engine
def test_attach_to_a_batch_by_id_and_follow_it(batch_server, tmp_path):
    server = {"base_url": batch_server.base_url + "/v1", "api_key": KEY}
    submitted = Batch(submission_input_file=batch_file(tmp_path / "in.jsonl", 6, bad=1), **server)
    batch_id = submitted.submit(metadata={"job": "attach"})

    attached = Batch(batch_id=batch_id, output_file=tmp_path / "out.jsonl", error_file=tmp_path / "err.jsonl", **server)
    seen = []
    while (status := attached.status()).status not in ("completed", "failed"):
        seen.append(status.status)
        time.sleep(0.2)
    assert status.status == "completed" and status.metadata == {"job": "attach"}
    output_path, error_path = attached.download()
    assert (output_path, error_path) == (tmp_path / "out.jsonl", tmp_path / "err.jsonl")
    by_id = dict(attached.results())
    assert set(by_id) == {f"q{i}" for i in range(6)} | {"bad0"}
    assert by_id["bad0"]["error"]["message"] and by_id["q0"]["error"] is None
    with pytest.raises(ValueError, match="takes no more requests"):
        attached.add_to_batch(model="tiny", messages=[{"role": "user", "content": "late"}])


@engine
def test_status_callback_sees_every_status_until_the_end(batch_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the files are downloaded to
    batch = Batch("in.jsonl", base_url=batch_server.base_url, api_key=KEY)  # /v1 is added
    for i in range(4):
        batch.add_to_batch(model="tiny", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4)
    seen = []
    result, output_path, _ = batch.submit_wait_download(
        interval=0.2, status_callback=seen.append, metadata={"from": "callback"}
    )
    assert seen and seen[-1] is result and result.status == "completed"
    assert all(status.id == result.id for status in seen)
    assert len(read_jsonl(Path(output_path))) == 4


def test_requests_are_numbered_line_n_unless_they_name_a_custom_id(tmp_path):
    path = tmp_path / "in.jsonl"
    with Batch(submission_input_file=path, custom_id_prefix="q") as batch:
        batch.add_to_batch(model="m", messages=[{"role": "user", "content": "a"}])
        batch.add_to_batch(model="m", messages=[{"role": "user", "content": "b"}], custom_id="mine")
        batch.add_to_batch(model="m", messages=[{"role": "user", "content": "c"}], max_tokens=3)
        with pytest.raises(ValueError, match="custom_id 'mine' is in this batch already"):
            batch.add_to_batch(model="m", messages=[{"role": "user", "content": "d"}], custom_id="mine")
    lines = read_jsonl(path)
    assert [line["custom_id"] for line in lines] == ["q-1", "mine", "q-3"]
    assert {line["url"] for line in lines} == {"/v1/chat/completions"} and lines[2]["body"]["max_tokens"] == 3
    assert all("custom_id" not in line["body"] for line in lines)
    assert (batch.n_requests, batch.n_bytes) == (3, path.stat().st_size)


def test_each_endpoint_is_told_by_its_field(tmp_path):
    for field, value, url in [
        ("prompt", "Once upon", "/v1/completions"),
        ("input", ["a", "b"], "/v1/embeddings"),
    ]:
        with Batch(tmp_path / f"{field}.jsonl") as batch:
            batch.add_to_batch(model="m", **{field: value})
        assert read_jsonl(tmp_path / f"{field}.jsonl")[0]["url"] == url


def test_a_batch_holds_one_endpoint_and_one_model(tmp_path):
    batch = Batch(tmp_path / "in.jsonl")
    batch.add_to_batch(model="m", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(ValueError, match="a batch has one endpoint: put /v1/embeddings requests in another Batch"):
        batch.add_to_batch(model="m", input="text")
    with pytest.raises(ValueError, match="runs model 'm'"):
        batch.add_to_batch(model="other", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(ValueError, match="several of 'messages'.*'prompt'"):
        batch.add_to_batch(model="m", messages=[], prompt="x")
    with pytest.raises(ValueError, match="none of"):
        batch.add_to_batch(model="m", documents=["rerank is not a vbatch endpoint"])
    with pytest.raises(ValueError, match="model="):
        batch.add_to_batch(messages=[{"role": "user", "content": "a"}])
    assert batch.n_requests == 1


def test_what_batch_refuses_before_any_request():
    with pytest.raises(ValueError, match="not both"):
        Batch(submission_input_file="in.jsonl", batch_id="batch_1")
    with pytest.raises(ValueError, match='provider="local"'):
        Batch(profile="cpu-chat")
    with pytest.raises(ValueError, match="lives only in its Batch"):
        Batch(batch_id="batch_1", provider="local")
    with pytest.raises(ValueError, match="not submitted yet"):
        Batch().status()
    with pytest.raises(ValueError, match="the batch is empty"):
        Batch().submit()


def test_dry_run_sends_nothing_and_goes_through_every_step(tmp_path):
    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    batch = Batch(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl", base_url=unreachable, api_key="k"
    )
    batch.add_to_batch(model="m", input="text")
    seen = []
    result, output_path, error_path = batch.submit_wait_download(interval=0, status_callback=seen.append, dry_run=True)
    assert batch.batch_id == result.id == "batch-dry-run" and result.status == "completed"
    assert result.endpoint == "/v1/embeddings" and seen == [result]
    assert (output_path, error_path) == (tmp_path / "out.jsonl", tmp_path / "err.jsonl")
    assert output_path.read_text() == "" and len(read_jsonl(tmp_path / "in.jsonl")) == 1


def test_a_finished_file_goes_as_it_is_for_the_endpoint_its_first_line_asks_for(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [{"prompt": "shorthand"}])
    for given in (path, str(path), b"\n" + path.read_bytes()):
        batch = Batch(given)
        assert batch.submit(dry_run=True) == "batch-dry-run" and batch.endpoint == "/v1/completions"
    with pytest.raises(InputError, match="holds no request"):
        Batch(b"\n").submit(dry_run=True)


def test_an_unreachable_server_says_how_to_start_one(tmp_path):
    batch = Batch(
        submission_input_file=batch_file(tmp_path / "in.jsonl", 1), base_url=f"http://127.0.0.1:{free_port()}"
    )
    with pytest.raises(ServerError, match="no batch API answers at http://127.0.0.1:.*/v1") as caught:
        batch.submit()
    assert "vbatch serve" in caught.value.hint and "VBATCH_BASE_URL" in caught.value.hint


def test_the_server_is_named_or_found_in_the_environment_or_the_default_profile(monkeypatch):
    monkeypatch.setenv("VBATCH_PROFILE", "cpu-chat")
    for name in ("VBATCH_BASE_URL", "VBATCH_API_KEY", "VLLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert Server.resolve() == Server("http://127.0.0.1:8000/v1", None)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert Server.resolve().api_key == "sk-openai"
    monkeypatch.setenv("VBATCH_API_KEY", "vb-key")
    monkeypatch.setenv("VBATCH_BASE_URL", "http://gpu-box:8000/")
    assert Server.resolve() == Server("http://gpu-box:8000/v1", "vb-key")
    assert Server.resolve("https://api.openai.com/v1", "sk-given") == Server("https://api.openai.com/v1", "sk-given")


def _embedding_record(custom_id: str, vector: list[float]) -> dict:
    encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    body = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": encoded}], "model": "m"}
    return {"id": "r", "custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}


def test_base64_embeddings_come_back_as_vectors(tmp_path, monkeypatch):
    numpy = pytest.importorskip("numpy")
    path = tmp_path / "out.jsonl"
    floats = {"id": "f", "custom_id": "as-floats", "response": {"body": {"data": [{"embedding": [0.5, 1.0]}]}}}
    path.write_text(json.dumps(_embedding_record("e1", [0.25, -1.5, 3.0])) + "\n\n" + json.dumps(floats) + "\n")
    by_id = dict(records(path, None))
    vector = by_id["e1"]["response"]["body"]["data"][0]["embedding"]
    assert isinstance(vector, numpy.ndarray) and vector.dtype == numpy.float32
    assert vector.tolist() == [0.25, -1.5, 3.0]
    assert by_id["as-floats"]["response"]["body"]["data"][0]["embedding"] == [0.5, 1.0]  # left as it came

    monkeypatch.setitem(sys.modules, "numpy", None)  # numpy not installed: lists of floats
    (record,) = [record for custom_id, record in records(path) if custom_id == "e1"]
    assert record["response"]["body"]["data"][0]["embedding"] == [0.25, -1.5, 3.0]


def test_import_vbatch_stays_light():
    code = (
        "import sys, vbatch; from vbatch import Batch; "
        "assert not {'openai', 'torch', 'vllm', 'numpy'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
