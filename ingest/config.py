"""The ingester's settings and their defaults: one definition, read by the CLI too.

Kept apart from the service so that ``batchobs --help`` shows the defaults without
importing the ingester (its client and logging libraries).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MIN_BUFFER_BYTES", "RETENTIONS", "BatchLimits", "IngestConfig"]

RETENTIONS = ("delete", "archive", "keep")  # what happens to a fully ingested spool file
MIN_BUFFER_BYTES = 1024  # the smallest batch and line size limits


@dataclass(frozen=True)
class IngestConfig:
    spool_dir: Path
    state_dir: Path
    # A batch's limits when the ingester has caught up (then max_latency_s closes it first) ...
    max_rows: int = 10_000
    max_bytes: int = 8 << 20
    # ... and the most it may grow to while a backlog waits (rows grow in proportion).
    # The memory bound: the ingester holds about inserts_in_flight + 2 batches at once.
    backlog_batch_bytes: int = 32 << 20
    max_latency_s: float = 1.0
    max_line_bytes: int = 1 << 20
    retention: str = "delete"  # one of RETENTIONS
    poll_s: float = 0.05
    inserts_in_flight: int = 2  # batches inserted at once (each is one server insert)
    # A refusal no retry can cure (wrong password, missing table) is asked again this
    # often by a running service, in case a person has fixed it meanwhile.
    rejected_retry_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_bytes < MIN_BUFFER_BYTES or self.max_line_bytes < MIN_BUFFER_BYTES:
            raise ValueError(f"max_rows must be >= 1, max_bytes and max_line_bytes >= {MIN_BUFFER_BYTES}")
        if self.inserts_in_flight < 1:
            raise ValueError(f"inserts_in_flight must be >= 1, got {self.inserts_in_flight}")
        if self.rejected_retry_s <= 0:
            raise ValueError(f"rejected_retry_s must be positive, got {self.rejected_retry_s}")
        if self.max_latency_s <= 0:
            raise ValueError(f"max_latency_s must be positive, got {self.max_latency_s}")
        if self.backlog_batch_bytes < MIN_BUFFER_BYTES:
            raise ValueError(f"backlog_batch_bytes must be >= {MIN_BUFFER_BYTES}, got {self.backlog_batch_bytes}")
        if self.retention not in RETENTIONS:
            raise ValueError(f"retention must be one of {', '.join(RETENTIONS)}, got {self.retention!r}")

    def batch_limits(self, backlog_bytes: int, previous: BatchLimits | None = None) -> BatchLimits:
        """The limits of the next batch, ``backlog_bytes`` waiting to be read, ``previous``
        the last batch's limits.

        A batch takes its share of the backlog (the inserts in flight and the batch being
        read share it), at least max_rows / max_bytes, at most backlog_batch_bytes and twice
        the previous limit (the first batch keeps the base limits, so a drain's first insert
        starts soon), with rows in
        proportion to bytes: a drain makes few large inserts (fewer parts, less of the
        engine's per-insert work), and the batches shrink back as the backlog does.
        """
        share = backlog_bytes // (self.inserts_in_flight + 1)
        grown = min(share, self.backlog_batch_bytes, 2 * previous.bytes if previous else self.max_bytes)
        if grown <= self.max_bytes:
            return self.base_limits
        return BatchLimits(self.max_rows * grown // self.max_bytes, grown)

    @property
    def base_limits(self) -> BatchLimits:
        """A batch's limits when caught up."""
        return BatchLimits(self.max_rows, self.max_bytes)


@dataclass(frozen=True)
class BatchLimits:
    rows: int
    bytes: int
