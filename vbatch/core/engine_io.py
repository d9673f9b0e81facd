"""What crosses the engine seam: tokenized requests in, results out (plain values, no engine).

They live in the core because the core builds requests (render) and turns results into output
records; `vbatch.engines.base.Engine` is the interface that consumes and produces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Task = Literal["generate", "embed"]


@dataclass(slots=True)
class EngineRequest:
    #: Unique within a run; results come back under the same key (vbatch uses the input line number).
    key: str
    task: Task
    prompt_token_ids: list[int]
    #: vLLM SamplingParams keyword arguments (already merged: body > profile > model defaults),
    #: plus optionally "structured": {"json": <schema dict>} or {"json_object": True}.
    #: Empty for embeddings.
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TokenLogprob:
    """One generated token's log-probability and the top alternatives at that position."""

    token: str
    logprob: float
    token_bytes: bytes
    top: list[tuple[str, float, bytes]]


@dataclass(slots=True)
class Choice:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class EngineResult:
    key: str
    prompt_tokens: int = 0
    #: Prompt tokens served from the prefix cache (vLLM's RequestOutput.num_cached_tokens).
    cached_tokens: int = 0
    choices: list[Choice] = field(default_factory=list)
    embedding: list[float] | None = None
    #: Set when this one request failed (bad sampling parameters, ...); the run goes on.
    error: str | None = None
    #: The engine's own per-request timings in seconds, where it records them (vLLM with stats on):
    #: "first_token_latency" (request added -> first token) and "decode_seconds" (first -> last
    #: token). `vbatch bench` reports time to first token from them.
    timings: dict[str, float] | None = None
