"""What can stop the ingester, as one small hierarchy.

Every error here carries a message meant for the operator: one line naming the
problem and the fix.  The CLI maps the root class to an exit code once.
"""

from __future__ import annotations

__all__ = ["IngestError", "SpoolLocked", "WarehouseRejected"]


class IngestError(Exception):
    """Root of the ingester's errors: the message is one line an operator can act on."""


class WarehouseRejected(IngestError):
    """The warehouse answered, and refused in a way that retrying cannot fix
    (authentication, unknown database or table, missing migrations, permissions)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # the ClickHouse error code, when there was one


class SpoolLocked(IngestError):
    """Another ingester owns the spool or the state directory."""
