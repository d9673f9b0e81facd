"""An engine that answers instantly, for measuring vbatch's own host path (reading,
validating, rendering, tokenizing, planning, writing) and for tests of pipeline logic.

It uses a real Hugging Face tokenizer, so everything up to the engine is what a real run
does; only generation is replaced by a fixed answer of the requested length.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any

from vbatch.core.engine_io import Choice, EngineRequest, EngineResult, Sampling, Task


class NullEngine:
    def __init__(
        self,
        tokenizer: Any,
        *,
        task: Task = "generate",
        max_model_len: int = 4096,
        model_name: str = "null",
        fail_keys: frozenset[Hashable] = frozenset(),
    ):
        self._tokenizer = tokenizer
        self.task = task
        self.max_model_len = max_model_len
        self.model_name = model_name
        self.load_seconds = 0.0
        self.location = "null (no model: host-path benchmarks and tests)"
        self.fail_keys = fail_keys
        self.pulled = 0

    @classmethod
    def from_model_dir(cls, path: str, **kwargs: Any) -> NullEngine:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(path), **kwargs)

    def tokenizer(self) -> Any:
        return self._tokenizer

    def run(self, requests: Iterable[EngineRequest]) -> Iterator[EngineResult]:
        for request in requests:
            self.pulled += 1
            if request.key in self.fail_keys:
                yield EngineResult(request.key, error="failed on purpose (NullEngine.fail_keys)")
                continue
            prompt_tokens = len(request.prompt_token_ids)
            if request.task == "embed":
                yield EngineResult(request.key, prompt_tokens=prompt_tokens, embedding=[0.0] * 8)
                continue
            sampling = request.sampling or Sampling()
            length = sampling.max_tokens_for(prompt_tokens, self.max_model_len)
            choices = [
                Choice(index=i, text="x" * length, token_ids=[0] * length, finish_reason="length")
                for i in range(sampling.n or 1)
            ]
            yield EngineResult(request.key, prompt_tokens=prompt_tokens, choices=choices)

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass
