"""What a run reports while it works: its counters, and the interface a progress display implements."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RunStats:
    """What the summary and the progress display show. Counts include resumed work."""

    total: int | None = None
    resumed: int = 0
    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    processing_started: float | None = None
    load_seconds: float = 0.0
    #: From the start of the run (model load included) to the first finished request.
    first_result_seconds: float | None = None

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
