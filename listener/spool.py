"""The spool: JSON lines on local disk, one file per process, size-rotated.

Each event is appended with a single ``write(2)`` on an ``O_APPEND`` descriptor.
A write that fails part-way (a full disk, a file size limit) is cut back to the
last whole line, so the next event lands intact; if even that fails, the file is
left and the next event starts a new one (the fragment, with no trailing newline,
can never parse as a complete JSON object: the ingester reports it as a dead
letter).

This module is also the writer's whole contract with the reader (ingest/spoolfiles.py),
defined once here:

* **Names.** ``<host>-<pid>-<start>-<seq>.jsonl`` (``file_name`` / ``parse_name``): one
  writing process is ``<host>-<pid>-<start>``, its files sort by ``seq``.
* **Finished.** A file may grow for as long as its writer holds an exclusive ``flock`` on
  it, and only then.  The writer creates it under a temporary name (``creating_name``, a
  dot file the reader leaves alone), locks it, and only then links it in under its name,
  so a file is never seen under its name unlocked while it may still grow.  The lock goes
  when the writer moves to its next file, closes the spool, or dies however it dies (the
  kernel drops it).  The reader asks ``writer_gone``.  A lock is on the file itself, so
  this holds for every writer on the host whatever its host name or pid namespace (task
  pods on one node's volume), but only on a local filesystem: NFS and other network
  filesystems emulate or ignore ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from pathlib import Path
from typing import NamedTuple

from ._forks import rebuild_after_fork

__all__ = ["CREATING_PREFIX", "NAME_PATTERN", "Spool", "SpoolName", "creating_name", "file_name", "host_token",
           "parse_name", "writer_gone"]

NAME_PATTERN = "<host>-<pid>-<start>-<seq>.jsonl"  # for messages
_NAME = re.compile(r"(?P<host>[^-/.][^-/]*)-(?P<pid>[0-9]+)-(?P<start>[0-9]+)-(?P<seq>[0-9]+)\.jsonl")
CREATING_PREFIX = ".creating."  # a file being created: not yet locked, or not yet linked in


class SpoolName(NamedTuple):
    host: str
    pid: int
    start: int  # the writer's start, microseconds since the epoch
    seq: int

    @property
    def writer(self) -> str:
        """One writing process: its files share this and differ by ``seq``."""
        return f"{self.host}-{self.pid}-{self.start}"


def host_token(hostname: str) -> str:
    """The host as it appears in spool file names: no '-' (it separates the name's parts),
    no '/', and no leading '.' (dot files are never spool files)."""
    token = hostname.replace("/", "_").replace("-", "_") or "host"
    return "_" + token[1:] if token.startswith(".") else token


def file_name(host: str, pid: int, start: int, seq: int) -> str:
    """The name of a writer's ``seq``-th file (``host`` as ``host_token`` gives it)."""
    return f"{host}-{pid}-{start}-{seq:06d}.jsonl"


def parse_name(name: str) -> SpoolName | None:
    """The parts of a spool file's name; None for any other name."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    return SpoolName(match["host"], int(match["pid"]), int(match["start"]), int(match["seq"]))


def creating_name(name: str) -> str:
    """The temporary name of spool file ``name`` while it is created."""
    return CREATING_PREFIX + name


def writer_gone(fd: int) -> bool:
    """True when no writer holds the spool file open on ``fd``: it is finished.

    Takes a shared lock without waiting and drops it at once (the caller keeps ``fd``).
    Raises OSError when the filesystem cannot say (no ``flock``).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)  # ours alone: a shared lock on the reader's own descriptor
    return True


_CREATE_ATTEMPTS = 5  # a name taken, a temporary file held or removed by the reader: try the next sequence


class Spool:
    def __init__(self, directory: Path, hostname: str, max_bytes: int = 64 << 20, fsync: bool = False):
        self.directory = directory
        self._hostname = host_token(hostname)
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._fd = -1
        self._identity = (0, 0)  # (st_dev, st_ino) of the open file
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
        if self._pid != os.getpid():  # a child forked where the fork hook could not run
            self._drop_inherited()
            self._seq, self._pid = 0, os.getpid()
            self._started = time.time_ns() // 1000
        self._close_fd()
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(_CREATE_ATTEMPTS):
            self._seq += 1
            if self._create(file_name(self._hostname, self._pid, self._started, self._seq)):
                return
        raise OSError(f"could not create a spool file in {self.directory} after {_CREATE_ATTEMPTS} attempts "
                      "(names taken, or temporary files removed under the writer)")

    def _create(self, name: str) -> bool:
        """Create ``name`` locked (True), or find it cannot be had (False: try another name)."""
        temporary = self.directory / creating_name(name)
        path = self.directory / name
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        except FileExistsError:
            return False
        self._fd = fd  # from here a fork hook closes it in the child
        try:
            info = os.fstat(fd)
            self._identity = (info.st_dev, info.st_ino)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a hook never waits: held, the next name
            os.link(temporary, path)  # unlike rename(2), never replaces a file of that name
        except (BlockingIOError, FileExistsError, FileNotFoundError):  # the temporary file held by a reader
            # looking at it; the name taken; the temporary file removed by the reader
            self._close_fd()
            return False
        except BaseException:
            self._close_fd()
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        self.path, self._size = path, 0
        return True

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1  # never left naming a closed descriptor, which may be reused
        if fd >= 0:
            os.close(fd)  # drops the lock: the file is finished

    def _drop_inherited(self, checked: bool = True) -> None:
        """Close, in a forked child, the descriptor of the parent's file.

        The lock belongs to the open file description, which fork shares: while a child
        holds the descriptor, the parent's file stays locked after the parent has gone.
        Closing it drops only the child's reference; ``LOCK_UN`` would unlock the parent's
        file under the parent, so it is never used here.  ``checked``: close it only if it
        still is that file (a child forked without the fork hook may have reused the number).
        """
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        with contextlib.suppress(OSError):  # closed already
            info = os.fstat(fd)
            if not checked or (info.st_dev, info.st_ino) == self._identity:
                os.close(fd)

    def after_fork_in_child(self) -> None:
        # Runs before any code of the child: the parent's lock may have been held by a
        # writing thread; the descriptor is the parent's file (perhaps one half created).
        # The child starts its own file on its first event.
        self._lock = threading.Lock()
        self._drop_inherited(checked=False)
        self._seq, self._size, self._pid = 0, 0, os.getpid()
        self._started = time.time_ns() // 1000

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._close_fd()
            else:
                self._drop_inherited()
            self._fd = -1
