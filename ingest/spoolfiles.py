"""Reading the spool: which files exist, which are finished, and their complete lines.

A spool file's name and the rule for when it is *finished* (no more bytes can be
appended) are the writer's contract, defined in listener/spool.py: a file is finished
once no writer holds its lock, whatever the writer's host name or pid namespace (task
pods sharing one node's volume).  Only complete lines (ending in a newline) are read
from an active file; a finished file's trailing fragment is a line its writer died
writing.

The directory is read defensively: only regular files named as the listener names
them are spool files.  Anything else (another name, a directory, a symlink, a FIFO)
is reported through ``on_skip`` and never opened, but for the ingester's own lock file
and the files writers are creating, which are passed over quietly.  Symlinks are never
followed, so a link to a file elsewhere cannot bring its lines in.  A file is opened
once per read and checked on its open descriptor: still the same file (device and
inode) as the one read before, not shorter than the read position, a line ending just
before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from io import BufferedReader
from pathlib import Path
from typing import BinaryIO

from listener.spool import CREATING_PREFIX, NAME_PATTERN, parse_name, writer_gone

from .lock import LOCK_NAME

__all__ = ["CHANGES", "Changed", "Chunk", "Identity", "SpoolFile", "finished", "list_files", "loss_reason",
           "read_chunk", "read_range", "remove_abandoned"]

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO swapped in cannot hang

Identity = tuple[int, int]  # (st_dev, st_ino): which file a name stands for


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    writer: str = ""  # host-pid-start: one writing process
    seq: int = 0
    size: int = 0  # bytes when listed
    modified: float = 0.0  # st_mtime when listed: its lines were written by then

    @property
    def name(self) -> str:
        return self.path.name


def list_files(directory: Path, on_skip: Callable[[str, str, str], None] | None = None) -> list[SpoolFile]:
    """Spool files in reading order (by writer, then sequence).

    Every other entry is passed to ``on_skip(name, why, detail)`` (``why`` one word:
    "name", "type", "unreadable"); none is followed or opened.
    """
    skip = on_skip or (lambda name, why, detail: None)
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name == LOCK_NAME or entry.name.startswith(CREATING_PREFIX):
            continue  # the ingester's lock; a file a writer is creating (remove_abandoned)
        parsed = parse_name(entry.name)
        if parsed is None or not _utf8(entry.name):
            skip(entry.name, "name", f"not named as the listener names spool files ({NAME_PATTERN})")
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed since the listing
        except OSError as exc:
            skip(entry.name, "unreadable", f"cannot be examined ({exc.strerror or exc})")
            continue
        if not stat.S_ISREG(info.st_mode):
            skip(entry.name, "type", f"not a regular file but {_kind_of(info.st_mode)}: never followed or read")
            continue
        found.append(SpoolFile(Path(entry.path), parsed.writer, parsed.seq, info.st_size, info.st_mtime))
    found.sort(key=lambda f: (f.writer, f.seq))
    return found


def _utf8(name: str) -> bool:
    """False for a name with bytes that are not UTF-8 (decoded to lone surrogates): no
    listener writes one, and it could not be stored as a dead letter's source."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "of an unknown type"


def finished(file: SpoolFile) -> bool:
    """True when no more bytes can be appended to ``file``: no writer holds it (a file
    gone is finished too).  Raises OSError if the file cannot be opened or locked."""
    try:
        fd = os.open(file.path, _OPEN_FLAGS)
    except FileNotFoundError:
        return True
    try:
        return writer_gone(fd)
    finally:
        os.close(fd)


def remove_abandoned(directory: Path) -> list[str]:
    """Remove the temporary files of writers that died creating a spool file; their names.

    Such a file holds no line (a writer appends only once the file is under its name): it
    is either empty or a second name of a spool file.  One whose writer is still creating
    it holds its lock, and is left.  Removing one whose writer locks it just after the
    check is harmless either way: linked in already, only the second name goes; not yet,
    the writer's link fails and it tries the next name.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith(CREATING_PREFIX) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                fd = os.open(entry.path, _OPEN_FLAGS)
            except OSError:
                continue
            try:
                if writer_gone(fd):
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except OSError:  # gone already, or not ours to remove: nothing is lost by leaving it
                continue
            finally:
                os.close(fd)
    return removed


@dataclass(frozen=True)
class Chunk:
    """Complete lines read from one file: bytes [start, end)."""

    file: SpoolFile
    start: int
    end: int
    data: bytes | bytearray  # a bytearray as read (cut to its last line in place, never copied)
    truncated_tail: bool = False  # data is a finished file's last fragment (no newline)
    oversize: bool = False  # data is the head of a line longer than the limit; end skips all of it
    lost: str = ""  # not lines but a loss: why bytes [start, end) of the file were never read (data is empty)
    identity: Identity | None = None  # the file read (device, inode)
    file_size: int = 0  # its size when read

    @cached_property
    def lines(self) -> int:
        """Lines in the chunk (counted once: chunks run to megabytes); a fragment or an
        oversized line is one line, a loss none."""
        if self.truncated_tail or self.oversize:
            return 1
        return self.data.count(b"\n")

    def first_lines(self, n: int) -> Chunk:
        """The chunk cut after its first ``n`` lines (itself if it has no more)."""
        if self.truncated_tail or self.oversize or self.lost or self.lines <= n:
            return self
        data = self.data
        cut = _end_of_line(data, n, self.lines)
        head = dataclasses.replace(self, end=self.start + cut + 1, data=data[: cut + 1])
        head.__dict__["lines"] = n  # known: no need to count megabytes again
        return head


@dataclass(frozen=True)
class Changed:
    """The file under a name is not the one read up to ``offset``: replaced, or shrunk.

    Its bytes from ``offset`` to ``seen`` (the largest size seen before; unknown bytes
    may have followed) were never read.  Reading starts again at byte 0 of ``identity``.
    """

    file: SpoolFile
    identity: Identity
    offset: int
    seen: int
    size: int
    how: str  # one of CHANGES

    @property
    def reason(self) -> str:
        return loss_reason(self.how, self.offset, self.seen)


CHANGES = {
    "replaced": "spool file replaced by another file of the same name",
    "truncated": "spool file truncated below the read position",
    "rewritten": "spool file truncated and written again (no line ends at the read position)",
}


def loss_reason(how: str, start: int, end: int) -> str:
    """The dead letter's reason for bytes [start, end) lost to a change of the file."""
    return (f"{CHANGES.get(how, 'spool file changed under the reader')}: bytes {start}..{end} lost"
            " (and any written after them before the change); read again from byte 0")


