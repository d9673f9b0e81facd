"""Between the engine seam's typed values and vLLM's: params out, finished outputs back.

Shared by the in-process engine (`engine.VllmEngine`, over LLMEngine) and the batch server's
(`served.ServedEngine`, over the server's AsyncLLM), so both map requests and read outputs the
same way. vllm is imported inside the methods; detection is by fields, never by version.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from vbatch.core.admission import Footprint
from vbatch.core.engine_io import Choice, EngineRequest, EngineResult, Sampling, Task, TokenLogprob
from vbatch.core.harmony import HARMONY_MODEL_TYPES, require_harmony_encoding, split_harmony
from vbatch.core.tokens import TokenText


@dataclass(slots=True)
class InFlight:
    """A request inside vLLM: what its output needs to become a result, and what admission gave it."""

    key: Hashable
    prompt_tokens: int
    #: Number of top alternatives asked for; None when no logprobs were requested.
    top_logprobs: int | None
    #: Its KV footprint, given back to admission when it finishes; None without admission.
    footprint: Footprint | None


class VllmCodec:
    """What one loaded model needs to turn requests into vLLM params and outputs into results."""

    def __init__(self, model_config: Any, task: Task, max_model_len: int, get_tokenizer: Callable[[], Any]):
        self.task = task
        self.max_model_len = max_model_len
        #: The model's own sampling defaults (generation_config), under every request's values.
        self.default_sampling: dict[str, Any] = self._model_defaults(model_config)
        self._sampling_fields, self._structured = self._detect_sampling_api()
        self._pooling_task = self._detect_pooling_task()
        self._get_tokenizer = get_tokenizer
        self._tokens: TokenText | None = None  # for logprobs; built on first use
        #: gpt-oss answers in harmony: each choice is split into reasoning and final text (the
        #: same test vLLM's server uses to read them).
        hf_config = getattr(model_config, "hf_config", None)
        self.harmony = getattr(hf_config, "model_type", None) in HARMONY_MODEL_TYPES
        if self.harmony:
            require_harmony_encoding()

    @staticmethod
    def _model_defaults(mc: Any) -> dict[str, Any]:
        get = getattr(mc, "get_diff_sampling_param", None)
        if get is None:
            return {}
        try:
            return {k: v for k, v in (get() or {}).items() if v is not None}
        except Exception:
            return {}

    @staticmethod
    def _detect_sampling_api() -> tuple[frozenset[str], tuple[str, Any] | None]:
        """SamplingParams' field names, and (keyword, params class) for structured output."""
        import inspect

        import vllm.sampling_params as sp

        fields = getattr(sp.SamplingParams, "__struct_fields__", None)  # msgspec.Struct
        if fields is None:
            fields = tuple(inspect.signature(sp.SamplingParams).parameters)
        fields = frozenset(fields)
        structured: tuple[str, Any] | None = None
        if "structured_outputs" in fields and hasattr(sp, "StructuredOutputsParams"):
            structured = ("structured_outputs", sp.StructuredOutputsParams)
        elif "guided_decoding" in fields and hasattr(sp, "GuidedDecodingParams"):
            structured = ("guided_decoding", sp.GuidedDecodingParams)
        return fields, structured

    @staticmethod
    def _detect_pooling_task() -> bool:
        """Whether PoolingParams takes task= (it must be "embed": None now means token_embed)."""
        import inspect

        from vllm import PoolingParams

        fields = getattr(PoolingParams, "__struct_fields__", None)
        if fields is None:
            fields = tuple(inspect.signature(PoolingParams).parameters)
        return "task" in fields

    def params(self, req: EngineRequest) -> Any:
        """The request's vLLM params: PoolingParams for embeddings, SamplingParams otherwise."""
        if req.task == "embed":
            from vllm import PoolingParams

            return PoolingParams(task="embed") if self._pooling_task else PoolingParams()
        return self._sampling_params(req.sampling or Sampling(), len(req.prompt_token_ids))

    def _sampling_params(self, sampling: Sampling, prompt_len: int) -> Any:
        """vLLM's SamplingParams: the request's values over the model's own defaults."""
        from vllm import SamplingParams

        kw = dict(self.default_sampling)
        kw.update(sampling.options())
        # Like vLLM's server: up to the context length (SamplingParams' own default is 16).
        kw["max_tokens"] = sampling.max_tokens_for(prompt_len, self.max_model_len)
        if sampling.structured is not None:
            if self._structured is None:
                raise ValueError("the installed vLLM has no structured output support")
            keyword, cls = self._structured
            kw[keyword] = cls(**sampling.structured.params())
        if "output_kind" in self._sampling_fields:
            from vllm.sampling_params import RequestOutputKind

            kw["output_kind"] = RequestOutputKind.FINAL_ONLY
        return SamplingParams(**kw)

    def result(self, out: Any, key: Hashable, prompt_tokens: int, top_logprobs: int | None) -> EngineResult:
        """vLLM's finished RequestOutput (or PoolingRequestOutput) as the seam's result."""
        cached = getattr(out, "num_cached_tokens", None) or 0
        error = getattr(out, "error", None)  # RequestError on newer vLLM
        if error is not None:
            return EngineResult(
                key,
                prompt_tokens=prompt_tokens,
                cached_tokens=cached,
                error=str(getattr(error, "message", None) or error),
            )
        if self.task == "embed":
            return EngineResult(
                key,
                prompt_tokens=prompt_tokens,
                cached_tokens=cached,
                embedding=_embedding(out.outputs),
            )
        choices = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            token_ids = list(c.token_ids)
            logprobs = None
            if top_logprobs is not None and c.logprobs is not None:
                logprobs = self._logprobs(token_ids, c.logprobs, top_logprobs)
            choices.append(
                Choice(
                    index=c.index,
                    text=c.text,
                    token_ids=token_ids,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                    logprobs=logprobs,
                    harmony=split_harmony(token_ids) if self.harmony else None,
                )
            )
        return EngineResult(
            key, prompt_tokens=prompt_tokens, cached_tokens=cached, choices=choices, timings=_timings(out)
        )

    def _logprobs(self, token_ids: list[int], positions: Any, top: int) -> list[TokenLogprob]:
        result = []
        for token_id, pos in zip(token_ids, positions):
            pos = pos or {}
            chosen = pos.get(token_id)
            text = self._token_text(token_id, chosen)
            alternatives = sorted(pos.items(), key=lambda kv: -kv[1].logprob)[:top]
            result.append(
                TokenLogprob(
                    token=text,
                    logprob=float(chosen.logprob) if chosen is not None else float("nan"),
                    token_bytes=self._token_bytes(token_id, text),
                    top=[
                        (t := self._token_text(tid, lp), float(lp.logprob), self._token_bytes(tid, t))
                        for tid, lp in alternatives
                    ],
                )
            )
        return result

    def _token_text(self, token_id: int, lp: Any) -> str:
        text = getattr(lp, "decoded_token", None)
        return self._single_tokens().text(token_id) if text is None else text

    def _token_bytes(self, token_id: int, text: str) -> bytes:
        return self._single_tokens().raw(token_id, text)

    def _single_tokens(self) -> TokenText:
        if self._tokens is None:
            self._tokens = TokenText(self._get_tokenizer())
        return self._tokens


