"""The chDB engine behind the HTTP front: pooled connections and sessions.

One process owns the data directory (chDB allows one data path per process and
locks it against other processes).  Inside the process, separate chDB
connections to that path keep separate settings and run queries in parallel,
so the server keeps a pool for session-less queries and one dedicated
connection per HTTP session.

Per-query settings (from the URL) must apply to that query only.  They are
applied with ``SET`` as an *overlay* on the connection and taken back when a
later query does not ask for them; a session's own ``SET`` statements become
its baseline.  Settings are tracked per connection so a client that sends the
same settings with every query (as clickhouse-connect does) costs no extra
statements after the first.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Engine", "EngineConnection", "EngineError", "Sessions"]

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_CODE = re.compile(r"Code: (\d+)\. ")

# ClickHouse error codes the front itself raises.
BAD_ARGUMENTS = 36
UNKNOWN_SETTING = 115
READONLY = 164
SYNTAX_ERROR = 62
TOO_MANY_SIMULTANEOUS_QUERIES = 202
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
AUTHENTICATION_FAILED = 516
UNKNOWN_FORMAT = 73
CANNOT_DECOMPRESS = 271
TOO_MANY_BYTES = 307
ACCESS_DENIED = 497
USER_SESSION_LIMIT_EXCEEDED = 700
NOT_IMPLEMENTED = 48
STD_EXCEPTION = 1001
LOCK_GRACE_S = 0.5


class EngineError(Exception):
    """A ClickHouse-style error: a numeric code and the message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def from_exception(cls, exc: BaseException) -> EngineError:
        if isinstance(exc, EngineError):
            return exc
        text = str(exc)
        match = _CODE.search(text)
        if match:
            return cls(int(match.group(1)), text[match.start() :])
        return cls(STD_EXCEPTION, f"Code: {STD_EXCEPTION}. DB::Exception: {text}")

    @classmethod
    def of(cls, code: int, message: str) -> EngineError:
        return cls(code, f"Code: {code}. DB::Exception: {message}")


