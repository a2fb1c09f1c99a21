"""The root of the ingest package's errors."""

from __future__ import annotations

__all__ = ["IngestError"]


class IngestError(Exception):
    """An ingest failure a person can act on; the message names the problem and the fix."""
