"""Read positions, advanced only after ClickHouse acknowledged the insert.

Before a batch is inserted its ranges are written down as *pending* (an intent
record).  After a crash each pending batch is replayed with exactly the same ranges,
so it carries the same ``insert_deduplication_token`` and ClickHouse drops it if the
first attempt had landed.  Several batches may be pending (inserts in flight); they
are committed in the order they began, so a read position never passes a range that
has not landed.  The file is replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import IngestError

__all__ = ["LOST", "Checkpoint", "CheckpointError", "Range"]

LOST = "lost:"  # flag prefix of a range lost to a change of its file (followed by how it changed)


class CheckpointError(IngestError):
    """The checkpoint file cannot be read; the message names it and what to do."""


@dataclass(frozen=True)
class Range:
    name: str  # spool file name
    start: int
    end: int
    # "" complete lines | "tail" a finished file's fragment | "oversize" one huge line |
    # "lost:<how>" bytes of a file that changed under the reader (spoolfiles.CHANGES): reading restarts at 0
    flag: str = ""

    def after(self, position: int) -> int:
        """The file's read position once this range has landed, from ``position`` before it."""
        return 0 if self.flag.startswith(LOST) else max(position, self.end)


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets: dict[str, int] = {}
        self.pending: list[list[Range]] = []  # batches in flight, oldest first
        # Which file (st_dev, st_ino) each offset is a position in: a file replaced under
        # its name is told from the one read, also across restarts.
        self.identities: dict[str, tuple[int, int]] = {}
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
            raise _corrupt(path, exc) from None
        try:
            self.offsets = {str(k): int(v) for k, v in state.get("offsets", {}).items()}
            self.pending = [[Range(*r) for r in batch] for batch in state.get("pending", [])]
            self.identities = {str(k): (int(v[0]), int(v[1])) for k, v in state.get("identities", {}).items()}
        except (AttributeError, TypeError, ValueError) as exc:  # JSON, but not a checkpoint's shape
            raise _corrupt(path, exc) from None

    def advance(self, landed: int, begun: list[Range] | None = None) -> None:
        """Commit the ``landed`` oldest pending batches (advance the read positions past
        them) and write down ``begun``, a batch about to be inserted: one save for both."""
        for batch in self.pending[:landed]:
            for r in batch:
                self.offsets[r.name] = r.after(self.offsets.get(r.name, 0))
        del self.pending[:landed]
        if begun:
            self.pending.append(list(begun))
        self._save()

    def forget(self, names: list[str]) -> None:
        for name in names:
            self.offsets.pop(name, None)
            self.identities.pop(name, None)
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        pending = [[[r.name, r.start, r.end, r.flag] for r in batch] for batch in self.pending]
        state = {"offsets": self.offsets, "pending": pending,
                 "identities": {name: list(ident) for name, ident in self.identities.items()}}
        with open(tmp, "w") as handle:
            json.dump(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _corrupt(path: Path, exc: Exception) -> CheckpointError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
    return CheckpointError(
        f"checkpoint {path} cannot be read ({reason}); restore it from a backup, or move it aside "
        "to read the spool again from the start (replayed events are deduplicated by their id)"
    )