def admission_budget(cache: Any, share: float, task: Task) -> tuple[int | None, int]:
    """(KV tokens admission may fill, block size) from vLLM's CacheConfig; None when unknown.

    Embedding requests hold no KV cache beyond their forward pass: no KV bound for them.
    """
    blocks = getattr(cache, "num_gpu_blocks", None)
    block_size = getattr(cache, "block_size", None)
    if share <= 0 or task != "generate" or not isinstance(blocks, int) or not isinstance(block_size, int):
        return None, 1
    if blocks <= 0 or block_size <= 0:
        return None, 1
    return int(blocks * block_size * share), block_size


def _timings(out: Any) -> dict[str, float] | None:
    """First-token latency and decode time from RequestOutput.metrics (vLLM V1's RequestStateStats,
    present when stats are on); None where this vLLM does not record them."""
    stats = getattr(out, "metrics", None)
    first = getattr(stats, "first_token_latency", None)
    if not isinstance(first, (int, float)) or first <= 0:
        return None
    decode = getattr(stats, "last_token_ts", 0.0) - getattr(stats, "first_token_ts", 0.0)
    return {"first_token_latency": float(first), "decode_seconds": max(0.0, float(decode))}


def _embedding(output: Any) -> list[float]:
    vector = getattr(output, "embedding", None)
    if vector is None:
        vector = output.data
    if hasattr(vector, "tolist"):
        if getattr(vector, "ndim", 1) != 1:
            raise ValueError(f"expected one embedding vector, got shape {tuple(vector.shape)}")
        vector = vector.float().tolist() if hasattr(vector, "float") else vector.tolist()
    return [float(x) for x in vector]


def is_engine_dead(exc: BaseException) -> bool:
    """vLLM's EngineDeadError (by name: its module moved between versions)."""
    return any(cls.__name__ == "EngineDeadError" for cls in type(exc).__mro__)
