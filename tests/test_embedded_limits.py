"""The embedded server stays up under resource attacks, and its protocol faults are fixed.

Real server processes on loopback.  Liveness is checked with a generous deadline;
the measured /ping times are printed (``pytest -s``) for the record, never asserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import zstandard

from warehouse import embedded
from warehouse.server import engine

from .test_embedded_security import alive_and_kept, clean_env
from .test_embedded_server import PASSWORDS, port_of, raw, started

READ_TIMEOUT_S = 2
QUEUE_TIMEOUT_S = 1
SLOTS = 4
MAX_CONNECTIONS = 128
MAX_SESSIONS = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.EmbeddedServer]:
    srv = started(embedded.start(
        tmp_path_factory.mktemp("limits") / "wh", env=clean_env(),
        extra_args=("--read-timeout", str(READ_TIMEOUT_S), "--queue-timeout", str(QUEUE_TIMEOUT_S),
                    "--max-concurrent-queries", str(SLOTS), "--max-connections", str(MAX_CONNECTIONS),
                    "--max-sessions", str(MAX_SESSIONS)),
    ))
    for sql in (b"CREATE DATABASE IF NOT EXISTS batchobs",
                b"CREATE TABLE batchobs.sentinel (a UInt8) ENGINE = MergeTree ORDER BY a",
                b"INSERT INTO batchobs.sentinel VALUES (1), (2), (3)",
                b"CREATE TABLE batchobs.landing (s String) ENGINE = MergeTree ORDER BY s"):
        assert 200 == raw(srv.url, "POST", "/", sql)[0]
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def url(server: embedded.EmbeddedServer) -> str:
    return server.url


def open_sockets(pid: int) -> int:
    return sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if fd.readlink().name.startswith("socket:"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def zstd_bomb(size: int = 1 << 20) -> bytes:
    """About ``size`` bytes of zstd frames that each expand to 64 MB of zeros."""
    frame = zstandard.ZstdCompressor(level=19).compress(bytes(64 << 20))
    return frame * (size // len(frame) + 1)


def request_bytes(url: str, method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port_of(url)}\r\n"
            f"X-ClickHouse-Key: {PASSWORDS[url]}\r\n{extra}")
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def read_all(sock: socket.socket, deadline_s: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes)."""
    sock.settimeout(deadline_s)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    return out


