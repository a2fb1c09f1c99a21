"""The embedded server speaks ClickHouse's HTTP interface (real chDB, real sockets)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import clickhouse_connect
import lz4.frame
import pytest
import zstandard
from clickhouse_connect.driver.exceptions import DatabaseError

from warehouse import embedded

from .conftest import port_of

# url -> password of the servers these tests started (every embedded server has one)
PASSWORDS: dict[str, str] = {}


def started(server: embedded.EmbeddedServer) -> embedded.EmbeddedServer:
    PASSWORDS[server.url] = server.password
    return server


def client(url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("password", PASSWORDS.get(url, ""))
    return clickhouse_connect.get_client(host="127.0.0.1", port=port_of(url), **kwargs)


def raw(url: str, method: str, path: str, body: bytes = b"",
        headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=30)
    headers = dict(headers or {})
    if auth and url in PASSWORDS:
        headers.setdefault("X-ClickHouse-Key", PASSWORDS[url])
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def url(embedded_server: embedded.EmbeddedServer) -> str:
    return started(embedded_server).url


class TestClickHouseConnect:
    def test_command_and_query_shapes(self, url: str) -> None:
        """command, rows, Arrow and DataFrame all work through the stock driver."""
        c = client(url)
        assert "26" == c.command("SELECT version()").split(".")[0]
        assert [(0, "0"), (1, "1")] == c.query("SELECT number, toString(number) FROM numbers(2)").result_rows
        table = c.query_arrow("SELECT number AS n FROM numbers(5)")
        assert [0, 1, 2, 3, 4] == table.column("n").to_pylist()
        frame = c.query_df("SELECT number AS n, 'x' AS s FROM numbers(3)")
        assert [0, 1, 2] == list(frame["n"])

    def test_insert_100k_rows_with_lz4(self, url: str) -> None:
        """100k rows inserted with lz4 request compression all arrive."""
        c = client(url, compress="lz4")
        c.command("CREATE TABLE IF NOT EXISTS default.big (a UInt64, s String, m Map(String, String)) "
                  "ENGINE = MergeTree ORDER BY a")
        c.command("TRUNCATE TABLE default.big")
        c.insert("default.big", [[i, f"s{i}", {"k": str(i)}] for i in range(100_000)],
                 column_names=["a", "s", "m"])
        assert [(100_000, sum(range(100_000)), "s99999")] == c.query(
            "SELECT count(), sum(a), max(s) FROM default.big").result_rows

    def test_server_side_parameters(self, url: str) -> None:
        """{name:Type} parameters are bound by the engine, not spliced into SQL."""
        c = client(url)
        assert [(42, "O'Brien")] == c.query(
            "SELECT {n:UInt32} + 1, {s:String}", parameters={"n": 41, "s": "O'Brien"}).result_rows

    def test_parameters_in_statements_the_policy_explains(self, url: str) -> None:
        """DESCRIBE (checked through EXPLAIN AST) with a query parameter runs, as in ClickHouse."""
        rows = client(url).query("DESCRIBE (SELECT {n:UInt8} AS n, {s:String} AS s)",
                                 parameters={"n": 1, "s": "x"}).result_rows
        assert [("n", "UInt8"), ("s", "String")] == [row[:2] for row in rows]

    def test_syntax_error_carries_code(self, url: str) -> None:
        """A syntax error surfaces as an exception with ClickHouse's code 62."""
        with pytest.raises(DatabaseError) as err:
            client(url).query("SELEC 1")
        assert getattr(err.value, "code", None) == 62 or "code: 62" in str(err.value)

    def test_four_clients_at_once(self, url: str) -> None:
        """Four clients inserting and querying concurrently all succeed."""
        setup = client(url)
        setup.command("CREATE TABLE IF NOT EXISTS default.conc (w UInt8, i UInt32) ENGINE = MergeTree ORDER BY (w, i)")
        setup.command("TRUNCATE TABLE default.conc")
        errors: list[BaseException] = []

        def work(w: int) -> None:
            try:
                c = client(url)
                for batch in range(5):
                    c.insert("default.conc", [[w, batch * 1000 + i] for i in range(1000)], column_names=["w", "i"])
                    assert c.query("SELECT count() FROM default.conc WHERE w = {w:UInt8}",
                                   parameters={"w": w}).result_rows[0][0] == (batch + 1) * 1000
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert [] == errors
        assert [(4, 20_000)] == setup.query("SELECT uniqExact(w), count() FROM default.conc").result_rows


