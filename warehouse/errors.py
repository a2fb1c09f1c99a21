"""The root of the warehouse package's errors.

Every error this package raises on purpose derives from ``WarehouseError``; its
message is one line that names the problem and, where there is one, the fix.  The
command line (``warehouse/cli.py``) turns any of them into that line on stderr and
an exit code, in one place.
"""

from __future__ import annotations

__all__ = ["WarehouseError"]


class WarehouseError(Exception):
    """A warehouse failure a person can act on; the message says what to do."""
