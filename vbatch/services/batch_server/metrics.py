"""The batch queue on the server's /metrics: vLLM serves Prometheus' default registry there, so a
collector registered in the server process shows beside vLLM's own metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vbatch.storage.catalog import Catalog

STATUSES = ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
_registered: list[Any] = []


class BatchQueueCollector:
    """vbatch_batches{status} and vbatch_batch_requests_waiting, read from the catalog per scrape."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        batches = GaugeMetricFamily("vbatch_batches", "Batches of the Batches API, by status", labels=["status"])
        counts = self.catalog.count_by_status()
        for status in STATUSES:
            batches.add_metric([status], counts.get(status, 0))
        yield batches
        waiting = sum(
            max(0, row.request_total - row.request_completed - row.request_failed)
            for row in self.catalog.batches_with_status("validating", "in_progress")
        )
        yield GaugeMetricFamily(
            "vbatch_batch_requests_waiting", "Requests of unfinished batches not yet answered", value=waiting
        )


def register_batch_metrics(catalog: Catalog) -> None:
    """Register once per process (a second app in the same process replaces the first's)."""
    from prometheus_client import REGISTRY

    for old in _registered:
        REGISTRY.unregister(old)
    _registered.clear()
    collector = BatchQueueCollector(catalog)
    REGISTRY.register(collector)  # type: ignore[arg-type]
    _registered.append(collector)
