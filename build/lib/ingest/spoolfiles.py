"""Reading the spool: which files exist, which are finished, and their complete lines.

A spool file is ``<host>-<pid>-<start>-<seq>.jsonl`` (listener/spool.py).  It is
*finished* once its writer cannot append any more: a later sequence of the same
writer exists, or the writer (on this host) is gone.  Only complete lines (ending
in a newline) are read from an active file; a finished file's trailing fragment is
a line its writer died writing.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from listener.spool import host_token

__all__ = ["Chunk", "SpoolFile", "finished", "latest_sequences", "list_files", "read_chunk"]

_LOCAL_HOST = host_token(socket.gethostname())
_NAME = re.compile(r"^(?P<host>[^-]+)-(?P<pid>\d+)-(?P<start>\d+)-(?P<seq>\d+)\.jsonl$")


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    writer: str  # host-pid-start: one writing process
    seq: int
    pid: int
    host: str

    @property
    def name(self) -> str:
        return self.path.name


def list_files(directory: Path) -> list[SpoolFile]:
    """Spool files in reading order (by writer, then sequence)."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            found.append(SpoolFile(Path(entry.path), f"{match['host']}-{match['pid']}-{match['start']}",
                                   int(match["seq"]), int(match["pid"]), match["host"]))
    found.sort(key=lambda f: (f.writer, f.seq))
    return found


def latest_sequences(files: list[SpoolFile]) -> dict[str, int]:
    """The highest sequence number of each writer."""
    latest: dict[str, int] = {}
    for f in files:
        latest[f.writer] = max(f.seq, latest.get(f.writer, 0))
    return latest


def finished(file: SpoolFile, latest: dict[str, int], hostname: str | None = None) -> bool:
    """True when no more bytes can be appended to ``file``."""
    if latest.get(file.writer, file.seq) > file.seq:
        return True
    local = host_token(hostname) if hostname else _LOCAL_HOST
    if file.host != local:
        return False  # another host's writer: wait for its next sequence
    try:
        os.kill(file.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Chunk:
    """Complete lines read from one file: bytes [start, end)."""

    file: SpoolFile
    start: int
    end: int
    data: bytes
    truncated_tail: bool = False  # data is a finished file's last fragment (no newline)
    oversize: bool = False  # data is the head of a line longer than the limit; end skips all of it

    @cached_property
    def lines(self) -> int:
        """Complete lines in the chunk (counted once: chunks run to megabytes)."""
        return self.data.count(b"\n")

    def first_lines(self, n: int) -> Chunk:
        """The chunk cut after its first ``n`` lines (itself if it has no more)."""
        if self.truncated_tail or self.oversize or self.lines <= n:
            return self
        data = self.data
        # Guess where line n ends from the mean line length, count the newlines after
        # the guess (a C scan of the part cut off), then step the few lines to the cut.
        guess = max(1, n * len(data) // self.lines)
        seen = self.lines - data.count(b"\n", guess)  # newlines before the guess
        if seen >= n:
            cut = data.rfind(b"\n", 0, guess)
            for _ in range(seen - n):
                cut = data.rfind(b"\n", 0, cut)
        else:
            cut = guess - 1
            for _ in range(n - seen):
                cut = data.find(b"\n", cut + 1)
        head = Chunk(self.file, self.start, self.start + cut + 1, data[: cut + 1])
        head.__dict__["lines"] = n  # known: no need to count megabytes again
        return head


def read_chunk(file: SpoolFile, offset: int, max_bytes: int, max_line: int, is_finished: bool) -> Chunk | None:
    """Up to ``max_bytes`` of complete lines from ``offset``, or None if nothing is ready."""
    try:
        size = file.path.stat().st_size
    except FileNotFoundError:
        return None
    if size <= offset:
        return None
    want = min(size - offset, max(max_bytes, max_line + 1))
    with open(file.path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(want)
        cut = data.rfind(b"\n")
        if cut >= 0:
            if len(data) > max_bytes:  # keep the chunk near max_bytes, always on a line boundary
                within = data.rfind(b"\n", 0, max_bytes)
                cut = within if within >= 0 else cut
            return Chunk(file, offset, offset + cut + 1, data[: cut + 1])
        if len(data) > max_line:
            # No newline within the limit: one oversized line.  Skip to its end, keep its head.
            end = _next_newline(handle, offset + len(data))
            if end is None and not is_finished:
                return None
            return Chunk(file, offset, end if end is not None else size, data[:max_line], oversize=True)
    if is_finished:
        return Chunk(file, offset, offset + len(data), data, truncated_tail=True)
    return None


def _next_newline(handle: BinaryIO, position: int) -> int | None:
    handle.seek(position)
    while True:
        block = handle.read(1 << 20)
        if not block:
            return None
        found = block.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(block)
