"""`vbatch run` on a CUDA GPU: chat, completions, structured output, embeddings.

Run on the lent H200 through the GPU kit (docs/gpu.md says how); skipped without CUDA.
Models come from the kit: VBATCH_GPU_MODEL (default /var/tmp/models/small, a random-weight
Qwen2-0.5B-shaped model) and VBATCH_GPU_EMBED_MODEL (default /var/tmp/models/minilm, the real
all-MiniLM-L6-v2 in fp16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

CHAT_MODEL = os.environ.get("VBATCH_GPU_MODEL", "/var/tmp/models/small")
EMBED_MODEL = os.environ.get("VBATCH_GPU_EMBED_MODEL", "/var/tmp/models/minilm")


def run_vbatch(
    tmp_path: Path, lines: list[dict], model: str, max_model_len: int
) -> tuple[dict, list[dict], list[dict]]:
    if not Path(model, "config.json").is_file():
        pytest.fail(f"no model at {model}: fabricate it with the GPU kit's make_model.py (docs/gpu.md)")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    profile = tmp_path / "gpu.toml"
    profile.write_text(
        f'model = "{model}"\nserved_model_name = "m"\n'
        f"[engine]\nmax_model_len = {max_model_len}\ngpu_memory_utilization = 0.5\n"
        "[sampling]\ntemperature = 0.0\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "vbatch", "run", str(src), "--profile", str(profile), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    read = lambda p: [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []  # noqa: E731
    return json.loads(proc.stdout), read(tmp_path / "in.results.jsonl"), read(tmp_path / "in.errors.jsonl")


def test_chat_completions_and_structured_output_on_gpu(tmp_path):
    system = "You are a helpful assistant. " * 40
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    lines = [
        {
            "custom_id": f"chat-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": f"q {i}"}],
                "max_tokens": 16,
                "ignore_eos": True,
            },
        }
        for i in range(32)
    ] + [
        {
            "custom_id": "comp",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "The capital of France is", "max_tokens": 8, "logprobs": 2},
        },
        {
            "custom_id": "json",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "messages": [{"role": "user", "content": "yes or no?"}],
                "max_tokens": 64,
                "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
            },
        },
    ]
    summary, results, errors = run_vbatch(tmp_path, lines, CHAT_MODEL, 2048)
    assert errors == [] and summary["requests"]["ok"] == 34
    by_id = {r["custom_id"]: r["response"]["body"] for r in results}
    assert all(by_id[f"chat-{i}"]["usage"]["completion_tokens"] == 16 for i in range(32))
    # 32 requests share a ~300-token system prompt: the planner runs them together, vLLM caches it.
    assert summary["tokens"]["cached"] > 0.5 * 31 * 300
    assert by_id["comp"]["object"] == "text_completion" and len(by_id["comp"]["choices"][0]["logprobs"]["tokens"]) == 8
    assert json.loads(by_id["json"]["choices"][0]["message"]["content"])["answer"] in ("yes", "no")


def test_embeddings_on_gpu_match_sentence_transformers(tmp_path):
    texts = ["A man is eating food.", "A monkey is playing drums.", "The new movie is awesome."]
    lines = [{"custom_id": f"e{i}", "input": t} for i, t in enumerate(texts)]
    summary, results, errors = run_vbatch(tmp_path, lines, EMBED_MODEL, 256)  # MiniLM's context
    assert errors == []
    got = {r["custom_id"]: r["response"]["body"]["data"][0]["embedding"] for r in results}

    import torch
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(EMBED_MODEL, device="cuda").encode(texts, convert_to_tensor=True).float()
    for i in range(len(texts)):
        cosine = torch.nn.functional.cosine_similarity(
            torch.tensor(got[f"e{i}"], device="cuda"), reference[i], dim=0
        ).item()
        assert cosine > 0.999, (i, cosine)
