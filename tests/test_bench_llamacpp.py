"""`vbatch bench` against llama.cpp's real server (llama-cpp-python) on a tiny GGUF written here.

llama.cpp's server streams no token counts and ignores ignore_eos: the report must say so, and
a prompt longer than its context (the server answers 200, then breaks the stream off) must be
an error row entry, not a success with no tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support.net import free_port

from vbatch.services.bench.runner import BenchSpec, run_bench
from vbatch.services.bench.targets import Limits, parse_target
from vbatch.services.bench.workloads import WorkloadSpec
from vbatch.services.launch import ManagedServer

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def llamacpp_url(tmp_path_factory) -> str:
    pytest.importorskip("llama_cpp.server")
    from support.tiny_gguf import write_tiny_gguf

    folder = tmp_path_factory.mktemp("llamacpp")
    model = write_tiny_gguf(folder / "tiny.gguf")
    port = free_port()
    server = ManagedServer(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            "tiny",
            "--n_ctx",
            "512",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        base_url=f"http://127.0.0.1:{port}",
        health_path="/v1/models",  # llama-cpp-python's server has no /health
        log_path=folder / "server.log",
        ready_timeout=120,
    )
    with server:
        yield f"http://127.0.0.1:{port}/v1"


def test_llamacpp_server_rows_and_what_the_report_says_about_it(llamacpp_url: str, tmp_path: Path):
    spec = BenchSpec(
        targets=[parse_target(f"openai:{llamacpp_url}:tiny")],
        workload=WorkloadSpec("chat-short", requests=6, max_tokens=8, prompt_words=6),
        concurrency=[1, 3],
        warmup=1,
        limits=Limits(time_limit_s=120, request_timeout_s=60),
    )
    report = run_bench(spec)
    (info,) = report.targets
    assert info.error is None and info.server == "OpenAI-compatible server (models owned_by 'me')"
    assert any("counted as streamed chunks" in note for note in info.notes)
    for row in report.rows:
        assert (row.ok, row.errors) == (6, 0), row.error_samples
        # Not always 6 * 8: llama-cpp-python counts a token that ends mid-character as two.
        assert row.output_tokens > 0
        assert row.ttft_s is not None and row.e2e_s is not None and row.output_tokens_per_s > 0
    if any(row.off_length_outputs for row in report.rows):
        assert any(note.startswith("off-length outputs:") for note in info.notes)


def test_a_prompt_beyond_the_context_is_an_error_not_an_empty_success(llamacpp_url: str, tmp_path: Path):
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        json.dumps({"custom_id": "long", "messages": [{"role": "user", "content": "word " * 600}]})
        + "\n"
        + json.dumps({"custom_id": "short", "messages": [{"role": "user", "content": "hello"}]})
        + "\n"
    )
    spec = BenchSpec(
        targets=[parse_target(f"openai:{llamacpp_url}:tiny")],
        workload=WorkloadSpec(str(batch), max_tokens=4),
        concurrency=[1],
        warmup=0,
    )
    (row,) = run_bench(spec).rows
    assert (row.ok, row.errors) == (1, 1)
    assert "end marker" in row.error_samples[0]
