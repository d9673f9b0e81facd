"""The probe of issue 10 through `vbatch run` and the real engine: every bad line becomes its
own error record with the right code, the good lines beside them all get results, nothing
crashes, and a rerun of the same command finishes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import vbatch
from support.jsonl import chat_line, read_jsonl

pytestmark = pytest.mark.engine

GOOD = [
    chat_line(1),
    {
        "custom_id": "p1",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"prompt": "Once upon a time", "max_tokens": 4},
    },
    {"custom_id": "ids", "prompt": [1, 2, 3, 511], "max_tokens": 3},
    {
        "custom_id": "edges",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 2,
        "top_p": 1,
        "presence_penalty": -2,
        "frequency_penalty": 2,
        "stop": ["a", "b", "c", "d"],
        "seed": 2**63 - 1,
        "top_k": -1,
        "min_p": 0,
        "repetition_penalty": 1.5,
        "min_tokens": 4,
    },
]

# custom_id -> (line, the error code, what the message must say)
BAD = {
    # token ids: past int32 (crashed the run), past the tiny model's 512-token vocabulary, negative
    "big-id": ({"prompt": [2147483648], "max_tokens": 4}, "invalid_body", "body.prompt.0:"),
    "oov": ({"prompt": [5, 600], "max_tokens": 4}, "invalid_body", "body.prompt.1: token id 600 is not in"),
    "emb-big": ({"input": [2147483648]}, "invalid_body", "body.input.0:"),
    "emb-neg": ({"input": [[1, 2], [-5]]}, "invalid_body", "body.input.1.0:"),
    "emb-ok": ({"input": [1, 2]}, "unsupported_endpoint", "embeddings requests cannot run"),
    # 5 MB of text for a context of 512 tokens: rejected after one window, not 1M tokens
    "huge": ({"prompt": "word " * 1_000_000, "max_tokens": 4}, "context_length_exceeded", "the prompt is at least"),
    # out-of-range sampling values: vLLM's own exception text before
    "hot": ({"prompt": "x", "temperature": 3}, "invalid_body", "body.temperature:"),
    "top-p": ({"prompt": "x", "top_p": 0}, "invalid_body", "body.top_p:"),
    "presence": ({"prompt": "x", "presence_penalty": 2.5}, "invalid_body", "body.presence_penalty:"),
    "frequency": ({"prompt": "x", "frequency_penalty": -3}, "invalid_body", "body.frequency_penalty:"),
    "stop": ({"prompt": "x", "stop": ""}, "invalid_body", "body.stop:"),
    "min-tokens": ({"prompt": "x", "max_tokens": 4, "min_tokens": 8}, "invalid_body", "body.min_tokens:"),
    "schema": (
        {
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "nonsense"}}},
        },
        "invalid_body",
        "body.response_format.json_schema.schema: not a valid JSON Schema",
    ),
    "top-k": ({"prompt": "x", "top_k": 2**63}, "invalid_body", "body.top_k:"),
    "min-p": ({"prompt": "x", "min_p": 2}, "invalid_body", "body.min_p:"),
    "repetition": ({"prompt": "x", "repetition_penalty": 1e308}, "invalid_body", "body.repetition_penalty:"),
    "seed": ({"prompt": "x", "seed": 2**64}, "invalid_body", "body.seed:"),
    # types OpenAI rejects, coerced before
    "str-int": ({"prompt": "x", "max_tokens": "1"}, "invalid_body", "body.max_tokens:"),
    "bool-float": ({"prompt": "x", "temperature": True}, "invalid_body", "body.temperature:"),
    "bool-id": ({"prompt": [True], "max_tokens": 2}, "invalid_body", "body.prompt.0:"),
    "str-n": ({"messages": [{"role": "user", "content": "x"}], "n": "2"}, "invalid_body", "body.n:"),
}


def test_probe_lines_become_error_records_beside_results_and_a_rerun_finishes(tmp_path: Path, tiny_profile: Path):
    lines = [*GOOD[:2], *({"custom_id": cid, **body} for cid, (body, _, _) in BAD.items()), *GOOD[2:]]
    src = tmp_path / "probe.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = ["run", str(src), "--profile", str(tiny_profile), "--json"]

    proc = vbatch(*command)
    assert proc.returncode == 1, proc.stderr  # finished, some requests failed
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] == {
        "total": len(lines),
        "ok": len(GOOD),
        "failed": len(BAD),
        "resumed": 0,
        "deduplicated": 0,
    }
    results = read_jsonl(tmp_path / "probe.results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(g["custom_id"] for g in GOOD)
    errors = read_jsonl(tmp_path / "probe.errors.jsonl")
    assert sorted(e["custom_id"] for e in errors) == sorted(BAD)  # one record per bad line
    for record in errors:
        _, code, words = BAD[record["custom_id"]]
        assert record["error"]["code"] == code, record
        assert words in record["error"]["message"], record
        assert "Error:" not in record["error"]["message"], record  # no Python exception text

    rerun = vbatch(*command)
    assert rerun.returncode == 1, rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert json.loads(rerun.stdout)["requests"]["failed"] == len(BAD)
    assert read_jsonl(tmp_path / "probe.results.jsonl") == results
    assert len(read_jsonl(tmp_path / "probe.errors.jsonl")) == len(BAD)


def test_embedding_token_ids_on_an_embedding_model(tmp_path: Path, minilm_dir: Path):
    """On MiniLM (vocabulary 30522, context 256) token-id inputs are valid: the good ones embed,
    the bad ones are invalid_body naming the place, beside a chat line it cannot run."""
    lines = [
        {"custom_id": "ids", "input": [101, 7592, 102]},
        {"custom_id": "nested", "input": [[101, 102], [101, 7592, 2088, 102]]},
        {"custom_id": "text", "input": "hello world"},
        {"custom_id": "big-id", "input": [2147483648]},
        {"custom_id": "negative", "input": [[1, 2], [-5]]},
        {"custom_id": "oov", "input": [[101, 102], [101, 30522]]},
        {"custom_id": "huge", "input": "word " * 200_000},
        {"custom_id": "chat", "messages": [{"role": "user", "content": "hi"}]},
    ]
    src = tmp_path / "emb.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = vbatch("run", str(src), "--profile", "cpu", "-q")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    results = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(tmp_path / "emb.results.jsonl")}
    assert sorted(results) == ["ids", "nested", "text"] and len(results["nested"]["data"]) == 2
    errors = {e["custom_id"]: e["error"] for e in read_jsonl(tmp_path / "emb.errors.jsonl")}
    assert {cid: e["code"] for cid, e in errors.items()} == {
        "big-id": "invalid_body",
        "negative": "invalid_body",
        "oov": "invalid_body",
        "huge": "context_length_exceeded",
        "chat": "unsupported_endpoint",
    }
    assert "body.input.1.1: token id 30522 is not in the model's vocabulary" in errors["oov"]["message"]
    assert "body.input.1.0:" in errors["negative"]["message"] and "at least" in errors["huge"]["message"]
