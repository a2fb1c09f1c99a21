"""ClickHouse's HTTP interface in front of the embedded engine.

Request flow: check Host and Origin -> authenticate -> split URL parameters
(HTTP-only, ``param_*``, settings) -> read the head of the body to route the
statement -> check it against the policy (``policy.py``) -> run it on a pooled or
session connection -> stream the result, compressed if asked.

Every resource a client can hold is bounded: connections (the oldest one not
running a query is closed to make room, so idle or half-sent requests cannot
lock out ``/ping``), the time a read of headers or body may wait, the
decompressed body size and ratio, sessions, and query slots (sessions included).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import ipaddress
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import codecs, sqlscan
from .engine import (
    ACCESS_DENIED,
    AUTHENTICATION_FAILED,
    BAD_ARGUMENTS,
    CANNOT_DECOMPRESS,
    READONLY,
    SYNTAX_ERROR,
    UNKNOWN_FORMAT,
    Engine,
    EngineConnection,
    EngineError,
    Sessions,
)
from .identity import IDENTITY_PATH, proof
from .policy import Policy, denied_setting
from .request import (
    READ_CHUNK,
    Body,
    BodyLimits,
    decoded,
    first_keyword,
    insert_head,
    is_utf8,
    land_insert,
    read_head,
    read_rest,
)
from .results import OneChunk, result_chunks, summary_json

__all__ = ["ClickHouseHTTPServer", "Limits"]

log = logging.getLogger("batchobs.warehouse.server")

# URL parameters that belong to the HTTP layer and never reach the engine as settings.
HTTP_ONLY = frozenset(
    {
        "query", "database", "default_format", "session_id", "session_timeout", "session_check",
        "query_id", "compress", "decompress", "user", "password", "quota_key", "buffer_size",
        "wait_end_of_query", "client_protocol_version", "role", "stacktrace",
        "enable_http_compression", "send_progress_in_http_headers",
        "http_headers_progress_interval_ms", "http_response_buffer_size", "http_wait_end_of_query",
        "add_http_cors_header",
    }
)
STREAMED_KEYWORDS = frozenset({"SELECT", "WITH"})
READ_ONLY_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})
_REDACT = re.compile(r"((?:^|[?&\s])password)=[^&\s\"]*", re.IGNORECASE)
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
_CROSS_SITE = frozenset({"cross-site", "same-site"})
LINGER_S, LINGER_BYTES = 2.0, 16 << 20  # after an error, how much of an unread body we still take

_STATUS_BY_CODE = {
    SYNTAX_ERROR: 400, BAD_ARGUMENTS: 400, UNKNOWN_FORMAT: 400, CANNOT_DECOMPRESS: 400,
    27: 400,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    115: 400,  # UNKNOWN_SETTING
    117: 400,  # INCORRECT_DATA
    47: 404, 60: 404, 81: 404,  # UNKNOWN_IDENTIFIER, UNKNOWN_TABLE, UNKNOWN_DATABASE
    READONLY: 403, AUTHENTICATION_FAILED: 403, ACCESS_DENIED: 403,
    307: 413,  # TOO_MANY_BYTES
    700: 503,  # USER_SESSION_LIMIT_EXCEEDED
    48: 501,  # NOT_IMPLEMENTED
    372: 404, 373: 409,  # SESSION_NOT_FOUND, SESSION_IS_LOCKED
    202: 503,  # TOO_MANY_SIMULTANEOUS_QUERIES
}
_CONTENT_TYPES = {
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "JSONCompactEachRow": "application/x-ndjson; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
}


@dataclass(frozen=True)
class Limits:
    """What one server lets its clients hold."""

    max_connections: int = 256
    max_sessions: int = 64
    read_timeout_s: float = 30.0  # one read of request headers or body
    queue_timeout_s: float = 10.0  # a query waits this long for a slot, then fails with 202
    body: BodyLimits = field(default_factory=BodyLimits)


_WAITING, _RUNNING = "waiting", "running"


class ClickHouseHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that answers as ClickHouse does."""

    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not hold up shutdown
    allow_reuse_address = True
    request_queue_size = 1024
    INSERT_SPOOL = "tmp-inserts"

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine,
        *,
        user: str = "default",
        password: str = "",
        token: str = "",
        limits: Limits | None = None,
        session_timeout_s: float = 60.0,
    ) -> None:
        self.engine = engine
        self.limits = limits or Limits()
        self.sessions = Sessions(engine, default_timeout_s=session_timeout_s,
                                 max_sessions=self.limits.max_sessions)
        self.policy = Policy(engine.new_connection())
        self.user = user
        self.password = password
        self.token = token
        self.display_name = "batchobs-chdb"
        self.insert_spool = Path(engine.path) / self.INSERT_SPOOL
        self.active_requests = 0
        self._active_lock = threading.Lock()
        # socket -> (state, since): what each open connection is doing
        self._connections: dict[socket.socket, tuple[str, float]] = {}
        super().__init__(address, _Handler)
        host, port = self.server_address[:2]
        self.allowed_hosts = _allowed_hosts(str(host), int(port))

    def track(self, delta: int) -> None:
        with self._active_lock:
            self.active_requests += delta

    def mark(self, sock: socket.socket, state: str) -> None:
        with self._active_lock:
            if sock in self._connections:
                self._connections[sock] = (state, time.monotonic())

    def process_request(self, request: Any, client_address: Any) -> None:
        """Admit a connection; at the limit, close the one that has waited longest without a query."""
        with self._active_lock:
            if len(self._connections) >= self.limits.max_connections:
                waiting = [(since, s) for s, (state, since) in self._connections.items() if state == _WAITING]
                if not waiting:
                    log.warning("connection limit (%d) reached by running queries: refusing one",
                                self.limits.max_connections)
                    self.shutdown_request(request)
                    return
                victim = min(waiting, key=lambda pair: pair[0])[1]
                del self._connections[victim]
                with contextlib.suppress(OSError):  # already gone
                    victim.shutdown(socket.SHUT_RDWR)  # its thread's blocked read returns and it ends
            self._connections[request] = (_WAITING, time.monotonic())
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._active_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)


