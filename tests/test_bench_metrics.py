"""Benchmark arithmetic on hand-made timings: percentiles, throughput, TTFT/ITL/TPOT from chunks."""

from __future__ import annotations

import pytest

from vbatch.core.engine_io import Choice, EngineResult
from vbatch.services.bench.engine_target import engine_sample
from vbatch.services.bench.http_targets import ollama_sample, openai_sample
from vbatch.services.bench.metrics import (
    RequestSample,
    distribution,
    failed,
    inter_token_gaps,
    percentile,
    phase_wall,
    summarise,
    tpot,
    ttft,
)


def test_percentile_interpolates_between_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    # 1..100: rank 0.95 * 99 = 94.05 -> 95 + 0.05 * (96 - 95)
    assert percentile([float(v) for v in range(1, 101)], 95) == pytest.approx(95.05)
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_nonsense():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_of_nothing_is_not_available():
    assert distribution([]) is None
    assert distribution([0.1, 0.3]) == {
        "p50": pytest.approx(0.2),
        "p95": pytest.approx(0.29),
        "p99": pytest.approx(0.298),
        "mean": pytest.approx(0.2),
        "count": 2,
    }


def test_ttft_itl_tpot_from_token_times():
    sample = RequestSample(
        ok=True,
        start=10.0,
        end=10.5,
        output_tokens=4,
        first_token=10.2,
        last_token=10.5,
        token_times=[10.2, 10.3, 10.45, 10.5],
    )
    assert ttft(sample) == pytest.approx(0.2)
    assert inter_token_gaps(sample) == pytest.approx([0.1, 0.15, 0.05])
    assert tpot(sample) == pytest.approx(0.1)  # (10.5 - 10.2) / (4 - 1)
    assert tpot(RequestSample(ok=True, start=0, end=1, output_tokens=1, first_token=0.5, last_token=0.5)) is None


def test_summarise_counts_only_successes_in_throughput():
    samples = [
        RequestSample(
            ok=True,
            start=0.0,
            end=1.0,
            output_tokens=8,
            max_tokens=8,
            prompt_tokens=20,
            first_token=0.2,
            last_token=0.9,
            token_times=[0.2, 0.3, 0.9],
        ),
        RequestSample(
            ok=True,
            start=0.5,
            end=2.0,
            output_tokens=5,
            max_tokens=8,
            prompt_tokens=22,
            first_token=1.0,
            last_token=2.0,
            token_times=[1.0, 2.0],
        ),
        failed("HTTP 500: boom", 0.1, 0.2, 8),
        failed("HTTP 500: boom", 0.3, 0.4, 8),
    ]
    row = summarise(samples, wall_seconds=2.0)
    assert (row["requests"], row["ok"], row["errors"]) == (4, 2, 2)
    assert row["requests_per_s"] == pytest.approx(1.0)
    assert row["output_tokens"] == 13
    assert row["output_tokens_per_s"] == pytest.approx(6.5)
    assert row["prompt_tokens"] == 42
    assert row["off_length_outputs"] == 1
    assert row["ttft_s"]["p50"] == pytest.approx(0.35)  # of 0.2 and 0.5
    # Gaps 0.1 and 0.6 (first request) and 1.0 (second), pooled.
    assert row["itl_s"]["count"] == 3 and row["itl_s"]["p50"] == pytest.approx(0.6)
    assert row["e2e_s"]["p50"] == pytest.approx(1.25)
    assert row["error_samples"] == ["HTTP 500: boom"]


def test_summarise_of_failures_only_has_no_latencies():
    row = summarise([failed("nothing answers")] * 3, 0.0)
    assert (row["ok"], row["errors"], row["requests_per_s"]) == (0, 3, 0.0)
    assert row["ttft_s"] is row["itl_s"] is row["e2e_s"] is None
    assert row["prompt_tokens"] is None


def test_phase_wall_is_never_shorter_than_one_request():
    samples = [RequestSample(ok=True, start=1.0, end=4.0)]
    assert phase_wall(samples, 1.5, 3.0) == pytest.approx(3.0)
    assert phase_wall(samples, 0.0, 5.0) == pytest.approx(5.0)


def _chunk(content=None, role=None, finish=None, usage=None):
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        chunk = {"object": "chat.completion.chunk", "choices": [], "usage": usage}
    return chunk


