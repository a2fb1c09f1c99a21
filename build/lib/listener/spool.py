"""The spool: JSON lines on local disk, one file per process, size-rotated.

Each event is appended with a single ``write(2)`` on an ``O_APPEND`` descriptor,
so a line is either fully there or (after a crash mid-write) a fragment with no
trailing newline, which can never parse as a complete JSON object.  File names
sort by creation: ``<host>-<pid>-<start>-<seq>.jsonl``.  A file is finished once
a later sequence of the same process exists, or its process is gone.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

__all__ = ["Spool", "host_token"]


def host_token(hostname: str) -> str:
    """The host as it appears in spool file names (no '-', which separates the name's parts)."""
    return hostname.replace("/", "_").replace("-", "_") or "host"


class Spool:
    def __init__(self, directory: Path, hostname: str, max_bytes: int = 64 << 20, fsync: bool = False):
        self.directory = directory
        self._hostname = host_token(hostname)
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._seq = 0
        self._size = 0
        self._started = 0
        self.path: Path | None = None

    def append(self, line: bytes) -> None:
        """Append one complete line (it must end with a newline)."""
        with self._lock:
            if self._fd < 0 or self._pid != os.getpid() or self._size + len(line) > self._max_bytes:
                self._open_next()
            written = os.write(self._fd, line)
            if written != len(line):  # a short write on a full disk: never leave half a line
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            self._size += written
            if self._fsync:
                os.fsync(self._fd)

    def _open_next(self) -> None:
        if self._pid != os.getpid():  # a forked child writes its own file, never the parent's
            self._fd, self._seq, self._pid = -1, 0, os.getpid()
            self._started = time.time_ns() // 1000
        if self._fd >= 0:
            os.close(self._fd)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{self._hostname}-{self._pid}-{self._started}-{self._seq:06d}.jsonl"
        self.path = self.directory / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = -1