def _end_of_line(data: bytes | bytearray, n: int, lines: int) -> int:
    """The index of the newline ending line ``n`` (1-based) of ``data``, which holds ``lines`` newlines."""
    # Guess where line n ends from the mean line length, count the newlines after
    # the guess (a C scan of the part cut off), then step the few lines to the cut.
    guess = max(1, n * len(data) // lines)
    seen = lines - data.count(b"\n", guess)  # newlines before the guess
    if seen >= n:
        cut = data.rfind(b"\n", 0, guess)
        for _ in range(seen - n):
            cut = data.rfind(b"\n", 0, cut)
    else:
        cut = guess - 1
        for _ in range(n - seen):
            cut = data.find(b"\n", cut + 1)
    return cut


def read_chunk(file: SpoolFile, offset: int, max_bytes: int, max_line: int, is_finished: bool,
               identity: Identity | None = None, seen: int = 0, before: bytes = b"",
               max_lines: int | None = None) -> Chunk | Changed | None:
    """Up to ``max_bytes`` (and ``max_lines``) of complete lines from ``offset``, or None
    if nothing is ready.

    ``identity`` is the file read up to ``offset`` before (None: not known); a different
    file under the name, one shorter than ``offset``, or one whose bytes just before
    ``offset`` are not ``before`` (the last bytes read; a newline if not known) is returned
    as ``Changed``.  ``seen`` is the largest size seen of it.  Raises OSError if the file
    cannot be read.
    """
    try:
        fd = os.open(file.path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # swapped since the listing
            raise OSError(f"{file.name} is no longer a regular file")
        current = (info.st_dev, info.st_ino)
        size = info.st_size
        if offset and identity is not None and identity != current:
            return Changed(file, current, offset, max(offset, seen), size, "replaced")
        if size < offset:
            return Changed(file, current, offset, max(offset, seen), size, "truncated")
        if size == offset:
            return None
        if offset:
            # What was read last is still there (a read position follows a newline at least),
            # unless the file was truncated and written again past the position.
            expected = before if 0 < len(before) <= offset else b"\n"
            handle.seek(offset - len(expected))
            if handle.read(len(expected)) != expected:
                return Changed(file, current, offset, max(offset, seen), size, "rewritten")
        return _read(handle, file, offset, size, max_bytes, max_line, is_finished, max_lines, current)


def _read(handle: BufferedReader, file: SpoolFile, offset: int, size: int, max_bytes: int, max_line: int,
          is_finished: bool, max_lines: int | None, identity: Identity) -> Chunk | None:
    want = min(size - offset, max(max_bytes, max_line + 1))
    handle.seek(offset)
    # Into a bytearray, so that the chunk is cut to its last complete line in place: while a
    # backlog drains chunks run to tens of megabytes, and a copy of each costs more than the read.
    data = bytearray(want)
    del data[handle.readinto(data) :]
    cut = data.rfind(b"\n")
    if cut >= 0:
        if len(data) > max_bytes:  # keep the chunk near max_bytes, always on a line boundary
            within = data.rfind(b"\n", 0, max_bytes)
            cut = within if within >= 0 else cut
        lines = data.count(b"\n", 0, cut + 1)
        if max_lines is not None and lines > max_lines:
            cut, lines = _end_of_line(data, max_lines, lines), max_lines
        del data[cut + 1 :]
        chunk = Chunk(file, offset, offset + cut + 1, data, identity=identity, file_size=size)
        chunk.__dict__["lines"] = lines  # counted once: no need to count megabytes again
        return chunk
    if len(data) > max_line:
        # No newline within the limit: one oversized line.  Skip to its end, keep its head.
        end = _next_newline(handle, offset + len(data))
        if end is None and not is_finished:
            return None
        return Chunk(file, offset, end if end is not None else size, bytes(data[:max_line]), oversize=True,
                     identity=identity, file_size=size)
    if is_finished:
        return Chunk(file, offset, offset + len(data), bytes(data), truncated_tail=True, identity=identity,
                     file_size=size)
    return None


def read_range(file: SpoolFile, start: int, length: int) -> bytes:
    """Bytes [start, start + length) of ``file`` (a replay of a range read before); not following symlinks."""
    with open(os.open(file.path, _OPEN_FLAGS), "rb") as handle:
        handle.seek(start)
        return handle.read(length)


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
