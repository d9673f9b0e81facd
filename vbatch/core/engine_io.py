"""What crosses the engine seam: tokenized requests in, results out (plain values, no engine).

They live in the core because the core builds requests (render) and turns results into output
records; `vbatch.engines.base.Engine` is the interface that consumes and produces them. The
request side speaks OpenAI's sampling names (which vLLM shares); each engine maps them to its
own parameters (`engines/vllm` to SamplingParams, `engines/remote` to a /v1/completions body).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple

from vbatch.core.harmony import HarmonySplit

Task = Literal["generate", "embed"]


class PromptKey(NamedTuple):
    """Which input line a prompt comes from, and which of its prompts it is (an embedding
    request with several inputs sends one prompt each); vbatch's key for engine requests."""

    line: int
    part: int = 0


def context_left(prompt_len: int, max_model_len: int) -> int:
    """OpenAI's default max_tokens: as many tokens as the context leaves after the prompt (at least 1)."""
    return max(1, max_model_len - prompt_len)


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """Generated text constrained to JSON: matching `schema`, or any JSON object when it is None."""

    schema: dict[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        """vLLM's structured-output parameters (StructuredOutputsParams, and its server's field)."""
        return {"json_object": True} if self.schema is None else {"json": self.schema}


@dataclass(slots=True)
class Sampling:
    """How to generate one request, in OpenAI's field names; None leaves a field to the model's default."""

    #: None only from callers that skip render: then what the context leaves (`max_tokens_for`).
    max_tokens: int | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None
    #: Alternatives to report per generated token (0: only the chosen one); None: no logprobs.
    logprobs: int | None = None
    structured: StructuredOutput | None = None

    def max_tokens_for(self, prompt_len: int, max_model_len: int) -> int:
        return self.max_tokens or context_left(prompt_len, max_model_len)

    def options(self) -> dict[str, Any]:
        """The fields that are set, by name; `structured` left to each engine to map."""
        return {name: value for name in SAMPLING_OPTIONS if (value := getattr(self, name)) is not None}


#: Sampling's plain fields, the same names in OpenAI's API and in vLLM's SamplingParams.
SAMPLING_OPTIONS = tuple(f.name for f in fields(Sampling) if f.name != "structured")


@dataclass(slots=True)
class EngineRequest:
    #: Unique within a run; results come back under the same key (vbatch's is a PromptKey).
    key: Hashable
    task: Task
    prompt_token_ids: list[int]
    #: None for embeddings.
    sampling: Sampling | None = None

    def output_tokens(self, max_model_len: int) -> int:
        """The most tokens this request may add to the KV cache: max_tokens for each of n."""
        sampling = self.sampling or Sampling()
        return sampling.max_tokens_for(len(self.prompt_token_ids), max_model_len) * self.sequences

    @property
    def sequences(self) -> int:
        """How many sequences it decodes at once: its n."""
        return (self.sampling.n or 1) if self.sampling else 1

    @property
    def top_logprobs(self) -> int | None:
        """How many alternatives per token a generate request asks for; None for no logprobs."""
        return None if self.sampling is None else self.sampling.logprobs


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
    #: A harmony model's answer split into reasoning and final text (chat results show it);
    #: None for other models, whose text is the answer.
    harmony: HarmonySplit | None = None


@dataclass(slots=True)
class EngineResult:
    key: Hashable
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