class TestBounded:
    def test_decompression_bomb(self, server: embedded.EmbeddedServer, url: str) -> None:
        """A 1 MB zstd body that would expand to ~500 GB is refused (271); memory and /ping are fine."""
        bomb = zstd_bomb()
        before = rss_mb(server.pid)
        status, headers, _ = raw(url, "POST", "/?query=INSERT%20INTO%20batchobs.landing%20FORMAT%20LineAsString",
                                 bomb, headers={"Content-Encoding": "zstd"})
        assert (400, "271") == (status, headers.get("x-clickhouse-exception-code"))
        status, headers, _ = raw(url, "POST", "/", bomb, headers={"Content-Encoding": "zstd"})
        assert "62" == headers.get("x-clickhouse-exception-code")  # a statement alone stops at 16 MB
        took = alive_and_kept(url)
        grown = rss_mb(server.pid) - before
        print(f"\n/ping after a {len(bomb) >> 10} KiB zstd bomb: {took * 1000:.1f} ms; RSS grew {grown:.0f} MB")
        assert grown < 512
        assert [] == list((server.data_dir / "tmp-inserts").iterdir())

    def test_thousand_idle_and_half_sent_connections(self, server: embedded.EmbeddedServer, url: str) -> None:
        """1,000 connections that send nothing or half a request cannot lock out /ping, nor hold 1,000 sockets."""
        socks = []
        try:
            for i in range(1000):
                sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=30)
                if i % 2:
                    sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nSELE")
                socks.append(sock)
            took = alive_and_kept(url)
            held = open_sockets(server.pid)
            print(f"\n/ping with 1000 idle or half-sent connections open: {took * 1000:.1f} ms; "
                  f"the server holds {held} sockets")
            assert held <= MAX_CONNECTIONS + 8  # the listener and a few in flight
        finally:
            for sock in socks:
                sock.close()

    def test_two_hundred_sessions(self, url: str) -> None:
        """200 sessions: the server keeps at most its limit (least recently used go first); /ping answers."""
        sids = [uuid.uuid4().hex for _ in range(200)]
        for sid in sids:
            assert 200 == raw(url, "POST", f"/?session_id={sid}", b"SELECT 1")[0]
        took = alive_and_kept(url)
        print(f"\n/ping after 200 sessions: {took * 1000:.1f} ms")
        # session_check=1 probes without opening: 372 (SESSION_NOT_FOUND) for those that made room
        kept = [sid for sid in reversed(sids)
                if 200 == raw(url, "POST", f"/?session_id={sid}&session_check=1", b"SELECT 1")[0]]
        assert sids[-MAX_SESSIONS:][::-1] == kept

    def test_session_queries_share_the_concurrency_limit(self, url: str) -> None:
        """With every slot held by session queries, one more session query fails with 202.

        Which one is refused depends on who asks first: a probe, or (when a probe took a slot
        before the last slow query arrived) one of the slow queries. Either way it is a
        session query refused because session queries filled the slots; with sessions outside
        the limit none is refused."""
        results: list[int] = []

        def slow() -> None:  # ~9 s: three blocks of one row, 3 s each
            status = raw(url, "POST", f"/?session_id={uuid.uuid4().hex}&session_timeout=2",
                         b"SELECT sleep(3) FROM numbers(3) SETTINGS max_block_size = 1")[0]
            results.append(status)

        workers = [threading.Thread(target=slow) for _ in range(SLOTS)]
        for worker in workers:
            worker.start()
        probes = []
        while any(w.is_alive() for w in workers) and "202" not in probes and 202 not in results:
            probes.append(raw(url, "POST", f"/?session_id={uuid.uuid4().hex}&session_timeout=2", b"SELECT 1")[1]
                          .get("x-clickhouse-exception-code") or "ok")
        for worker in workers:
            worker.join(60)
        refused = probes.count("202") + results.count(202)
        assert refused >= 1, (probes, results)
        assert set(results) <= {200, 202}, results
        alive_and_kept(url)

    @pytest.mark.parametrize("partial", [b"POST / HTTP/1.1\r\nHost: 127",
                                         b"POST / HTTP/1.1\r\nContent-Length: 50\r\n\r\nSE"])
    def test_read_timeout_closes_a_stalled_request(self, url: str, partial: bytes) -> None:
        """Headers or a body that stop arriving: the server closes the connection after its read timeout."""
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=30) as sock:
            sock.sendall(partial)
            started_at = time.monotonic()
            read_all(sock, deadline_s=30)
            assert time.monotonic() - started_at < 25  # closed by the server, not by our deadline
        alive_and_kept(url)

    @pytest.mark.parametrize(("method", "path"), [("GET", "/ping"), ("HEAD", "/"), ("POST", "/ping"),
                                                  ("GET", "/?query=SELECT%201")])
    def test_body_where_none_belongs_is_never_a_second_request(self, url: str, method: str, path: str) -> None:
        """A body smuggled into GET, HEAD or POST /ping is not run: one response, then the connection closes."""
        assert 200 == raw(url, "POST", "/", b"CREATE TABLE IF NOT EXISTS batchobs.target (a UInt8) ENGINE = Memory")[0]
        smuggled = request_bytes(url, "POST", "/", b"DROP TABLE batchobs.target")
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=30) as sock:
            sock.sendall(request_bytes(url, method, path, smuggled))
            answer = read_all(sock)
        assert 1 == answer.count(b"HTTP/1.1 ")
        assert (200, b"1\n") == raw(url, "POST", "/", b"EXISTS TABLE batchobs.target")[::2]
        alive_and_kept(url)


