"""The root of the warehouse package's errors.

Every error this package raises on purpose derives from ``WarehouseError``; its
message is one line that names the problem and, where there is one, the fix.  The
command line (``batchobs/cli.py``) turns any of them into that line on stderr and
an exit code, in one place.
"""

from __future__ import annotations

__all__ = ["Interrupted", "WarehouseError"]


class WarehouseError(Exception):
    """A warehouse failure a person can act on; the message says what to do."""


class Interrupted(KeyboardInterrupt):
    """Stopped by a signal (SIGINT or SIGTERM) before the work was done.

    A ``KeyboardInterrupt``, so that it unwinds through ``except Exception`` and every
    ``finally`` on the way out; the command line exits with 128 + ``signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