def quote(value: str) -> str:
    """A ClickHouse string literal.  SET takes no query parameters, so setting
    values are quoted here; setting names are checked against a strict pattern."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_setting_name(name: str) -> str:
    if not _SETTING_NAME.match(name):
        raise EngineError.of(UNKNOWN_SETTING, f"Unknown setting {name[:64]!r}")
    return name


class EngineConnection:
    """One chDB connection and the settings overlay currently applied to it."""

    def __init__(self, conn: Any, home_database: str = "default", keeps_baseline: bool = False):
        self.conn = conn
        self.database = "default"
        self.home_database = home_database
        # name -> (applied value, baseline value or None for the default)
        self._overlay: dict[str, tuple[str, str | None]] = {}
        # Pool connections never run a user's SET, so their baseline is the default.
        self._keeps_baseline = keeps_baseline
        self.discard = False

    def prepare(self, settings: Mapping[str, str], database: str | None) -> None:
        """Make exactly ``settings`` (on top of the baseline) and ``database`` current."""
        assignments = []
        for name in [n for n in self._overlay if n not in settings]:
            assignments.append(_assignment(name, self._overlay.pop(name)[1]))
        fresh = {n: v for n, v in settings.items() if self._overlay.get(n, (None,))[0] != v}
        if "readonly" in fresh:
            # The engine refuses to change ``readonly`` while it is on, so it cannot be taken
            # back after this query: the connection is discarded instead of reused.
            self.discard = True
        if fresh:
            unseen = [check_setting_name(n) for n in fresh if n not in self._overlay]
            baselines = self._baselines(unseen)
            for name, value in fresh.items():
                base = self._overlay[name][1] if name in self._overlay else baselines.get(name)
                self._overlay[name] = (value, base)
                assignments.append(f"{name} = {quote(value)}")
        if assignments:
            self.query("SET " + ", ".join(assignments))
        target = database or self.home_database
        if target != self.database:
            self.query("USE " + _identifier(target))
            self.database = target

    def clear_overlay(self) -> None:
        """Take back every per-query setting (before a session's own SET)."""
        if self._overlay:
            self.query("SET " + ", ".join(_assignment(n, b) for n, (_, b) in self._overlay.items()))
            self._overlay.clear()

    def _baselines(self, names: list[str]) -> dict[str, str]:
        if not self._keeps_baseline or not names:
            return {}
        raw = self.conn.query(
            "SELECT name, value FROM system.settings WHERE changed AND has({names:Array(String)}, name)",
            "JSONCompactEachRow",
            params={"names": "[" + ",".join(quote(n) for n in names) + "]"},
        )
        out: dict[str, str] = {}
        for line in bytes(raw.bytes()).splitlines():
            name, value = _json_pair(line)
            out[name] = value
        return out

    def query(self, sql: str, fmt: str = "TabSeparated", params: Mapping[str, str] | None = None) -> Any:
        try:
            return self.conn.query(sql, fmt, params=dict(params or {}))
        except Exception as exc:  # noqa: BLE001 - chDB raises plain RuntimeErrors carrying ClickHouse codes
            raise EngineError.from_exception(exc) from None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing is best effort at shutdown
            self.conn.close()


def _assignment(name: str, baseline: str | None) -> str:
    return f"{name} = DEFAULT" if baseline is None else f"{name} = {quote(baseline)}"


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _json_pair(line: bytes) -> tuple[str, str]:
    name, value = json.loads(line)
    return str(name), str(value)


class Engine:
    """Owns the chDB data path and a bounded pool of connections to it."""

    def __init__(self, path: str, max_concurrent_queries: int = 16, queue_timeout_s: float = 10.0):
        import chdb  # deferred: importing maps ~300 MB; only the server needs it

        self._chdb = chdb
        self.path = path
        self._slots = threading.BoundedSemaphore(max_concurrent_queries)
        self._queue_timeout_s = queue_timeout_s
        self._idle: list[EngineConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        first = self.new_connection()
        self.version = _scalar(first, "SELECT version()")
        self.timezone = _scalar(first, "SELECT timezone()")
        self._idle.append(first)

    def new_connection(self, keeps_baseline: bool = False) -> EngineConnection:
        return EngineConnection(self._chdb.connect(self.path), keeps_baseline=keeps_baseline)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """One of the bounded query slots, shared by session-less and session queries."""
        if not self._slots.acquire(timeout=self._queue_timeout_s):
            raise EngineError.of(TOO_MANY_SIMULTANEOUS_QUERIES, "Too many simultaneous queries")
        try:
            yield
        finally:
            self._slots.release()

    @contextmanager
    def connection(self) -> Iterator[EngineConnection]:
        """A pooled connection for one session-less query."""
        with self.slot():
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            conn = conn or self.new_connection()
            try:
                yield conn
            finally:
                with self._lock:
                    keep = not conn.discard and not self._closed
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _scalar(conn: EngineConnection, sql: str) -> str:
    return bytes(conn.query(sql, "TabSeparated").bytes()).decode().strip()


@dataclass
class _Session:
    conn: EngineConnection
    timeout_s: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    expires_at: float = 0.0
    last_used: float = 0.0


class Sessions:
    """HTTP sessions (``session_id``): a dedicated connection each, with expiry."""

    def __init__(self, engine: Engine, default_timeout_s: float = 60.0, max_timeout_s: float = 3600.0,
                 max_sessions: int = 64):
        self._engine = engine
        self._default = default_timeout_s
        self._max = max_timeout_s
        self._max_sessions = max_sessions
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    @contextmanager
    def session(self, session_id: str, timeout: str | None, check: bool) -> Iterator[EngineConnection]:
        timeout_s = self._timeout(timeout)
        with self._engine.slot(), self._opened(session_id, timeout_s, check) as sess:
            yield sess.conn

    @contextmanager
    def _opened(self, session_id: str, timeout_s: float, check: bool) -> Iterator[_Session]:
        sess = self._claim(session_id, check, timeout_s)
        try:
            sess.timeout_s = timeout_s
            yield sess
        finally:
            sess.last_used = time.monotonic()
            sess.expires_at = sess.last_used + sess.timeout_s
            if sess.conn.discard:  # a per-query readonly cannot be taken back: the session ends
                sess.expires_at = 0.0
                with self._lock:
                    self._sessions.pop(session_id, None)
                sess.conn.close()
            sess.lock.release()

    def _claim(self, session_id: str, check: bool, timeout_s: float) -> _Session:
        """The session ``session_id`` (opened if new), its lock held by the caller.

        A session is evicted or expired only by whoever takes its lock, so the lock is held
        from the moment a session is opened, and a session found is used only if it is still
        the registered one once its lock is taken (else it was closed meanwhile, and the id
        opens a new one, as after an expiry).
        """
        deadline = time.monotonic() + LOCK_GRACE_S
        while True:
            evicted, opened = None, False
            with self._lock:
                sess = self._sessions.get(session_id)
                if sess is None:
                    if check:
                        raise EngineError.of(SESSION_NOT_FOUND, f"Session {session_id[:64]} not found")
                    if len(self._sessions) >= self._max_sessions:
                        # clickhouse-connect opens a session per client and never closes it, so at
                        # the limit the least recently used idle session makes room (as an expiry would).
                        evicted = self._evict_idle()
                        if evicted is None:
                            raise EngineError.of(USER_SESSION_LIMIT_EXCEEDED,
                                                 f"Too many open sessions ({self._max_sessions}), all busy")
                    sess = _Session(self._engine.new_connection(keeps_baseline=True), timeout_s)
                    sess.lock.acquire()
                    self._sessions[session_id] = sess
                    opened = True
            if evicted is not None:
                evicted.conn.close()
            if opened:
                return sess
            # The previous query of this session may still be sending its last bytes when the
            # client, already holding the whole response, sends the next: wait a moment for it.
            # A query still running after that is a concurrent client.
            if not sess.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise EngineError.of(SESSION_IS_LOCKED,
                                     f"Session {session_id[:64]} is locked by a concurrent client")
            with self._lock:
                if self._sessions.get(session_id) is sess:
                    return sess
            sess.lock.release()

    def _evict_idle(self) -> _Session | None:
        """Remove the least recently used session not running a query (caller holds the lock)."""
        for sid, sess in sorted(self._sessions.items(), key=lambda item: item[1].last_used):
            if sess.lock.acquire(blocking=False):
                del self._sessions[sid]
                sess.lock.release()
                return sess
        return None

    def _timeout(self, raw: str | None) -> float:
        if raw is None or raw == "":
            return self._default
        try:
            value = float(raw)
        except ValueError:
            raise EngineError.of(BAD_ARGUMENTS, f"Invalid session timeout: {raw[:32]!r}") from None
        if not 0 < value <= self._max:
            raise EngineError.of(BAD_ARGUMENTS, f"Session timeout must be in (0, {self._max:g}] seconds")
        return value

    def expire(self, now: float | None = None) -> int:
        """Close sessions idle past their timeout; returns how many."""
        now = time.monotonic() if now is None else now
        expired = []
        with self._lock:
            for sid, sess in list(self._sessions.items()):
                if sess.expires_at and sess.expires_at <= now and sess.lock.acquire(blocking=False):
                    del self._sessions[sid]
                    expired.append(sess)
        for sess in expired:
            sess.conn.close()
        return len(expired)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for sess in sessions:
            sess.conn.close()
