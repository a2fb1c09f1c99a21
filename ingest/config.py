"""The ingester's settings and their defaults: one definition, read by the CLI too.

Kept apart from the service so that ``batchobs --help`` shows the defaults without
importing the ingester (its client and logging libraries).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MIN_BUFFER_BYTES", "RETENTIONS", "IngestConfig"]

RETENTIONS = ("delete", "archive", "keep")  # what happens to a fully ingested spool file
MIN_BUFFER_BYTES = 1024  # the smallest batch and line size limits


@dataclass(frozen=True)
class IngestConfig:
    spool_dir: Path
    state_dir: Path
    max_rows: int = 10_000
    max_bytes: int = 8 << 20
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
        if self.retention not in RETENTIONS:
            raise ValueError(f"retention must be one of {', '.join(RETENTIONS)}, got {self.retention!r}")
