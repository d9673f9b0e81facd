"""`vbatch bench` as a user runs it: vLLM's real OpenAI server and the in-process vbatch engine,
both on the tiny chat model, plus a dead target and an embeddings-only profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.net import free_port

from vbatch.services.launch import ManagedServer

pytestmark = pytest.mark.engine

REQUESTS, MAX_TOKENS = 8, 8


@pytest.fixture(scope="module")
def vllm_url(tiny_model_dir: Path, tmp_path_factory) -> str:
    """vLLM's OpenAI server on the tiny model, started as its docs say (engine in its own process)."""
    pytest.importorskip("vllm")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    server = ManagedServer(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(tiny_model_dir),
            "--served-model-name",
            "tiny",
            "--max-model-len",
            "512",
            "--enforce-eager",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        base_url=f"http://127.0.0.1:{port}",
        env={**env, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"},
        log_path=tmp_path_factory.mktemp("vllm") / "server.log",
        ready_timeout=600,
    )
    with server:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def tiny_profile(tiny_model_dir: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "tiny.toml"
    path.write_text(
        f'model = "{tiny_model_dir}"\nserved_model_name = "tiny"\n'
        "[engine]\nmax_model_len = 512\nenforce_eager = true\nkv_cache_memory_bytes = 1073741824\n"
    )
    return path


def test_openai_server_and_vbatch_engine_get_the_same_requests(vllm_url: str, tiny_profile: Path, tmp_path: Path):
    dead_url = f"http://127.0.0.1:{free_port()}/v1"
    report_path, plot_path = tmp_path / "report.json", tmp_path / "b.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vbatch",
            "bench",
            "--target",
            f"openai:{vllm_url}:tiny",
            "--target",
            f"vbatch:{tiny_profile}",
            "--target",
            f"openai:{dead_url}:tiny",
            "--target",
            "vbatch:cpu",
            "--concurrency",
            "1,4",
            "--requests",
            str(REQUESTS),
            "--max-tokens",
            str(MAX_TOKENS),
            "--warmup",
            "2",
            "--plot",
            str(plot_path),
            "-o",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # the dead target and the embeddings profile failed
    report = json.loads(report_path.read_text())
    labels = [t["label"] for t in report["targets"]]
    assert labels == [
        f"openai:tiny@{vllm_url.split('/')[2]}",
        "vbatch:tiny",
        f"openai:tiny@{dead_url.split('/')[2]}",
        "vbatch:cpu",
    ]
    server, engine, dead, embeddings = labels
    rows = {(r["target"], r["concurrency"]): r for r in report["rows"]}
    for level in (1, 4):
        served, local = rows[(server, level)], rows[(engine, level)]
        for row in (served, local):
            assert (row["ok"], row["errors"], row["off_length_outputs"]) == (REQUESTS, 0, 0), row["error_samples"]
            assert row["output_tokens"] == REQUESTS * MAX_TOKENS  # ignore_eos honoured by both
            assert row["ttft_s"]["count"] == REQUESTS and row["e2e_s"]["count"] == REQUESTS
            assert row["tpot_s"] is not None and row["requests_per_s"] > 0
        # Same prompts, same chat template, same tokenizer: the same prompt tokens.
        assert served["prompt_tokens"] == local["prompt_tokens"] > 0
        # Gaps between streamed chunks: vLLM holds back a token that ends mid-character, so a
        # chunk can carry two tokens and there are at most (tokens - 1) gaps per request.
        assert 0 < served["itl_s"]["count"] <= REQUESTS * (MAX_TOKENS - 1)
        assert local["itl_s"] is None  # the engine hands back finished requests only
        assert rows[(dead, level)]["errors"] == REQUESTS and rows[(embeddings, level)]["errors"] == REQUESTS

    info = {t["label"]: t for t in report["targets"]}
    assert info[server]["server"].startswith("vLLM ") and info[server]["settings"]["max_model_len"] == 512
    assert "in-process vLLM" in info[engine]["server"] and info[engine]["settings"]["max_model_len"] == 512
    assert "nothing answers" in info[dead]["error"]
    assert "serves embeddings" in info[embeddings]["error"] and "cpu-chat" in info[embeddings]["error"]
    assert report["environment"]["cpu_cores"] >= 1 and report["environment"]["vllm_version"]
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "TTFT ms p50/p95/p99" in proc.stdout and server in proc.stdout
