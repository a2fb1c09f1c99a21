"""One ingester per spool directory and per state directory.

Two ingesters on one spool insert every line twice under different tokens, and two
on one state directory overwrite each other's checkpoint.  Each ingester therefore
holds an exclusive ``flock`` on a file in both directories for as long as it runs;
the kernel drops it when the process dies, however it dies, so a crash never leaves
a stale lock behind.  The file holds the owner's pid and host, for the refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from .errors import IngestError, SpoolLocked

__all__ = ["LOCK_NAME", "DirectoryLock"]

# A dot file: never a spool file name (listener/spool.py), never read as one.
LOCK_NAME = ".batchobs-ingest.lock"


class DirectoryLock:
    """Exclusive ownership of some directories, taken at once or refused."""

    def __init__(self, directories: list[Path]) -> None:
        self._held: list[int] = []
        try:
            for directory in dict.fromkeys(d.resolve() for d in directories):  # one lock per directory
                self._held.append(_take(directory))
        except BaseException:
            self.release()
            raise

    @property
    def held(self) -> bool:
        return bool(self._held)

    def release(self) -> None:
        while self._held:
            os.close(self._held.pop())  # closing the descriptor drops its flock

    def __del__(self) -> None:  # an owner dropped without close(): let the directories go
        self.release()


def _take(directory: Path) -> int:
    path = directory / LOCK_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise IngestError(f"cannot create {path}: {exc.strerror}: the ingester needs write access to "
                          f"{directory} (it removes finished spool files and keeps its checkpoint)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        raise SpoolLocked(
            f"another ingester ({owner}) is using {directory}: stop it first, or give this one its own "
            "--spool-dir and --state-dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def _read_owner(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "owner unknown"