class TestHttpSemantics:
    def test_ping(self, url: str) -> None:
        """/ping answers Ok."""
        assert (200, b"Ok.\n") == raw(url, "GET", "/ping")[::2]

    def test_url_settings_apply_to_one_query_only(self, url: str) -> None:
        """A setting in the URL does not stick to the pooled connection."""
        default = raw(url, "POST", "/", b"SELECT getSetting('max_threads')")[2]
        assert b"1\n" == raw(url, "POST", "/?max_threads=1", b"SELECT getSetting('max_threads')")[2]
        for _ in range(3):  # whichever pooled connection answers
            assert default == raw(url, "POST", "/", b"SELECT getSetting('max_threads')")[2]

    def test_http_only_params_never_reach_the_engine(self, url: str) -> None:
        """HTTP-only parameters are accepted without becoming unknown settings."""
        path = ("/?wait_end_of_query=1&query_id=q1&client_protocol_version=54405&buffer_size=1"
                "&enable_http_compression=0&send_progress_in_http_headers=1&database=default")
        status, headers, body = raw(url, "POST", path, b"SELECT 7")
        assert (200, b"7\n", "q1") == (status, body, headers["x-clickhouse-query-id"])
        summary = json.loads(headers["x-clickhouse-summary"])
        assert {"read_rows", "written_rows", "elapsed_ns"} <= set(summary)

    def test_unknown_setting_is_refused(self, url: str) -> None:
        """A setting the engine does not know is an error, as in ClickHouse."""
        status, headers, _ = raw(url, "POST", "/?no_such_setting=1", b"SELECT 1")
        assert (400, "115") == (status, headers["x-clickhouse-exception-code"])

    def test_format_clause_and_header(self, url: str) -> None:
        """The trailing FORMAT clause picks the output and is echoed in X-ClickHouse-Format."""
        status, headers, body = raw(url, "POST", "/", b"SELECT 1 AS a, 'FORMAT CSV' AS b FORMAT JSONEachRow")
        assert (200, "JSONEachRow") == (status, headers["x-clickhouse-format"])
        assert {"a": 1, "b": "FORMAT CSV"} == json.loads(body)

    def test_inline_insert_and_query_param_insert(self, url: str) -> None:
        """INSERT data inline in the body, or after a query in the URL, both land."""
        raw(url, "POST", "/", b"CREATE TABLE IF NOT EXISTS default.inl (a UInt8, s String) ENGINE = Memory")
        raw(url, "POST", "/", b"TRUNCATE TABLE default.inl")
        assert 200 == raw(url, "POST", "/", b'INSERT INTO default.inl FORMAT JSONEachRow {"a":1,"s":"x"}\n')[0]
        assert 200 == raw(url, "POST", "/?query=INSERT%20INTO%20default.inl%20FORMAT%20CSV", b"2,y\n3,z\n")[0]
        assert b"3\t6\n" == raw(url, "POST", "/", b"SELECT count(), sum(a) FROM default.inl")[2]

    @pytest.mark.parametrize(
        ("ddl", "rows", "code"),
        [
            ("(x UInt32, CONSTRAINT small CHECK x < 5) ENGINE = MergeTree ORDER BY x",
             b"".join(b'{"x":%d}\n' % i for i in range(10)), "469"),
            ("(d Date) ENGINE = MergeTree PARTITION BY d ORDER BY d",
             b"".join(b'{"d":"2020-01-01"}\n'.replace(b"01-01", b"%02d-%02d" % (1 + i // 28, 1 + i % 28))
                      for i in range(200)), "252"),
        ],
    )
    def test_rejected_insert_is_an_error_not_a_silent_loss(self, url: str, ddl: str, rows: bytes,
                                                           code: str) -> None:
        """Rows the table refuses (constraint, too many partitions) fail the insert loudly."""
        table = f"default.rej_{uuid.uuid4().hex[:8]}"
        assert 200 == raw(url, "POST", "/", f"CREATE TABLE {table} {ddl}".encode())[0]
        status, headers, _body = raw(url, "POST", "/", f"INSERT INTO {table} FORMAT JSONEachRow\n".encode() + rows)
        assert (code, b"0\n") == (headers.get("x-clickhouse-exception-code"),
                                  raw(url, "POST", "/", f"SELECT count() FROM {table}".encode())[2])
        assert status >= 400

    def test_chunked_request_body(self, url: str) -> None:
        """A chunked, streamed request body is read to the end."""
        raw(url, "POST", "/", b"CREATE TABLE IF NOT EXISTS default.chk (a UInt32) ENGINE = Memory")
        raw(url, "POST", "/", b"TRUNCATE TABLE default.chk")
        conn = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=30)
        rows = (f"{i}\n".encode() for i in range(10_000))
        conn.request("POST", "/?query=INSERT%20INTO%20default.chk%20FORMAT%20TSV", body=rows,
                     encode_chunked=True, headers={"X-ClickHouse-Key": PASSWORDS[url]})
        assert 200 == conn.getresponse().status
        conn.close()
        assert b"10000\t49995000\n" == raw(url, "POST", "/", b"SELECT count(), sum(a) FROM default.chk")[2]

    @pytest.mark.parametrize("encoding", ["gzip", "zstd", "lz4", "deflate"])
    def test_request_and_response_compression(self, url: str, encoding: str) -> None:
        """Compressed request bodies are decoded; responses are compressed when asked."""
        packers = {"gzip": (gzip.compress, gzip.decompress),
                   "zstd": (zstandard.compress,
                            lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)),
                   "lz4": (lz4.frame.compress, lz4.frame.decompress),
                   "deflate": (__import__("zlib").compress, __import__("zlib").decompress)}
        pack, unpack = packers[encoding]
        status, headers, body = raw(
            url, "POST", "/?enable_http_compression=1",
            pack(b"SELECT number FROM numbers(100000) FORMAT TSV"),
            {"Content-Encoding": encoding, "Accept-Encoding": encoding},
        )
        assert (200, encoding) == (status, headers.get("content-encoding"))
        lines = unpack(body).splitlines()
        assert (100_000, b"99999") == (len(lines), lines[-1])

    def test_large_result_streams(self, url: str) -> None:
        """A result larger than one engine chunk streams, chunked, complete."""
        status, headers, body = raw(url, "POST", "/", b"SELECT number FROM numbers(3000000) FORMAT TSV")
        assert (200, "chunked") == (status, headers.get("transfer-encoding"))
        assert 3_000_000 == body.count(b"\n")

    def test_error_after_headers_is_not_a_clean_end(self, url: str) -> None:
        """An error mid-stream is written into the body and the stream is cut."""
        conn = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=30)
        conn.request("POST", "/", body=b"SELECT throwIf(number = 2900000, 'boom') FROM numbers(3000000) FORMAT TSV",
                     headers={"X-ClickHouse-Key": PASSWORDS[url]})
        resp = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as err:
            resp.read()
        assert b"boom" in err.value.partial
        conn.close()


