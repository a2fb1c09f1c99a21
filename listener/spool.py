"""The spool: JSON lines on local disk, one file per process, size-rotated.

Each event is appended with a single ``write(2)`` on an ``O_APPEND`` descriptor.
A write that fails part-way (a full disk, a file size limit) is cut back to the
last whole line, so the next event lands intact; if even that fails, the file is
left and the next event starts a new one (the fragment, with no trailing newline,
can never parse as a complete JSON object: the ingester reports it as a dead
letter).  File names sort by creation: ``<host>-<pid>-<start>-<seq>.jsonl``.  A
file is finished once a later sequence of the same process exists, or its process
is gone.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from ._forks import rebuild_after_fork

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
        self._size = 0  # bytes of whole lines in the open file
        self._started = 0
        self.path: Path | None = None
        rebuild_after_fork(self)

    def append(self, line: bytes) -> None:
        """Append one complete line (it must end with a newline); raises OSError, leaving no part of it."""
        with self._lock:
            if self._fd < 0 or self._pid != os.getpid() or self._size + len(line) > self._max_bytes:
                self._open_next()
            try:
                written = os.write(self._fd, line)
            except OSError:
                self._cut_back()  # a failed write(2) may still have written part of the line
                raise
            if written != len(line):  # a short write on a full disk or past a size limit
                self._cut_back()
                raise OSError(f"short write to {self.path} ({written} of {len(line)} bytes); line not kept")
            self._size += written
            if self._fsync:
                os.fsync(self._fd)

    def _cut_back(self) -> None:
        """Leave the file ending in a whole line; failing that, start a new file next time."""
        try:
            if os.fstat(self._fd).st_size != self._size:
                os.ftruncate(self._fd, self._size)
        except OSError:
            self._close_fd()

    def _open_next(self) -> None:
        if self._pid != os.getpid():  # a child forked where the hook could not run writes its own file
            self._fd, self._seq, self._pid = -1, 0, os.getpid()
            self._started = time.time_ns() // 1000
        self._close_fd()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{self._hostname}-{self._pid}-{self._started}-{self._seq:06d}.jsonl"
        self.path = self.directory / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1  # never left naming a closed descriptor, which may be reused
        if fd >= 0:
            os.close(fd)

    def after_fork_in_child(self) -> None:
        # The parent's lock may have been held by a writing thread; its descriptor is the
        # parent's file.  The child starts its own file on its first event.
        self._lock = threading.Lock()
        if self._fd >= 0:
            with contextlib.suppress(OSError):  # the parent's file; nothing to keep of it here
                os.close(self._fd)
        self._fd, self._seq, self._size, self._pid = -1, 0, 0, os.getpid()
        self._started = time.time_ns() // 1000

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._close_fd()
            self._fd = -1
