"""Benchmark arithmetic, pure: percentiles, throughput, time to first token, inter-token latency.

Every target hands back one `RequestSample` per request, with times in seconds on one
monotonic clock (time.perf_counter). The same formulas then apply to every target:

- TTFT: first_token - start (the first streamed chunk that carried generated text);
- ITL: the gaps between consecutive text-carrying chunks (only where each chunk was seen; a
  server may put more than one token in a chunk, as vLLM does with a partial character);
- TPOT: (last_token - first_token) / (output_tokens - 1), per request;
- E2E: end - start;
- requests/s and output tok/s: over the phase's wall time, successful requests only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestSample:
    ok: bool
    start: float
    end: float
    #: Generated tokens (the server's count where it gives one, else one per text chunk).
    output_tokens: int = 0
    #: What the request asked for (max_tokens), to tell which outputs ended early.
    max_tokens: int | None = None
    prompt_tokens: int | None = None
    first_token: float | None = None
    last_token: float | None = None
    #: Arrival time of every text-carrying chunk; empty where the target does not stream.
    token_times: list[float] = field(default_factory=list)
    #: Server-reported numbers (Ollama's eval_count, eval_duration in seconds, ...), summed per row.
    server: dict[str, float] = field(default_factory=dict)
    #: True when output_tokens is a count of streamed chunks (the server reported no token count).
    tokens_from_chunks: bool = False
    error: str | None = None


def failed(error: str, start: float = 0.0, end: float = 0.0, max_tokens: int | None = None) -> RequestSample:
    return RequestSample(ok=False, start=start, end=end, max_tokens=max_tokens, error=error)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between the closest ranks
    (numpy's default method): percentile([1, 2, 3, 4], 50) == 2.5."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Iterable[float]) -> dict[str, float] | None:
    """p50/p95/p99/mean/count of some latencies; None when there are none (not measurable)."""
    data = list(values)
    if not data:
        return None
    return {
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "mean": sum(data) / len(data),
        "count": len(data),
    }


def ttft(sample: RequestSample) -> float | None:
    return None if sample.first_token is None else sample.first_token - sample.start


def inter_token_gaps(sample: RequestSample) -> list[float]:
    times = sample.token_times
    return [later - earlier for earlier, later in zip(times, times[1:])]


def tpot(sample: RequestSample) -> float | None:
    if sample.first_token is None or sample.last_token is None or sample.output_tokens < 2:
        return None
    return (sample.last_token - sample.first_token) / (sample.output_tokens - 1)


def summarise(samples: list[RequestSample], wall_seconds: float) -> dict[str, Any]:
    """One result row's numbers (the fields of report.ResultRow other than target and concurrency)."""
    ok = [s for s in samples if s.ok]
    output_tokens = sum(s.output_tokens for s in ok)
    prompt_counts = [s.prompt_tokens for s in ok if s.prompt_tokens is not None]
    server: dict[str, float] = {}
    for sample in ok:
        for key, value in sample.server.items():
            server[key] = server.get(key, 0.0) + value
    errors = [s.error or "failed" for s in samples if not s.ok]
    return {
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(errors),
        "duration_s": wall_seconds,
        "requests_per_s": len(ok) / wall_seconds if wall_seconds > 0 else 0.0,
        "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / wall_seconds if wall_seconds > 0 else 0.0,
        "prompt_tokens": sum(prompt_counts) if len(prompt_counts) == len(ok) and ok else None,
        "off_length_outputs": sum(1 for s in ok if s.max_tokens is not None and s.output_tokens != s.max_tokens),
        "ttft_s": distribution(v for s in ok if (v := ttft(s)) is not None),
        "itl_s": distribution(gap for s in ok for gap in inter_token_gaps(s)),
        "tpot_s": distribution(v for s in ok if (v := tpot(s)) is not None),
        "e2e_s": distribution(s.end - s.start for s in ok),
        "server": server,
        "error_samples": list(dict.fromkeys(errors))[:3],
    }


def phase_wall(samples: list[RequestSample], started: float, ended: float) -> float:
    """The phase's wall time: from its start to its end, never less than any one request took."""
    spans = [s.end - s.start for s in samples if s.ok]
    return max([ended - started, *spans])
