"""The ingester's own Prometheus metrics, on a registry of its own."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from . import spoolfiles

__all__ = ["RETRY_KINDS", "IngestMetrics"]

RETRY_KINDS = ("unavailable", "rejected")  # the kind label of the retries metric (service.retry_kind)


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_read = Counter("batchobs_ingest_events_read", "Spool lines read", registry=r)
        self.events_inserted = Counter("batchobs_ingest_events_inserted",
                                       "Event rows ClickHouse reported written", registry=r)
        self.dead_letters = Counter("batchobs_ingest_dead_letters", "Lines sent to dead_letters", registry=r)
        self.batches = Counter("batchobs_ingest_batches", "Batches committed", registry=r)
        self.retries = Counter("batchobs_ingest_retries",
                               "Warehouse calls retried, by kind: unavailable (an outage, retried with "
                               "backoff) or rejected (needs a person: wrong password, missing table, ...)",
                               ["kind"], registry=r)
        for kind in RETRY_KINDS:  # exported at 0 from the start: a rate of no retries is 0, not no data
            self.retries.labels(kind=kind)
        self.insert_seconds = Histogram("batchobs_ingest_insert_seconds", "Time to land one batch", registry=r,
                                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.spool_entries_skipped = Counter(
            "batchobs_ingest_spool_entries_skipped",
            "Entries of the spool directory skipped (counted once per entry): why is a fixed word", ["why"],
            registry=r)
        self.spool_files_changed = Counter(
            "batchobs_ingest_spool_files_changed",
            "Spool files replaced, truncated or rewritten under the reader (each a dead letter of the range lost)",
            ["how"], registry=r)
        self.batch_limit_bytes = Gauge(
            "batchobs_ingest_batch_limit_bytes",
            "Byte limit of the batch being read: --batch-bytes when caught up, larger while a backlog drains",
            registry=r)
        self.lag_bytes = Gauge("batchobs_ingest_lag_bytes", "Spool bytes not yet ingested", registry=r)
        self.lag_seconds = Gauge("batchobs_ingest_lag_seconds",
                                 "Age of the oldest spool file with bytes not yet ingested", registry=r)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def refresh_lag(self, spool_dir: Path, offsets: Mapping[str, int]) -> int:
        """Recompute the lag gauges; returns the lag in bytes."""
        behind, oldest = 0, None
        for file in spoolfiles.list_files(spool_dir):
            try:
                stat = file.path.lstat()
            except OSError:
                continue
            unread = stat.st_size - offsets.get(file.name, 0)
            if unread > 0:
                behind += unread
                oldest = stat.st_mtime if oldest is None else min(oldest, stat.st_mtime)
        self.lag_bytes.set(behind)
        self.lag_seconds.set(0 if oldest is None else max(0.0, time.time() - oldest))
        return behind