class TestProtocol:
    def test_readonly_does_not_leak(self, url: str) -> None:
        """A query sent with readonly=2 leaves later queries writable and at readonly 0."""
        assert 200 == raw(url, "POST", "/?readonly=2", b"SELECT 1")[0]
        for _ in range(3 * SLOTS):
            assert (200, b"0\n") == raw(url, "POST", "/", b"SELECT getSetting('readonly')")[::2]
        assert 200 == raw(url, "POST", "/", b"INSERT INTO batchobs.landing VALUES ('after readonly')")[0]

    def test_readonly_in_a_session_does_not_stick(self, url: str) -> None:
        """A per-query readonly inside a session does not stay on that session's later queries."""
        sid = uuid.uuid4().hex
        assert 200 == raw(url, "POST", f"/?session_id={sid}&readonly=2", b"SELECT 1")[0]
        assert (200, b"0\n") == raw(url, "POST", f"/?session_id={sid}", b"SELECT getSetting('readonly')")[::2]

    @pytest.mark.parametrize("fmt", ["JSON", "JSONCompact"])
    def test_zero_rows_keep_meta(self, url: str, fmt: str) -> None:
        """A JSON result with no rows has its meta and "rows": 0, as ClickHouse sends it."""
        status, _, body = raw(url, "POST", "/", f"SELECT number AS n FROM numbers(3) WHERE n > 5 FORMAT {fmt}".encode())
        parsed = json.loads(body)
        assert (200, 0, "n") == (status, parsed["rows"], parsed["meta"][0]["name"])

    def test_zero_rows_keep_the_header(self, url: str) -> None:
        """CSVWithNames with no rows still names its columns."""
        body = raw(url, "POST", "/", b"SELECT 1 AS a WHERE 0 FORMAT CSVWithNames")[2]
        assert b'"a"\n' == body


class TestInsertSpool:
    def test_spooled_bodies_removed_after_inserts(self, server: embedded.EmbeddedServer, url: str) -> None:
        """After a good and a refused insert, nothing is left in tmp-inserts."""
        ok = raw(url, "POST", "/?query=INSERT%20INTO%20batchobs.landing%20FORMAT%20LineAsString", b"a\nb\n")
        bad = raw(url, "POST", "/?query=INSERT%20INTO%20batchobs.sentinel%20FORMAT%20JSONEachRow", b"{\"a\": \"x\"}\n")
        assert (200, True) == (ok[0], bad[0] >= 400)
        assert [] == list((server.data_dir / "tmp-inserts").iterdir())

    def test_leftovers_removed_at_start(self, tmp_path: Path) -> None:
        """A crashed insert's spooled body is gone once the server starts again."""
        spool = tmp_path / "wh" / "tmp-inserts"
        spool.mkdir(parents=True)
        (spool / "tmpabc.insert").write_bytes(b"x" * 1000)
        server = embedded.start(tmp_path / "wh", env=clean_env())
        try:
            assert not spool.exists() or [] == list(spool.iterdir())
        finally:
            server.stop()


class SlowToLock:
    """A session lock whose waiting acquires take their time (50 ms) first: it widens the moment
    between a session being opened and its first query, where another client's eviction
    (which never waits) could take it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking:
            time.sleep(0.05)
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()


class FakeEngine:
    """Stands in for chDB (only the session bookkeeping is under test): connections that
    know whether they were closed."""

    def slot(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def new_connection(self, keeps_baseline: bool = False) -> SimpleNamespace:
        conn = SimpleNamespace(discard=False, closed=False)
        conn.close = lambda: setattr(conn, "closed", True)
        return conn


class TestSessionRace:
    def test_a_session_just_opened_is_never_evicted_before_its_query(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """At the session limit, a second client's new session finds the first one busy from the
        moment it opened (too many sessions), never closes it under its first query."""
        monkeypatch.setattr(engine, "_Session", dataclasses.make_dataclass(
            "_Session", [("lock", Any, dataclasses.field(default_factory=SlowToLock))], bases=(engine._Session,)))
        sessions = engine.Sessions(FakeEngine(), max_sessions=1)  # type: ignore[arg-type]
        seen: list[bool] = []
        refused: list[int] = []

        def first() -> None:
            with sessions.session("a", None, False) as conn:
                time.sleep(0.2)
                seen.append(conn.closed)

        def second() -> None:
            time.sleep(0.01)  # after "a" is opened, while its opener is still taking its lock
            try:
                with sessions.session("b", None, False):
                    pass
            except engine.EngineError as exc:
                refused.append(exc.code)

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert ([False], [engine.USER_SESSION_LIMIT_EXCEEDED]) == (seen, refused)