class TestBadRequests:
    @pytest.mark.parametrize(
        ("body", "headers", "code"),
        [
            (os.urandom(2048), {}, None),
            (b"SELECT 1", {"Content-Encoding": "lz4"}, "271"),
            (b"SELECT 1", {"Content-Encoding": "snappy-ish"}, "36"),
            (b"SELECT 1 FORMAT NoSuchFormat", {}, "73"),
            (b"SELECT 1; DROP TABLE x", {}, "62"),
            (b"", {}, "62"),
        ],
    )
    def test_clickhouse_style_error_and_server_survives(self, url: str, body: bytes,
                                                        headers: dict[str, str], code: str | None) -> None:
        """Garbage, bad compression and unknown formats get an error, then the server still answers."""
        status, resp_headers, text = raw(url, "POST", "/", body, headers)
        assert status >= 400
        assert "x-clickhouse-exception-code" in resp_headers
        if code:
            assert code == resp_headers["x-clickhouse-exception-code"]
        assert text.startswith(b"Code: ")
        assert (200, b"Ok.\n") == raw(url, "GET", "/ping")[::2]

    def test_get_is_read_only(self, url: str) -> None:
        """GET runs reads only, as in ClickHouse."""
        assert b"1\n" == raw(url, "GET", "/?query=SELECT%201")[2]
        status, headers, _ = raw(url, "GET", "/?query=CREATE%20TABLE%20default.g%20(a%20UInt8)%20ENGINE%3DMemory")
        assert (403, "164") == (status, headers["x-clickhouse-exception-code"])

    def test_unknown_path(self, url: str) -> None:
        """An unknown handler path is a 404, not a query."""
        assert 404 == raw(url, "GET", "/nope")[0]


