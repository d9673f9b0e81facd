"""What a run reports: its counters while it works, the interface a progress display implements,
and the summary it leaves (`RunSummary`, the <stem>.summary.json of every run)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


@dataclass
class RunStats:
    """What the summary and the progress display show. Counts include resumed work."""

    total: int | None = None
    resumed: int = 0
    ok: int = 0
    failed: int = 0
    #: Of `ok`: answered with an identical request's result instead of running (core.dedup).
    deduplicated: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    #: Of completion_tokens: spent in a reasoning model's analysis channel (gpt-oss).
    reasoning_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    processing_started: float | None = None
    load_seconds: float = 0.0
    #: From the start of the run (model load included) to the first finished request.
    first_result_seconds: float | None = None
    #: Puts every record counted so far on disk (the run sets it). A reporter that publishes the
    #: counts outside the process calls it first, so a crash cannot take back what it published.
    sync: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    @property
    def processing_seconds(self) -> float:
        return time.monotonic() - self.processing_started if self.processing_started else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        seconds = self.processing_seconds
        return self.completion_tokens / seconds if seconds > 0 else 0.0

    @property
    def cache_hit_share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class Reporter:
    """Progress display interface; the CLI passes a rich or plain one (vbatch.cli.progress)."""

    def phase(self, text: str) -> None: ...
    def start(self, stats: RunStats) -> None: ...
    def update(self, stats: RunStats) -> None: ...
    def stop(self, stats: RunStats) -> None: ...


class RequestCounts(BaseModel):
    """A run's requests; every count includes the work resumed from an earlier, interrupted run."""

    model_config = ConfigDict(extra="forbid")

    total: int
    ok: int
    failed: int
    #: Finished (ok or failed) by the earlier run this one resumed.
    resumed: int
    #: Of `ok`: identical deterministic requests answered with the first one's result, not run.
    deduplicated: int = 0


class TokenCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: int
    #: Prompt tokens the prefix cache served.
    cached: int
    completion: int
    #: Of completion: a reasoning model's reasoning (gpt-oss); 0 for other models.
    reasoning: int = 0


class RunSummary(BaseModel):
    """What a run did: written to <stem>.summary.json, printed by `vbatch run --json`, returned by
    `run_batch`. Its JSON (`to_dict`) keeps the keys in this order."""

    model_config = ConfigDict(extra="forbid")

    input: str
    results: str
    errors: str
    model: str
    #: Where the model ran, or why it was not loaded.
    engine: str
    profile: str
    requests: RequestCounts
    tokens: TokenCounts
    output_tokens_per_s: float
    prefix_cache_hit_share: float
    planned_prefix_share: float
    file_order_prefix_share: float
    engine_metrics: dict[str, float]
    wall_seconds: float
    load_seconds: float
    #: From the start of the run (model load included) to the first finished request.
    first_result_seconds: float
    processing_seconds: float
    vbatch_version: str
    #: The run's labels (--meta key=value), under the key "meta" users' scripts read.
    meta: dict[str, str]
    #: This call found the run complete already and did nothing. In the JSON only when true.
    already_complete: bool = False

    @model_serializer(mode="wrap")
    def _already_complete_only_when_true(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.already_complete:
            data.pop("already_complete", None)
        return data

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON values, as the summary file and `vbatch run --json` hold it."""
        return self.model_dump(mode="json")