def _allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host header values this server answers to; None for a wildcard bind (any)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_unspecified:
        return None
    names = {host.lower(), f"[{host}]" if address is not None and address.version == 6 else host.lower()}
    if host == "localhost" or (address is not None and address.is_loopback):
        names.update(_LOOPBACK_NAMES)
    return frozenset({*names, *(f"{n}:{port}" for n in names)})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body
    # waits for the client's delayed ACK, ~40 ms on every request.
    disable_nagle_algorithm = True
    server: ClickHouseHTTPServer
    server_version = "batchobs-chdb"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.limits.read_timeout_s)  # every read of headers and body

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), _REDACT.sub(r"\1=***", format % args))

    # -- routing -------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch(read_only=True)

    def do_POST(self) -> None:
        self._dispatch(read_only=False)

    def do_HEAD(self) -> None:
        self._dispatch(read_only=True, head=True)

    def _dispatch(self, read_only: bool, head: bool = False) -> None:
        self.server.track(+1)
        try:
            refusal = self._foreign_request()
            if refusal is not None:
                self.close_connection = True
                self._send_error(refusal, str(uuid.uuid4()))
            elif head:
                self._refuse_body()
                self._send_plain(200, b"")
            else:
                self._serve(read_only)
        finally:
            self.server.mark(self.connection, _WAITING)
            self.server.track(-1)

    def _foreign_request(self) -> EngineError | None:
        """A request from another site or for another host name (cross-site requests, DNS rebinding)."""
        allowed = self.server.allowed_hosts
        host = self.headers.get("Host")
        if allowed is not None and host is not None and host.lower() not in allowed:
            return EngineError.of(ACCESS_DENIED, f"Host {host[:100]!r} is not this server's address")
        origin = self.headers.get("Origin")
        if origin is not None and (allowed is None or urlsplit(origin).netloc.lower() not in allowed):
            return EngineError.of(ACCESS_DENIED, "Cross-origin requests are not allowed")
        if self.headers.get("Sec-Fetch-Site", "").lower() in _CROSS_SITE:
            return EngineError.of(ACCESS_DENIED, "Cross-site requests are not allowed")
        return None

    def _refuse_body(self) -> None:
        """A body where none belongs is not read: the connection closes, so it is never taken
        for the next request."""
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self.close_connection = True

    def _serve(self, read_only: bool) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path in ("/ping", "/replicas_status") or (url.path == "/" and read_only and "query" not in params):
            self._refuse_body()
            self._send_plain(200, b"Ok.\n")
            return
        if url.path == IDENTITY_PATH and read_only:
            self._refuse_body()
            self._send_plain(200, proof(self.server.token, params.get("nonce", "")[:128]).encode())
            return
        if url.path != "/":
            self._refuse_body()
            self._send_plain(404, b"There is no handle " + url.path.encode()[:200] + b"\n")
            return
        query_id = params.get("query_id") or str(uuid.uuid4())
        started = time.perf_counter_ns()
        if read_only:
            self._refuse_body()
        body = Body(self._body_chunks() if not read_only else iter(()))
        try:
            self._authenticate(params)
            self._run(params, body, read_only, query_id, started)
        except EngineError as err:
            # An unread body would be parsed as the next request on this connection.
            self.close_connection = self.close_connection or not body.exhausted
            self._send_error(err, query_id)
            if not body.exhausted:
                self._linger()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            log.exception("unexpected failure serving a query")
            self.close_connection = self.close_connection or not body.exhausted
            self._send_error(EngineError.from_exception(exc), query_id)

    def _linger(self) -> None:
        """Close after an error with the body unread, without losing the error to a reset.

        Closing a socket that still has unread input makes the kernel send RST, which can
        destroy the response before the client reads it.  So: stop writing, read and drop
        what the client is still sending for a bounded time and size, then close.
        """
        deadline = time.monotonic() + LINGER_S
        drained = 0
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            while drained < LINGER_BYTES and time.monotonic() < deadline:
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)

    # -- request parts -------------------------------------------------------
    def _authenticate(self, params: dict[str, str]) -> None:
        user, password = self.server.user, ""
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
            except ValueError:
                raise EngineError.of(AUTHENTICATION_FAILED, "Malformed Authorization header") from None
        user = self.headers.get("X-ClickHouse-User", params.get("user", user)) or self.server.user
        password = self.headers.get("X-ClickHouse-Key", params.get("password", password))
        ok_user = hmac.compare_digest(user.encode(), self.server.user.encode())
        ok_pass = hmac.compare_digest(password.encode(), self.server.password.encode())
        if not (ok_user and ok_pass):
            raise EngineError.of(
                AUTHENTICATION_FAILED,
                f"{user[:64]}: Authentication failed: password is incorrect, or there is no user with such name",
            )

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body as decompressed chunks (Content-Length or chunked)."""
        try:
            encoding = codecs.check_encoding(self.headers.get("Content-Encoding", ""))
        except LookupError as exc:
            raise EngineError.of(BAD_ARGUMENTS, str(exc)) from None
        raw = self._chunked() if "chunked" in self.headers.get("Transfer-Encoding", "").lower() else self._sized()
        yield from decoded(raw, encoding, self.server.limits.body)

    def _sized(self) -> Iterator[bytes]:
        try:
            remaining = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise EngineError.of(BAD_ARGUMENTS, "Invalid Content-Length") from None
        while remaining > 0:
            chunk = self.rfile.read(min(READ_CHUNK, remaining))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            remaining -= len(chunk)
            yield chunk

    def _chunked(self) -> Iterator[bytes]:
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                self.close_connection = True
                raise EngineError.of(BAD_ARGUMENTS, "Malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return
            chunk = self.rfile.read(size)
            self.rfile.readline(8)
            if len(chunk) < size:
                raise ConnectionError("client closed the connection mid-body")
            yield chunk

    # -- execution -----------------------------------------------------------
    def _run(self, params: dict[str, str], body: Iterator[bytes], read_only: bool,
             query_id: str, started: int) -> None:
        url_query = params.get("query", "").encode("utf-8")
        head, rest = read_head(url_query, body)
        keyword = first_keyword(head, final=False)
        if keyword is None:  # a comment or literal runs past the first chunk
            head = read_rest(head, rest)
            keyword = first_keyword(head, final=True) or ""
        insert = None
        if keyword == "INSERT" and not read_only:
            insert, head = insert_head(head, rest)
            if insert is not None:
                head = head[insert.data_start :]
        if insert is None:
            head = read_rest(head, rest)
            sql = head.decode("utf-8", errors="strict") if is_utf8(head) else None
            if sql is None:
                raise EngineError.of(SYNTAX_ERROR, "Query is not valid UTF-8")
            try:
                parsed = sqlscan.parse_query(sql)
            except sqlscan.SqlScanError as exc:
                raise EngineError.of(SYNTAX_ERROR, f"Syntax error: {exc}") from None
            if not parsed.sql:
                raise EngineError.of(SYNTAX_ERROR, "Empty query")
            if read_only and parsed.keyword not in READ_ONLY_KEYWORDS:
                raise EngineError.of(READONLY, "Cannot execute query in readonly mode (GET request)")
            self.server.policy.check(parsed.sql, read_only, _query_params(params))
        else:
            self.server.policy.check(f"{insert.sql} {insert.settings} FORMAT {insert.format}", False)
        settings = {k: v for k, v in params.items() if k not in HTTP_ONLY and not k.startswith("param_")}
        for name in settings:
            if denied_setting(name):
                raise EngineError.of(ACCESS_DENIED, f"Not allowed on the embedded warehouse: setting {name}")
        query_params = _query_params(params)
        with self._connection(params) as conn:
            self.server.mark(self.connection, _RUNNING)
            conn.prepare(settings, params.get("database") or None)
            if insert is not None:
                summary = land_insert(conn, insert, head, rest, self.server.insert_spool)
                self._send_summary(query_id, summary, started)
                return
            self._query(conn, parsed, params, query_params, query_id, started)

    def _connection(self, params: dict[str, str]) -> Any:
        session_id = params.get("session_id")
        if session_id:
            return self.server.sessions.session(
                session_id, params.get("session_timeout"), params.get("session_check") == "1"
            )
        return self.server.engine.connection()

    def _query(self, conn: EngineConnection, parsed: sqlscan.Query, params: dict[str, str],
               query_params: dict[str, str], query_id: str, started: int) -> None:
        session = bool(params.get("session_id"))
        if parsed.keyword in ("SET", "USE"):
            if session:
                conn.clear_overlay()
            else:
                conn.discard = True  # a session-less SET/USE must not outlive its query
        fmt = parsed.format or params.get("default_format") or "TabSeparated"
        try:
            if parsed.keyword in STREAMED_KEYWORDS:
                stream: Any = conn.conn.send_query(parsed.sql, fmt, params=query_params)
                first = stream.fetch()
                if first is None:
                    # chDB's stream yields nothing for zero rows, not even the format's prefix
                    # (JSON's meta and "rows": 0, CSVWithNames' header): ask again, unstreamed.
                    stream.close()
                    stream = OneChunk(conn.conn.query(parsed.sql, fmt, params=query_params))
                    first = stream.fetch()
            else:  # chDB streams only SELECTs; the rest return small results at once
                stream = OneChunk(conn.conn.query(parsed.sql, fmt, params=query_params))
                first = stream.fetch()
        except Exception as exc:  # noqa: BLE001 - engine errors carry ClickHouse codes
            raise EngineError.from_exception(exc) from None
        if session and parsed.keyword == "USE":
            conn.database = conn.home_database = bytes(
                conn.query("SELECT currentDatabase()").bytes()
            ).decode().strip()
        summary = {"read_rows": 0, "read_bytes": 0, "written_rows": 0, "written_bytes": 0,
                   "result_rows": 0, "result_bytes": 0}
        chunks = result_chunks(first, stream, summary)
        if params.get("wait_end_of_query") == "1":
            buffered = list(chunks)  # errors surface before any header is sent
            chunks = iter(buffered)
        self._send_stream(fmt, query_id, chunks, summary, started, params)

    # -- responses -------------------------------------------------------------
    def _common_headers(self, query_id: str) -> None:
        self.send_header("X-ClickHouse-Query-Id", query_id)
        self.send_header("X-ClickHouse-Timezone", self.server.engine.timezone)
        self.send_header("X-ClickHouse-Server-Display-Name", self.server.display_name)

    def _send_stream(self, fmt: str, query_id: str, chunks: Iterator[bytes], summary: dict[str, int],
                     started: int, params: dict[str, str]) -> None:
        encoding = None
        if params.get("enable_http_compression") == "1":
            encoding = codecs.choose_encoding(self.headers.get("Accept-Encoding", ""))
        self.send_response(200)
        self.send_header("Content-Type", _CONTENT_TYPES.get(fmt, "application/octet-stream"))
        self.send_header("X-ClickHouse-Format", fmt)
        self._common_headers(query_id)
        self.send_header("X-ClickHouse-Summary", summary_json(summary, started))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        enc = codecs.encoder(encoding) if encoding else None
        try:
            for chunk in chunks:
                self._write_chunk(enc.compress(chunk) if enc else chunk)
            if enc:
                self._write_chunk(enc.flush())
        except EngineError as err:
            # Headers are gone: append the error the way ClickHouse does and cut the
            # stream without its final chunk, so no client mistakes it for a full result.
            self._write_chunk(b"\n__exception__\n" + err.message.encode() + b"\n")
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))

    def _send_summary(self, query_id: str, summary: dict[str, int], started: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self._common_headers(query_id)
        self.send_header("X-ClickHouse-Summary", summary_json(summary, started))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_error(self, err: EngineError, query_id: str) -> None:
        body = err.message.rstrip().encode("utf-8", "replace") + b"\n"
        self.send_response(_STATUS_BY_CODE.get(err.code, 500))
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("X-ClickHouse-Exception-Code", str(err.code))
        self._common_headers(query_id)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_plain(self, status: int, body: bytes) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _query_params(params: dict[str, str]) -> dict[str, str]:
    """The query's parameters (``param_NAME=value`` in the URL), by name."""
    return {k[6:]: v for k, v in params.items() if k.startswith("param_")}
