"""One small engine interface: load once, then stream requests in and results out.

The pipeline hands `Engine.run` an iterator of already tokenized requests in the order the
planner chose. The engine pulls from it only as fast as it has room (a bounded number in
flight), so the input is never materialised, and yields each result as soon as it finishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal, Protocol

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


class Engine(Protocol):
    #: The task the loaded model serves: "generate" for chat/completions, "embed" for embeddings.
    task: Task
    #: Name reported in the "model" field of responses.
    model_name: str
    max_model_len: int
    #: Seconds spent loading the model (for the summary).
    load_seconds: float
    #: Where the model runs, for the summary: "local" (this process) or the server's URL.
    location: str

    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer (apply_chat_template, encode) identical to the engine's own."""

    def run(self, requests: Iterable[EngineRequest]) -> Iterator[EngineResult]:
        """Stream `requests` through the model; yield results in completion order.

        Pulls lazily, keeping at most the configured number of requests in flight, so the
        accelerator never idles between chunks. A failure of one request is an EngineResult
        with `error` set; a failure of the engine itself raises vbatch.errors.EngineError.
        """

    def metrics(self) -> dict[str, float]:
        """Engine counters for the summary (e.g. prefix_cache_queries, prefix_cache_hits, preemptions)."""

    def close(self) -> None:
        """Release the model and its memory."""
