"""A run's metrics for node_exporter's textfile collector (`--metrics-textfile`, `[batch].metrics_textfile`).

After each `vbatch run`, and after each job of `vbatch drain`, the batch's series are written
into one `.prom` file with prometheus_client: the file is written beside its final name and
renamed over it (`write_to_textfile`), so the collector never reads half a file. One file holds
many batches: the series of other batches already in it are read back and kept, this batch's
are replaced, so cron lines running several batch files into one file do not clobber each
other. A lock on the file's directory keeps two runs finishing at once from losing one update.

Every metric is a gauge holding the batch's last run, labelled `batch`: the input file's stem
(for a drain's job too, whose directory may be a-2 when a.jsonl comes again). Not `job`:
Prometheus sets `job` (and `instance`) on everything it scrapes from node_exporter, and would
rename the file's own to `exported_job`.

A run that finishes sets every series of its batch, `vbatch_last_success_timestamp_seconds`
included; a run with failed requests finished too (they are in `vbatch_requests{outcome="failed"}`
and the errors file). A run that stops with an error (an input it cannot read, an engine that
fails, a changed input) sets only `vbatch_last_failure_timestamp_seconds`: the batch's last
success and its figures stay as they were. An interrupted run (Ctrl-C, SIGTERM) sets nothing.
Alert on `time() - vbatch_last_success_timestamp_seconds` and on
`vbatch_last_failure_timestamp_seconds > vbatch_last_success_timestamp_seconds`.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vbatch.errors import UsageError, VbatchError
from vbatch.services.reporting import Reporter, RunSummary
from vbatch.services.run import EngineLoader, RunSpec, run_batch
from vbatch.storage.outputs import output_stem

#: The label naming the batch on every series.
LABEL = "batch"
SUCCESS = "vbatch_last_success_timestamp_seconds"
FAILURE = "vbatch_last_failure_timestamp_seconds"
#: Every metric, in the file's order: its help text and its label beside `batch`, if any.
METRICS: dict[str, tuple[str, str | None]] = {
    SUCCESS: ("When the batch's last run finished (Unix time), failed requests or not.", None),
    FAILURE: ("When a run of the batch last stopped with an error (Unix time).", None),
    "vbatch_run_duration_seconds": ("Wall time of the batch's last finished run, model load included.", None),
    "vbatch_requests": (
        "Requests of the batch's last finished run by outcome (ok, failed), resumed ones included.",
        "outcome",
    ),
    "vbatch_tokens": ("Tokens of the batch's last finished run by kind (prompt, output).", "kind"),
    "vbatch_cached_prompt_tokens": ("Prompt tokens of the batch's last finished run served by the prefix cache.", None),
    "vbatch_output_tokens_per_second": ("Output tokens per second of the batch's last finished run.", None),
    "vbatch_prefix_cache_hit_ratio": (
        "Share of the prompt tokens of the batch's last finished run served by the prefix cache (0 to 1).",
        None,
    ),
}

#: One series: its metric's name and its labels, sorted.
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
#: Told when the file could not be written: (message, hint). The run goes on.
Warn = Callable[[str, str | None], None]


def _series(name: str, batch: str, **labels: str) -> SeriesKey:
    return name, tuple(sorted({LABEL: batch, **labels}.items()))


def success_series(batch: str, summary: RunSummary, now: float) -> dict[SeriesKey, float]:
    """Every series of a batch whose run finished at `now`, from its summary."""
    req, tok = summary.requests, summary.tokens
    return {
        _series(SUCCESS, batch): now,
        _series("vbatch_run_duration_seconds", batch): summary.wall_seconds,
        _series("vbatch_requests", batch, outcome="ok"): req.ok,
        _series("vbatch_requests", batch, outcome="failed"): req.failed,
        _series("vbatch_tokens", batch, kind="prompt"): tok.prompt,
        _series("vbatch_tokens", batch, kind="output"): tok.completion,
        _series("vbatch_cached_prompt_tokens", batch): tok.cached,
        _series("vbatch_output_tokens_per_second", batch): summary.output_tokens_per_s,
        _series("vbatch_prefix_cache_hit_ratio", batch): summary.prefix_cache_hit_share,
    }


def failure_series(batch: str, now: float) -> dict[SeriesKey, float]:
    return {_series(FAILURE, batch): now}


def batch_label(spec: RunSpec) -> str:
    """A run's `batch` label: its input's stem (batch.jsonl.gz -> batch); from stdin, its results'."""
    return output_stem(spec.output if spec.input == "-" else Path(spec.input)).name


