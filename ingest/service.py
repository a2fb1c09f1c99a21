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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog

from . import spoolfiles
from .checkpoint import Checkpoint, Range
from .config import IngestConfig
from .metrics import IngestMetrics
from .screen import DeadLetter, Line, lines_of, looks_clean, validate
from .spoolfiles import Chunk
from .writer import DataError, Writer, token_for

__all__ = ["IngestConfig", "Ingester"]


@dataclass(frozen=True)
class Batch:
    chunks: list[Chunk]
    ranges: list[Range]
    token: str  # insert_deduplication_token: the same ranges always give the same token
    fast: bool  # screened clean: insert the bytes as they are
    lines: int


class Ingester:
    def __init__(self, config: IngestConfig, client: Any, metrics: IngestMetrics | None = None,
                 log: Any = None) -> None:
        self.config = config
        self.metrics = metrics or IngestMetrics()
        self.stop = threading.Event()
        self.log = log or structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"),
                        structlog.processors.JSONRenderer()],
            wrapper_class=structlog.BoundLogger, context_class=dict, cache_logger_on_first_use=False,
        )
        self.attach(client)
        self.checkpoint = Checkpoint(config.state_dir / "checkpoint.json")
        self._lag_at = 0.0

    def attach(self, client: Any) -> None:
        """Use ``client`` (clickhouse-connect) for inserts from now on."""
        self.writer = Writer(client, stop=self.stop, on_retry=self._on_retry)

    # -- the loop ----------------------------------------------------------------
    def run(self, once: bool = False, progress: Any = None) -> None:
        """Ingest until stopped (or, with ``once``, until the spool is drained).

        The stages overlap: while up to ``inserts_in_flight`` batches are being
        inserted (the work is the server's; this process only waits on sockets), the
        next is read and screened.  Batches commit in the order they were read, so a
        read position never passes a batch that has not landed.
        """
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
                        ahead[r.name] = max(ahead.get(r.name, 0), r.end)
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

        With ``once`` (draining a backlog) nothing is waited for: what is there is the batch.
        ``ahead`` holds read positions past the checkpoint (the batch still landing).
        """
        chunks: list[Chunk] = []
        rows = size = 0
        first_at: float | None = None
        taken: dict[str, int] = dict(ahead)
        while True:
            files = spoolfiles.list_files(self.config.spool_dir)
            latest = spoolfiles.latest_sequences(files)
            grew = False
            for file in files:
                if rows >= self.config.max_rows or size >= self.config.max_bytes:
                    break
                offset = taken.get(file.name, self.checkpoint.offsets.get(file.name, 0))
                chunk = spoolfiles.read_chunk(file, offset, self.config.max_bytes - size,
                                              self.config.max_line_bytes, spoolfiles.finished(file, latest))
                if chunk is None:
                    continue
                chunk = chunk.first_lines(self.config.max_rows - rows)
                chunks.append(chunk)
                taken[file.name] = chunk.end
                rows += max(1, chunk.lines)
                size += chunk.end - chunk.start
                grew = True
            if not chunks:
                return chunks
            first_at = first_at or time.monotonic()
            if rows >= self.config.max_rows or size >= self.config.max_bytes or self.stop.is_set():
                return chunks
            if once or time.monotonic() - first_at >= self.config.max_latency_s:
                return chunks
            if not grew:
                self.stop.wait(self.config.poll_s)

    def _reread(self, ranges: list[Range]) -> list[Chunk]:
        files = {f.name: f for f in spoolfiles.list_files(self.config.spool_dir)}
        chunks = []
        for r in ranges:
            file = files.get(r.name)
            if file is None:
                continue  # removed after it was committed elsewhere: nothing to replay
            with open(file.path, "rb") as handle:
                handle.seek(r.start)
                data = handle.read(min(r.end - r.start, self.config.max_line_bytes + 1)
                                   if r.flag == "oversize" else r.end - r.start)
            if r.flag == "oversize":
                data = data[: self.config.max_line_bytes]
            chunks.append(Chunk(file, r.start, r.end, data, truncated_tail=r.flag == "tail",
                                oversize=r.flag == "oversize"))
        return chunks

    # -- one batch ---------------------------------------------------------------
    def _prepare(self, chunks: list[Chunk]) -> Batch:
        """Name the batch and screen it (the CPU work, done while the previous one lands)."""
        ranges = [Range(c.file.name, c.start, c.end, "tail" if c.truncated_tail else "oversize" if c.oversize else "")
                  for c in chunks]
        fast = all(not c.truncated_tail and not c.oversize and looks_clean(c.data, self.config.max_line_bytes, c.lines)
                   for c in chunks)
        return Batch(chunks, ranges, token_for([(r.name, r.start, r.end) for r in ranges]), fast,
                     sum(c.lines for c in chunks))

    def _land(self, batch: Batch) -> bool:
        """Insert one batch (its dead letters too); False if stopped before it landed."""
        self.metrics.events_read.inc(batch.lines)
        started = time.perf_counter()
        dead: list[DeadLetter] = []
        inserted, fast = batch.lines, batch.fast
        try:
            if fast:
                try:
                    self.writer.insert_events(b"".join(c.data for c in batch.chunks), batch.token)
                except DataError:
                    fast = False
            if not fast:
                inserted, dead = self._line_by_line(batch.chunks, batch.token)
            self.writer.insert_dead_letters(dead, token_for([batch.token, "dead"]))
        except InterruptedError:
            self.log.warning("stopped with a batch pending; it is replayed on the next start")
            return False
        self.metrics.insert_seconds.observe(time.perf_counter() - started)
        self.metrics.batches.inc()
        self.metrics.events_inserted.inc(inserted)
        self.metrics.dead_letters.inc(len(dead))
        if dead:
            self.log.warning("dead letters", count=len(dead), first_reason=dead[0].reason,
                             source=dead[0].source, position=dead[0].position)
        return True

    def _line_by_line(self, chunks: list[Chunk], token: str) -> tuple[int, list[DeadLetter]]:
        good: list[tuple[Line, bytes]] = []
        dead: list[DeadLetter] = []
        for chunk in chunks:
            if chunk.oversize:
                line = Line(chunk.file.name, chunk.start, chunk.data)
                dead.append(DeadLetter.of(line, f"line longer than {self.config.max_line_bytes} bytes",
                                          chunk.end - chunk.start))
                continue
            for line in lines_of(chunk.file.name, chunk.start, chunk.data):
                result = validate(line, self.config.max_line_bytes)
                if isinstance(result, DeadLetter):
                    dead.append(result)
                else:
                    good.append((line, result))
        refused = self.writer.insert_rows(good, token_for([token, "validated"]))
        return len(good) - len(refused), dead + refused

    # -- housekeeping --------------------------------------------------------------
    def _retire(self) -> None:
        """Remove or archive spool files that are finished and fully ingested."""
        if self.config.retention == "keep":
            return
        files = spoolfiles.list_files(self.config.spool_dir)
        latest = spoolfiles.latest_sequences(files)
        done = []
        for file in files:
            offset = self.checkpoint.offsets.get(file.name)
            if offset is None or not spoolfiles.finished(file, latest):
                continue
            try:
                if file.path.stat().st_size > offset:
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

    def _on_retry(self, error: Exception, wait_s: float) -> None:
        self.metrics.retries.inc()
        self.log.warning("warehouse unavailable, retrying", error=type(error).__name__,
                         detail=str(error)[:200], wait_s=round(wait_s, 2))


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


def connect_when_ready(settings: Any, stop: threading.Event, log: Any) -> Any:
    """A client once the warehouse answers; waits (with backoff) while it does not."""
    wait = 0.2
    while True:
        try:
            # On loopback, compressing costs this process more CPU than it saves in copying.
            loopback = settings.host in ("127.0.0.1", "localhost", "::1")
            return settings.client(compress=False if loopback else "lz4", autogenerate_session_id=False,
                                   send_receive_timeout=120)
        except Exception as exc:
            log.warning("warehouse not reachable yet", url=settings.url, error=type(exc).__name__)
            if stop.wait(wait):
                raise InterruptedError("stopped before the warehouse answered") from exc
            wait = min(30.0, wait * 2)
