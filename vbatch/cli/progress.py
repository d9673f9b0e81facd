"""Progress for long runs: a rich bar on a terminal, a plain periodic line otherwise
(cron mail, the systemd journal), nothing with --quiet. All of it goes to stderr; which one a
command shows, `vbatch.cli.output.Output.reporter` decides."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

from vbatch.services.reporting import Reporter, RunStats

if TYPE_CHECKING:
    from rich.console import Console


def _eta(stats: RunStats) -> str:
    new_done = stats.done - stats.resumed
    if not stats.total or new_done <= 0:
        return "?"
    seconds = stats.processing_seconds / new_done * max(stats.total - stats.done, 0)
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def status_line(stats: RunStats) -> str:
    total = f"/{stats.total}" if stats.total else ""
    percent = f" ({100 * stats.done / stats.total:.0f}%)" if stats.total else ""
    return (
        f"{stats.done}{total} done{percent}, {stats.failed} failed, "
        f"{stats.output_tokens_per_s:,.0f} out tok/s, cache hits {100 * stats.cache_hit_share:.0f}%, "
        f"eta {_eta(stats)}"
    )


class PlainReporter(Reporter):
    def __init__(self, stream: TextIO, interval: float):
        self.stream = stream
        self.interval = interval
        self.last = 0.0

    def _say(self, text: str) -> None:
        print(f"vbatch: {text}", file=self.stream, flush=True)

    def phase(self, text: str) -> None:
        self._say(text)

    def start(self, stats: RunStats) -> None:
        resumed = f"resuming after {stats.resumed} done" if stats.resumed else ""
        # A drain's later jobs, or a run through a server, waited for no load.
        loaded = f"model loaded in {stats.load_seconds:.1f}s" if stats.load_seconds >= 0.05 else ""
        if loaded or resumed:
            self._say(", ".join(part for part in (loaded, resumed) if part))
        self.last = time.monotonic()

    def update(self, stats: RunStats) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._say(status_line(stats))

    def stop(self, stats: RunStats) -> None:
        self._say(status_line(stats))


class RichReporter(Reporter):
    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.progress = Progress(
            TextColumn("[bold]vbatch[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            transient=False,
        )
        self.task = None
        self.last = 0.0

    def phase(self, text: str) -> None:
        self.console.print(f"[dim]{text}…[/]")

    def start(self, stats: RunStats) -> None:
        self.progress.start()
        self.task = self.progress.add_task("run", total=stats.total, completed=stats.done, detail="")

    def update(self, stats: RunStats) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        self._refresh(stats)

    def _refresh(self, stats: RunStats) -> None:
        detail = (
            f"{stats.failed} failed · {stats.output_tokens_per_s:,.0f} out tok/s · "
            f"cache {100 * stats.cache_hit_share:.0f}%"
        )
        self.progress.update(self.task, completed=stats.done, detail=detail)

    def stop(self, stats: RunStats) -> None:
        if self.task is not None:
            self._refresh(stats)
        self.progress.stop()