@dataclass(frozen=True)
class MetricsTextfile:
    """The .prom file runs write their metrics into; `warn` is told when a write fails."""

    path: Path
    warn: Warn

    @classmethod
    def of(cls, path: str | Path | None, warn: Warn) -> MetricsTextfile | None:
        """The textfile at path (None: no metrics), checked before any run starts."""
        if not path:
            return None
        target = Path(path).expanduser()
        where = "(--metrics-textfile, $VBATCH_METRICS_TEXTFILE or the profile's [batch].metrics_textfile)"
        example = "e.g. /var/lib/node_exporter/textfile_collector/vbatch.prom"
        if target.is_dir():
            raise UsageError(f"metrics textfile {target} is a directory", hint=f"name a file in it, {example} {where}")
        if not target.name.endswith(".prom"):
            raise UsageError(
                f"metrics textfile {target} does not end in .prom",
                hint=f"node_exporter's textfile collector reads only *.prom files: {example} {where}",
            )
        if not target.parent.is_dir():
            raise UsageError(
                f"the directory of metrics textfile {target} does not exist",
                hint=f"create it (mkdir -p {target.parent}), or name a file in node_exporter's "
                f"--collector.textfile.directory {where}",
            )
        return cls(target, warn)

    def record_success(self, batch: str, summary: RunSummary) -> None:
        self.record(batch, success_series(batch, summary, time.time()))

    def record_failure(self, batch: str) -> None:
        self.record(batch, failure_series(batch, time.time()))

    def record(self, batch: str, series: dict[SeriesKey, float]) -> None:
        """Replace this batch's values of the metrics in `series` and keep everything else; a
        failure to write is told to `warn`, never raised (the run's results are written)."""
        try:
            with _directory_locked(self.path.parent):
                kept = self._read()
                replaced = {name for name, _ in series}
                kept = {key: v for key, v in kept.items() if not (key[0] in replaced and dict(key[1])[LABEL] == batch)}
                _write(self.path, {**kept, **series})
        except OSError as exc:
            self.warn(
                f"metrics not written to {self.path}: {exc.strerror or exc}",
                "check that its directory is writable by this user (a systemd unit: ReadWritePaths=); "
                "the run's results are written",
            )

    def _read(self) -> dict[SeriesKey, float]:
        """vbatch's series in the file now (none if it does not exist, or cannot be parsed)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:  # UnicodeDecodeError too
            self.warn(f"metrics textfile {self.path} could not be parsed ({exc}); replacing it", None)
            return {}
        found: dict[SeriesKey, float] = {}
        for family in families:
            if family.name not in METRICS:
                continue  # no metric of this version of vbatch: dropped
            names = _label_names(family.name)
            for sample in family.samples:
                if sample.name == family.name and set(sample.labels) == set(names):
                    found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found


def _label_names(name: str) -> list[str]:
    extra = METRICS[name][1]
    return [LABEL, extra] if extra else [LABEL]


class _Families:
    """A collector of fixed metric families. Families rather than Gauge objects: a Gauge keeps
    its value in a file of $PROMETHEUS_MULTIPROC_DIR when that is set (vLLM sets it)."""

    def __init__(self, families: list[Any]):
        self._families = families

    def collect(self) -> Iterator[Any]:
        yield from self._families


def _write(path: Path, series: dict[SeriesKey, float]) -> None:
    """The whole file, through a temporary file beside it renamed over it (prometheus_client's
    write_to_textfile: the collector reads only *.prom, so never the temporary file)."""
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import GaugeMetricFamily

    families = []
    for name, (documentation, _) in METRICS.items():
        names = _label_names(name)
        family = GaugeMetricFamily(name, documentation, labels=names)
        for (_, labels), value in sorted(item for item in series.items() if item[0][0] == name):
            family.add_metric([dict(labels)[label] for label in names], value)
        if family.samples:
            families.append(family)
    registry = CollectorRegistry()
    registry.register(_Families(families))
    write_to_textfile(str(path), registry)


@contextmanager
def _directory_locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on the directory while the file is read and written again (held for
    milliseconds). Where the file system has no flock, the write goes on unlocked."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing drops the lock


def run_recorded(spec: RunSpec, reporter: Reporter, load: EngineLoader, metrics: MetricsTextfile | None) -> RunSummary:
    """`run_batch`, then its summary (or that it stopped with an error) into the metrics textfile."""
    if metrics is None:
        return run_batch(spec, reporter, load)
    try:
        summary = run_batch(spec, reporter, load)
    except VbatchError:
        metrics.record_failure(batch_label(spec))
        raise
    metrics.record_success(batch_label(spec), summary)
    return summary
