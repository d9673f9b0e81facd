"""One small engine interface: load once, then stream requests in and results out.

The pipeline hands `Engine.run` an iterator of already tokenized requests in the order the
planner chose. The engine pulls from it only as fast as it has room (a bounded number in
flight), so the input is never materialised, and yields each result as soon as it finishes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from vbatch.core.engine_io import EngineRequest, EngineResult, Task


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