def test_openai_stream_ttft_skips_the_role_chunk_and_uses_the_usage_count():
    # vLLM's shape: a role chunk with "" content, one chunk per token, then usage.
    events = [
        (0.05, _chunk(role="assistant", content="")),
        (0.30, _chunk(content="Hel")),
        (0.40, _chunk(content="lo")),
        (0.55, _chunk(content="!", finish="length")),
        (0.56, _chunk(usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})),
    ]
    sample = openai_sample(0.0, 0.6, events, max_tokens=3)
    assert sample.ok and not sample.tokens_from_chunks
    assert ttft(sample) == pytest.approx(0.30)
    assert inter_token_gaps(sample) == pytest.approx([0.10, 0.15])
    assert (sample.output_tokens, sample.prompt_tokens) == (3, 9)


def test_openai_stream_without_usage_counts_output_chunks():
    # llama.cpp's shape: role chunk without content, "" for a token that ends mid-character, no usage.
    events = [
        (0.1, _chunk(role="assistant")),
        (0.2, _chunk(content="a")),
        (0.25, _chunk(content="")),
        (0.3, _chunk(content="b")),
        (0.31, {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
    ]
    sample = openai_sample(0.0, 0.4, events, max_tokens=4)
    assert sample.tokens_from_chunks and sample.output_tokens == 3
    assert ttft(sample) == pytest.approx(0.2)


def test_openai_completions_stream_and_error_chunk():
    events = [(0.1, {"choices": [{"index": 0, "text": "x"}]}), (0.2, {"choices": [{"index": 0, "text": "y"}]})]
    assert openai_sample(0.0, 0.3, events, 2).output_tokens == 2
    broken = openai_sample(0.0, 0.3, [(0.1, {"error": {"message": "out of memory", "code": 500}})], 2)
    assert not broken.ok and broken.error == "out of memory"


def test_ollama_final_chunk_gives_counts_and_nanosecond_durations():
    events = [
        (0.2, {"model": "llama3.2", "message": {"role": "assistant", "content": "The"}, "done": False}),
        (0.3, {"model": "llama3.2", "message": {"role": "assistant", "content": " sky"}, "done": False}),
        (
            0.35,
            {
                "model": "llama3.2",
                "done": True,
                "total_duration": 4883583458,
                "load_duration": 1334875,
                "prompt_eval_count": 26,
                "prompt_eval_duration": 342546000,
                "eval_count": 282,
                "eval_duration": 4535599000,
            },
        ),
    ]
    sample = ollama_sample(0.0, 0.4, events, max_tokens=300)
    assert sample.ok and sample.output_tokens == 282 and sample.prompt_tokens == 26
    assert ttft(sample) == pytest.approx(0.2)
    assert sample.server["eval_s"] == pytest.approx(4.535599)
    assert sample.server["load_s"] == pytest.approx(0.001334875)
    assert sample.server["eval_count"] == 282


def test_ollama_stream_without_final_chunk_or_with_error_fails():
    cut = ollama_sample(0.0, 0.1, [(0.05, {"message": {"content": "a"}, "done": False})], 8)
    assert not cut.ok and "done: true" in cut.error
    error = ollama_sample(0.0, 0.1, [(0.05, {"error": "model 'x' not found"})], 8)
    assert not error.ok and error.error == "model 'x' not found"


def test_engine_sample_places_the_engines_first_token_after_the_request_was_taken():
    result = EngineResult(
        "1",
        prompt_tokens=12,
        choices=[Choice(0, "abc", [5, 6, 7, 8], "length")],
        timings={"first_token_latency": 0.25, "decode_seconds": 0.3},
    )
    sample = engine_sample(result, start=2.0, end=2.6, max_tokens=4)
    assert ttft(sample) == pytest.approx(0.25)
    assert tpot(sample) == pytest.approx(0.1)
    assert inter_token_gaps(sample) == []  # finished results only: no per-token arrivals
    untimed = engine_sample(EngineResult("2", choices=[Choice(0, "a", [1], "length")]), 0.0, 1.0, 1)
    assert ttft(untimed) is None
    assert not engine_sample(EngineResult("3", error="bad params"), 0.0, 0.1, 4).ok
