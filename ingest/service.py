"""``batchobs ingest``: tail the spool, batch, insert, checkpoint; repeat.

Batch by batch: read complete lines up to the row / byte limits (or until the
oldest line has waited ``max_latency_s``), write the intent, insert, commit the
read positions, then remove or archive spool files that are finished and fully
read.  Nothing more is read while the inserts in flight are being retried, so memory
is bounded by a few batches whatever the backlog.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog

from . import spoolfiles
from .checkpoint import LOST, Checkpoint, Range
from .config import BatchLimits, IngestConfig
from .errors import IngestError, WarehouseRejected
from .lock import DirectoryLock
from .metrics import IngestMetrics
from .retry import Retry, Target, retry_kind
from .screen import DeadLetter, Line, lines_of, looks_clean, validate
from .spoolfiles import Chunk, SpoolFile
from .writer import DataError, PartitionLimit, Writer, token_for

__all__ = ["IngestConfig", "Ingester"]


@dataclass(frozen=True)
class Batch:
    chunks: list[Chunk]
    ranges: list[Range]
    token: str  # insert_deduplication_token: the same ranges always give the same token
    fast: bool  # screened clean: insert the bytes as they are
    lines: int


class Ingester:
    """Owns its spool and state directories from construction until ``run()`` returns
    or ``close()`` (SpoolLocked if another ingester owns either)."""

    def __init__(self, config: IngestConfig, client: Any, metrics: IngestMetrics | None = None,
                 log: Any = None, target: Target | None = None) -> None:
        self.config = config
        # Before the checkpoint is read: it is only ever read and written by its owner.
        self.lock = DirectoryLock([config.state_dir, config.spool_dir])
        self.metrics = metrics or IngestMetrics()
        self.stop = threading.Event()
        self.rejected: WarehouseRejected | None = None  # why a run gave up (only with once)
        self.log = log or structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"),
                        structlog.processors.JSONRenderer()],
            wrapper_class=structlog.BoundLogger, context_class=dict, cache_logger_on_first_use=False,
        )
        self.attach(client, target)
        self.checkpoint = Checkpoint(config.state_dir / "checkpoint.json")
        self._lag_at = 0.0
        self._limits: BatchLimits | None = None  # the last batch's (they grow with a backlog)
        self._seen_size: dict[str, int] = {}  # the largest size seen of each spool file
        self._skipped: dict[str, str] = {}  # entries of the spool directory skipped, and why (warned once)
        # The last bytes read of each file and where they end: still there at the next read,
        # or the file was rewritten under the reader.
        self._last_read: dict[str, tuple[int, bytes]] = {}

    def attach(self, client: Any, target: Target | None = None) -> None:
        """Use ``client`` (clickhouse-connect) for inserts from now on; ``target`` names
        where it points in messages."""
        retry = Retry(target or Target.of_client(client), self.stop, self._on_retry,
                      rejected_every_s=self.config.rejected_retry_s, probe=_pinger(client))
        self.writer = Writer(client, retry)

    def close(self) -> None:
        """Give up the spool and state directories (another ingester may take them)."""
        self.lock.release()

    def __enter__(self) -> Ingester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ----------------------------------------------------------------
    def run(self, once: bool = False, progress: Any = None) -> None:
        """Ingest until stopped (or, with ``once``, until the spool is drained).

        The stages overlap: while up to ``inserts_in_flight`` batches are being
        inserted (the work is the server's; this process only waits on sockets), the
        next is read and screened.  Batches commit in the order they were read, so a
        read position never passes a batch that has not landed.

        A refusal no retry can cure (WarehouseRejected) ends ``once`` at once; a running
        service keeps asking, slowly, and logs why each time.
        """
        if not self.lock.held:  # run again after an earlier run let the directories go
            self.lock = DirectoryLock([self.config.state_dir, self.config.spool_dir])
            self.checkpoint = Checkpoint(self.config.state_dir / "checkpoint.json")
        self.writer.retry.give_up_rejected = once
        self.rejected = None
        try:
            self._run(once, progress)
        finally:
            self.close()
        if self.rejected is not None:
            raise self.rejected

    def _run(self, once: bool, progress: Any) -> None:
        for ranges in list(self.checkpoint.pending):
            self.log.info("replaying a batch that was in flight", ranges=len(ranges))
            replay = self._prepare(self._reread(ranges))
            if replay.chunks and not self._land(replay):
                return
            self._advance([ranges], None, progress=None)
        in_flight: deque[tuple[Batch, Future[bool]]] = deque()
        with ThreadPoolExecutor(max_workers=self.config.inserts_in_flight,
                                thread_name_prefix="batchobs-insert") as inserter:
            while not self.stop.is_set():
                ahead: dict[str, int] = {}
                for landing_batch, _ in in_flight:
                    for r in landing_batch.ranges:
                        ahead[r.name] = r.after(ahead.get(r.name, 0))
                batch = self._prepare(self._collect(once, ahead))
                # Collect what has landed, oldest first; wait for the oldest when the
                # window is full (the new batch needs its place), or when nothing new
                # came (drain before idling).
                landed: list[list[Range]] = []
                while in_flight and (len(in_flight) >= self.config.inserts_in_flight
                                     or not batch.chunks or in_flight[0][1].done()):
                    oldest, landing = in_flight.popleft()
                    if not landing.result():
                        self._advance(landed, None, progress)
                        return  # stopped while the warehouse was away: the rest stays pending
                    landed.append(oldest.ranges)
                # One checkpoint write commits what landed and records the new batch.
                self._advance(landed, batch.ranges if batch.chunks else None, progress)
                if batch.chunks:
                    in_flight.append((batch, inserter.submit(self._land, batch)))
                if not batch.chunks and not in_flight:
                    if once:
                        break
                    self._retire()  # a writer may have finished a file that was read to its end
                    self.stop.wait(self.config.poll_s)
        self._retire()
        self.metrics.refresh_lag(self.config.spool_dir, self.checkpoint.offsets)

    def _advance(self, landed: list[list[Range]], begun: list[Range] | None, progress: Any) -> None:
        """Commit the read positions of the batches that landed (oldest first) and write
        down the batch about to be inserted, in one checkpoint write; tidy up."""
        if not landed and not begun:
            return
        self.checkpoint.advance(len(landed), begun)
        if not landed:
            return
        if progress is not None:
            progress(sum(r.end - r.start for ranges in landed for r in ranges))
        if time.monotonic() - self._lag_at >= 1.0:
            self.metrics.refresh_lag(self.config.spool_dir, self.checkpoint.offsets)
            self._lag_at = time.monotonic()
        self._retire()

    def _collect(self, once: bool, ahead: dict[str, int]) -> list[Chunk]:
        """Chunks for one batch: up to the limits, or what arrived within max_latency_s.

        The limits grow with the backlog found when the batch begins (IngestConfig.batch_limits).
        With ``once`` (draining a backlog) nothing is waited for: what is there is the batch.
        ``ahead`` holds read positions past the checkpoint (the batch still landing).
        """
        chunks: list[Chunk] = []
        rows = size = 0
        first_at: float | None = None
        taken: dict[str, int] = dict(ahead)
        limits: BatchLimits | None = None
        while True:
            files = spoolfiles.list_files(self.config.spool_dir, self._skip)
            if limits is None:
                limits = self._limits = self.config.batch_limits(self._backlog(files, taken), self._limits)
                self.metrics.batch_limit_bytes.set(limits.bytes)
            grew = False
            for file in files:
                if rows >= limits.rows or size >= limits.bytes:
                    break
                chunk = self._next_chunk(file, taken, limits.bytes - size, limits.rows - rows)
                if chunk is None:
                    continue
                chunk = chunk.first_lines(limits.rows - rows)
                if not chunk.lost and not chunk.oversize:  # (an oversized line's end is not in hand)
                    self._last_read[file.name] = (chunk.end, bytes(chunk.data[-_LAST_READ:]))
                chunks.append(chunk)
                taken[file.name] = 0 if chunk.lost else chunk.end  # a changed file is read again from 0
                rows += max(1, chunk.lines)
                size += 0 if chunk.lost else chunk.end - chunk.start
                grew = True
            if not chunks:
                return chunks
            first_at = first_at or self._waiting_since(chunks[0])
            if rows >= limits.rows or size >= limits.bytes or self.stop.is_set():
                return chunks
            if once or time.monotonic() - first_at >= self.config.max_latency_s:
                return chunks
            if not grew:
                self.stop.wait(self.config.poll_s)

    @staticmethod
    def _waiting_since(chunk: Chunk) -> float:
        """Since when (monotonic) the first line of a batch has waited: since its file was last
        written, if the line was already there when the file was listed (then it was written by
        that time: a backlog's batch is overdue at once), else since now."""
        now = time.monotonic()
        if chunk.file.modified and chunk.start < chunk.file.size:
            return now - max(0.0, time.time() - chunk.file.modified)
        return now

    def _backlog(self, files: list[SpoolFile], taken: dict[str, int]) -> int:
        """Bytes of the spool not yet read (nor in flight), as listed."""
        return sum(max(0, f.size - self._position(f.name, taken)) for f in files)

    def _position(self, name: str, taken: dict[str, int]) -> int:
        """Where reading ``name`` goes on: past what this batch or one in flight took, else the checkpoint."""
        return taken.get(name, self.checkpoint.offsets.get(name, 0))

    def _next_chunk(self, file: SpoolFile, taken: dict[str, int], max_bytes: int, max_lines: int) -> Chunk | None:
        """The next chunk of ``file`` (at most ``max_bytes`` / ``max_lines``), or the loss
        of a change under the reader, or None.

        A file that cannot be read is skipped (with one warning): it never stops the others.
        """
        name = file.name
        offset = self._position(name, taken)
        end, last = self._last_read.get(name, (-1, b""))
        try:
            got = spoolfiles.read_chunk(file, offset, max_bytes, self.config.max_line_bytes,
                                        spoolfiles.finished(file), self.checkpoint.identities.get(name),
                                        self._seen_size.get(name, 0), last if end == offset else b"", max_lines)
        except OSError as exc:
            self._skip(name, "unreadable", f"cannot be read ({exc.strerror or exc})")
            return None
        if isinstance(got, spoolfiles.Changed):
            self.metrics.spool_files_changed.labels(got.how).inc()
            self.log.warning("spool file changed under the reader; reading it again from the start",
                             file=name, how=got.how, read_to=got.offset, seen_up_to=got.seen, size_now=got.size)
            self.checkpoint.identities[name] = got.identity
            self._seen_size[name] = got.size
            return Chunk(file, got.offset, got.seen, b"", lost=got.how)
        if got is not None:
            assert got.identity is not None  # read_chunk sets it on every chunk it returns
            self.checkpoint.identities[name] = got.identity  # saved with the batch about to begin
            self._seen_size[name] = max(self._seen_size.get(name, 0), got.file_size)
        return got

    def _skip(self, name: str, why: str, detail: str) -> None:
        """An entry of the spool directory is not read: say so once per entry, count it."""
        if self._skipped.get(name) == why:
            return
        self._skipped[name] = why
        self.metrics.spool_entries_skipped.labels(why).inc()
        self.log.warning("spool directory entry skipped", entry=name, why=detail,
                         fix="remove it, or give the ingester a regular, readable file named as the listener does")

    def _reread(self, ranges: list[Range]) -> list[Chunk]:
        files = {f.name: f for f in spoolfiles.list_files(self.config.spool_dir)}
        chunks = []
        for r in ranges:
            file = files.get(r.name)
            if r.flag.startswith(LOST):  # a record of a loss: nothing to read
                named = file or SpoolFile(self.config.spool_dir / r.name)
                chunks.append(Chunk(named, r.start, r.end, b"", lost=r.flag[len(LOST):]))
                continue
            if file is None:
                continue  # removed after it was committed elsewhere: nothing to replay
            length = min(r.end - r.start, self.config.max_line_bytes + 1) if r.flag == "oversize" else r.end - r.start
            try:
                data = spoolfiles.read_range(file, r.start, length)
            except OSError as exc:
                self.log.warning("a batch in flight cannot be read again; committed as it is", file=r.name,
                                 error=str(exc))
                continue
            if r.flag == "oversize":
                data = data[: self.config.max_line_bytes]
            chunks.append(Chunk(file, r.start, r.end, data, truncated_tail=r.flag == "tail",
                                oversize=r.flag == "oversize"))
        return chunks

    # -- one batch ---------------------------------------------------------------
    def _prepare(self, chunks: list[Chunk]) -> Batch:
        """Name the batch and screen it (the CPU work, done while the previous one lands)."""
        ranges = [Range(c.file.name, c.start, c.end, _flag_of(c)) for c in chunks]
        fast = all(c.lost or (not c.truncated_tail and not c.oversize
                              and looks_clean(c.data, self.config.max_line_bytes, c.lines))
                   for c in chunks)
        return Batch(chunks, ranges, token_for([(r.name, r.start, r.end) for r in ranges]), fast,
                     sum(c.lines for c in chunks))

    def _land(self, batch: Batch) -> bool:
        """Insert one batch (its dead letters too); False if stopped before it landed."""
        self.metrics.events_read.inc(batch.lines)
        started = time.perf_counter()
        lost = [c for c in batch.chunks if c.lost]
        lines = [c for c in batch.chunks if not c.lost]
        dead = [DeadLetter(c.file.name, c.start, spoolfiles.loss_reason(c.lost, c.start, c.end), b"", c.end - c.start)
                for c in lost]
        inserted, fast = 0, batch.fast
        try:
            if fast and lines:
                try:
                    body = lines[0].data if len(lines) == 1 else b"".join(c.data for c in lines)
                    inserted = self.writer.insert_events(body, batch.token, sum(c.lines for c in lines))
                except (DataError, PartitionLimit):  # cut down line by line
                    fast = False
            if not fast:
                inserted, refused = self._line_by_line(lines, batch.token)
                dead += refused
            self.writer.insert_dead_letters(dead, token_for([batch.token, "dead"]))
        except InterruptedError:
            self.log.warning("stopped with a batch pending; it is replayed on the next start")
            return False
        except WarehouseRejected as exc:  # given up on (--once): every other insert stops too
            self.rejected = exc
            self.stop.set()
            return False
        self.metrics.insert_seconds.observe(time.perf_counter() - started)
        self.metrics.batches.inc()
        self.metrics.events_inserted.inc(inserted)
        self.metrics.dead_letters.inc(len(dead) - len(lost))  # lines; a loss is counted in spool_files_changed
        if dead:
            self.log.warning("dead letters", count=len(dead), first_reason=dead[0].reason,
                             source=dead[0].source, position=dead[0].position)
        return True

    def _line_by_line(self, chunks: list[Chunk], token: str) -> tuple[int, list[DeadLetter]]:
        good: list[tuple[Line, bytes]] = []
        dead: list[DeadLetter] = []
        for chunk in chunks:
            if chunk.oversize:
                line = Line(chunk.file.name, chunk.start, bytes(chunk.data))
                dead.append(DeadLetter.of(line, f"line longer than {self.config.max_line_bytes} bytes",
                                          chunk.end - chunk.start))
                continue
            for line in lines_of(chunk.file.name, chunk.start, bytes(chunk.data)):
                result = validate(line, self.config.max_line_bytes)
                if isinstance(result, DeadLetter):
                    dead.append(result)
                else:
                    good.append((line, result))
        written, refused = self.writer.insert_rows(good, token_for([token, "validated"]))
        return written, dead + refused

    # -- housekeeping --------------------------------------------------------------
    def _retire(self) -> None:
        """Remove or archive spool files that are finished and fully ingested (and the
        temporary files of writers that died creating one: they hold no line)."""
        spoolfiles.remove_abandoned(self.config.spool_dir)
        if self.config.retention == "keep":
            return
        files = spoolfiles.list_files(self.config.spool_dir)
        in_flight = {r.name for batch in self.checkpoint.pending for r in batch}
        done = []
        for file in files:
            offset = self.checkpoint.offsets.get(file.name)
            if offset is None or file.name in in_flight:
                continue
            try:
                if not spoolfiles.finished(file):
                    continue
            except OSError:
                continue  # cannot be opened: reported when read, kept
            try:
                info = file.path.lstat()
                known = self.checkpoint.identities.get(file.name)
                # Only the very file read to its end: one shorter or another one under the
                # name is read (and its change reported) before it may go.
                if info.st_size != offset or (known is not None and known != (info.st_dev, info.st_ino)):
                    continue
                if self.config.retention == "archive":
                    archive = self.config.state_dir / "archive"
                    archive.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(file.path), archive / file.name)
                else:
                    file.path.unlink()
            except FileNotFoundError:
                pass
            done.append(file.name)
        if done:
            self.checkpoint.forget(done)

    def _on_retry(self, error: IngestError, wait_s: float) -> None:
        self.metrics.retries.labels(kind=retry_kind(error)).inc()
        if isinstance(error, WarehouseRejected):
            self.log.error(f"warehouse refused the insert: {error}", retry_in_s=round(wait_s, 2))
        else:
            self.log.warning("warehouse unavailable, retrying", detail=str(error)[:300], wait_s=round(wait_s, 2))


def _pinger(client: Any) -> Callable[[], bool] | None:
    """clickhouse-connect's ``ping`` (True when the server answers; it never raises), if any."""
    ping = getattr(client, "ping", None)
    return ping if callable(ping) else None


_LAST_READ = 64  # bytes kept of what was read last from each file


def _flag_of(chunk: Chunk) -> str:
    """The checkpoint's flag for a chunk's range (checkpoint.Range)."""
    if chunk.lost:
        return LOST + chunk.lost
    return "tail" if chunk.truncated_tail else "oversize" if chunk.oversize else ""


@contextmanager
def stop_on_signals(ingester: Ingester) -> Iterator[list[int]]:
    """SIGTERM / SIGINT: finish the batch in hand, checkpoint, exit.  Yields the signals
    received, so that the caller can tell a stop from a finished drain."""
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        ingester.stop.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