class TestSessions:
    def test_session_state_persists(self, url: str) -> None:
        """SET and temporary tables live as long as the session."""
        sid = uuid.uuid4().hex
        for statement in (b"SET max_threads = 1", b"CREATE TEMPORARY TABLE tmp (a UInt8)",
                          b"INSERT INTO tmp VALUES (5)"):
            # one after another, each on a new connection: never "locked by a concurrent client"
            assert 200 == raw(url, "POST", f"/?session_id={sid}", statement)[0]
        assert b"1\t5\n" == raw(url, "POST", f"/?session_id={sid}",
                                b"SELECT getSetting('max_threads'), sum(a) FROM tmp")[2]
        # a per-query setting in the session does not replace the session's own SET
        assert b"3\n" == raw(url, "POST", f"/?session_id={sid}&max_threads=3",
                             b"SELECT getSetting('max_threads')")[2]
        assert b"1\n" == raw(url, "POST", f"/?session_id={sid}", b"SELECT getSetting('max_threads')")[2]

    def test_session_less_set_does_not_leak(self, url: str) -> None:
        """A SET without a session affects no later query."""
        default = raw(url, "POST", "/", b"SELECT getSetting('max_threads')")[2]
        raw(url, "POST", "/", b"SET max_threads = 1")
        for _ in range(3):
            assert default == raw(url, "POST", "/", b"SELECT getSetting('max_threads')")[2]

    def test_session_check_and_expiry(self, url: str) -> None:
        """session_check=1 fails for an unknown session; an idle session expires."""
        sid = uuid.uuid4().hex
        _, headers, _ = raw(url, "POST", f"/?session_id={sid}&session_check=1", b"SELECT 1")
        assert "372" == headers["x-clickhouse-exception-code"]
        assert 200 == raw(url, "POST", f"/?session_id={sid}&session_timeout=1", b"SELECT 1")[0]
        assert 200 == raw(url, "POST", f"/?session_id={sid}&session_check=1&session_timeout=1", b"SELECT 1")[0]
        time.sleep(3)  # idle past the 1 s timeout and the server's 1 s expiry sweep
        _status, headers, _ = raw(url, "POST", f"/?session_id={sid}&session_check=1&session_timeout=1", b"SELECT 1")
        assert "372" == headers["x-clickhouse-exception-code"]

    def test_concurrent_use_of_one_session_is_refused(self, url: str) -> None:
        """A second query in a busy session gets SESSION_IS_LOCKED."""
        sid = uuid.uuid4().hex
        slow = threading.Thread(target=raw, args=(url, "POST", f"/?session_id={sid}", b"SELECT sleep(3)"))
        slow.start()
        codes = set()
        while slow.is_alive():  # ask again until the slow query holds the session (it runs 3 s)
            codes.add(raw(url, "POST", f"/?session_id={sid}", b"SELECT 1")[1].get("x-clickhouse-exception-code"))
            if "373" in codes:
                break
            time.sleep(0.05)
        slow.join(30)
        assert "373" in codes


class TestProcess:
    def test_restart_keeps_data_and_second_server_is_refused(self, tmp_path: Path) -> None:
        """Data survives a restart; a second server on the same directory fails at once."""
        data = tmp_path / "wh"
        server = started(embedded.start(data))
        try:
            c = client(server.url)
            c.command("CREATE TABLE default.keep (a UInt32) ENGINE = MergeTree ORDER BY a")
            c.insert("default.keep", [[i] for i in range(1000)], column_names=["a"])
            second = subprocess.run(
                [sys.executable, "-m", "warehouse", "serve", "--data-dir", str(data), "--port", "0"],
                capture_output=True, text=True, timeout=60,
            )
            assert 3 == second.returncode
            assert "already served by another process" in second.stderr  # refused by our lock, named
        finally:
            assert 0 == server.stop()
        again = started(embedded.start(data))
        try:
            assert [(1000,)] == client(again.url).query("SELECT count() FROM default.keep").result_rows
        finally:
            again.stop()

    def test_password_is_required_and_never_logged(self, tmp_path: Path) -> None:
        """With a password set, requests without it fail with 516; the log never holds it."""
        secret = "s3cr3t-" + uuid.uuid4().hex[:8]
        env = dict(os.environ, BATCHOBS_SERVE_PASSWORD=secret, BATCHOBS_LOG_LEVEL="DEBUG")
        server = embedded.start(tmp_path / "wh", env=env)
        try:
            status, headers, _ = raw(server.url, "POST", "/", b"SELECT 1", auth=False)
            assert (403, "516") == (status, headers["x-clickhouse-exception-code"])
            ok = client(server.url, username="default", password=secret)
            assert 1 == ok.command("SELECT 1")
            raw(server.url, "POST", f"/?user=default&password={secret}x", b"SELECT 1", auth=False)
        finally:
            server.stop()
        assert secret not in (tmp_path / "wh" / "server.log").read_text()

    def test_sigterm_finishes_in_flight_query(self, tmp_path: Path) -> None:
        """SIGTERM lets a running query finish, then the server exits 0."""
        server = started(embedded.start(tmp_path / "wh"))
        result: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: result.update(
            r=raw(server.url, "POST", "/", b"SELECT sleep(2.5), 'done'")))
        worker.start()
        time.sleep(1.0)  # the query is running (it takes 2.5 s) when SIGTERM arrives
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        worker.join(30)
        assert 0 == server.process.wait(30)
        assert (200, b"0\tdone\n") == result["r"][::2]
