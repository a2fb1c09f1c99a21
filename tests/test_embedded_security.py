"""The embedded server as a hostile local client meets it: each attack of issue 11 is refused.

Every test runs against a real server process on loopback and checks the refusal, its
ClickHouse error code, that ``/ping`` still answers and that the data is still there.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchobs.transform import dbt_env
from warehouse import embedded
from warehouse.connection import ClickHouseSettings, resolve
from warehouse.server.identity import PASSWORD_FILE, READY_FILE

from .test_embedded_server import port_of, raw, started

SENTINEL_ROWS = 3


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without the caller's BATCHOBS_* settings (tests must not depend on them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOBS_")}
    env.update(extra)
    return env


def alive_and_kept(url: str, deadline_s: float = 10.0) -> float:
    """/ping answers within a generous deadline and the sentinel rows are all there; returns ping seconds."""
    started_at = time.monotonic()
    with urllib.request.urlopen(url + "/ping", timeout=deadline_s) as resp:
        assert b"Ok.\n" == resp.read()
    took = time.monotonic() - started_at
    assert (200, b"3\n") == raw(url, "POST", "/", b"SELECT count() FROM batchobs.sentinel")[::2]
    return took


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.EmbeddedServer]:
    srv = started(embedded.start(tmp_path_factory.mktemp("secure") / "wh", env=clean_env()))
    raw(srv.url, "POST", "/", b"CREATE DATABASE IF NOT EXISTS batchobs")
    raw(srv.url, "POST", "/", b"CREATE TABLE batchobs.sentinel (a UInt8) ENGINE = MergeTree ORDER BY a")
    raw(srv.url, "POST", "/", b"INSERT INTO batchobs.sentinel VALUES (1), (2), (3)")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def url(server: embedded.EmbeddedServer) -> str:
    return server.url


@pytest.fixture
def loopback_service() -> Iterator[tuple[str, list[str]]]:
    """Another service on loopback; records every request it gets."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"secret\n")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/x", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


# (id, statement, expected code); {tmp} is a scratch directory, {service} another loopback service.
REFUSED = [
    ("file-read", "SELECT * FROM file('/etc/passwd', 'LineAsString')", 497),
    ("file-scalar", "SELECT file('/etc/passwd')", 497),
    ("environment", "SELECT * FROM file('/proc/self/environ', 'RawBLOB')", 497),
    ("file-write", "INSERT INTO FUNCTION file('{tmp}/written.txt', 'LineAsString') VALUES ('x')", 497),
    ("file-write-inline", "INSERT INTO FUNCTION file('{tmp}/written.txt', 'LineAsString') FORMAT LineAsString\nx", 497),
    ("url", "SELECT * FROM url('{service}', 'LineAsString')", 497),
    ("s3", "SELECT * FROM s3('http://127.0.0.1:9/b/k.csv', 'CSV')", 497),
    ("hdfs", "SELECT * FROM hdfs('hdfs://127.0.0.1:9/k.csv', 'CSV')", 497),
    ("executable", "SELECT * FROM executable('id', 'TSV', 'x String')", 497),
    ("remote", "SELECT * FROM remote('127.0.0.1:9', system.one)", 497),
    ("mysql", "SELECT * FROM mysql('127.0.0.1:9', 'd', 't', 'u', 'p')", 497),
    ("postgresql", "SELECT * FROM postgresql('127.0.0.1:9', 'd', 't', 'u', 'p')", 497),
    ("jdbc", "SELECT * FROM jdbc('jdbc:x', 't')", 497),
    ("odbc", "SELECT * FROM odbc('DSN=x', 't')", 497),
    ("sqlite", "SELECT * FROM sqlite('/etc/x.db', 't')", 497),
    ("python", "SELECT * FROM python(x)", 497),
    ("describe-function", "DESCRIBE TABLE file('/etc/passwd', 'LineAsString')", 497),
    ("engine-file", "CREATE TABLE batchobs.f (a String) ENGINE = File(LineAsString, '/etc/passwd')", 497),
    ("engine-url", "CREATE TABLE batchobs.u (a String) ENGINE = URL('{service}', LineAsString)", 497),
    ("engine-executable", "CREATE TABLE batchobs.e (a String) ENGINE = Executable('id', TSV)", 497),
    ("engine-database", "CREATE DATABASE outside ENGINE = Filesystem('/etc')", 497),
    ("create-as-function", "CREATE TABLE batchobs.g AS file('/etc/passwd', 'LineAsString')", 497),
    ("view-over-function", "CREATE VIEW batchobs.v AS SELECT * FROM url('{service}', 'LineAsString')", 497),
    ("disk", "CREATE TABLE batchobs.d (a UInt8) ENGINE = MergeTree ORDER BY a "
             "SETTINGS disk = disk(type = local, path = '{tmp}/disk/')", 497),
    ("into-outfile", "SELECT 'x' INTO OUTFILE '{tmp}/out.txt' FORMAT LineAsString", 497),
    ("from-infile", "INSERT INTO batchobs.sentinel FROM INFILE '/etc/passwd' FORMAT LineAsString", 62),
    ("attach-from-path", "ATTACH TABLE batchobs.a FROM '{tmp}' (a String) ENGINE = Log", 497),
    ("dictionary", "CREATE DICTIONARY batchobs.dict (a UInt64) PRIMARY KEY a "
                   "SOURCE(FILE(path '/etc/passwd' format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)", 497),
    ("backup", "BACKUP TABLE batchobs.sentinel TO File('{tmp}/b.zip')", 497),
    ("system-shutdown", "SYSTEM SHUTDOWN", 497),
    ("system-kill", "SYSTEM KILL", 497),
    ("system-other", "SYSTEM DROP MARK CACHE", 497),
    ("kill-query", "KILL QUERY WHERE 1", 497),
    ("drop-database", "DROP DATABASE batchobs", 497),
    ("detach-database", "DETACH DATABASE batchobs", 497),
    ("truncate-database", "TRUNCATE DATABASE batchobs", 497),
    ("rename-database", "RENAME DATABASE batchobs TO gone", 497),
    ("schema-file-setting", "SELECT 1 SETTINGS format_schema = '/etc/passwd:X'", 497),
    ("introspection", "SELECT 1 SETTINGS allow_introspection_functions = 1", 497),
]


class TestLeastPrivilege:
    @pytest.mark.parametrize(("sql", "code"), [pytest.param(s, c, id=i) for i, s, c in REFUSED])
    def test_refused(self, url: str, tmp_path: Path, loopback_service: tuple[str, list[str]],
                     sql: str, code: int) -> None:
        """The statement is refused with its code; nothing outside the data directory is touched."""
        service, hits = loopback_service
        status, headers, body = raw(url, "POST", "/", sql.format(tmp=tmp_path, service=service).encode())
        assert (str(code), True) == (headers.get("x-clickhouse-exception-code"), status >= 400), body[:300]
        assert [] == hits  # the other loopback service never heard from us
        assert [] == list(tmp_path.iterdir())  # nothing written, no disk made
        alive_and_kept(url)

    def test_dangerous_url_setting_is_refused(self, url: str) -> None:
        """A file-naming setting sent as a URL parameter is refused like one in SQL."""
        status, headers, _ = raw(url, "POST", "/?format_schema=%2Fetc%2Fpasswd%3AX", b"SELECT 1")
        assert (403, "497") == (status, headers.get("x-clickhouse-exception-code"))
        alive_and_kept(url)

    def test_what_batchobs_needs_is_allowed(self, url: str) -> None:
        """DDL, DML, EXCHANGE, CREATE ... AS, system tables and allowed table functions all run."""
        for sql in [
            "CREATE DATABASE IF NOT EXISTS marts",
            "CREATE TABLE marts.a ENGINE = MergeTree ORDER BY n AS SELECT number AS n FROM numbers(5)",
            "CREATE TABLE marts.b AS marts.a",
            "INSERT INTO marts.b SELECT * FROM marts.a",
            "EXCHANGE TABLES marts.a AND marts.b",
            "ALTER TABLE marts.a DELETE WHERE n = 0",
            "CREATE VIEW marts.v AS SELECT n FROM marts.a",
            "SELECT count() FROM system.tables WHERE database = 'marts'",
            "DESCRIBE TABLE marts.a",
            "SHOW CREATE TABLE marts.a",
            "DROP TABLE marts.v",
            "DROP DATABASE marts",
        ]:
            status, _, body = raw(url, "POST", "/", sql.encode())
            assert 200 == status, (sql, body[:300])


class TestPolicyParse:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
    def test_the_policy_parses_exactly_the_clients_text(self, url: str, text: str) -> None:
        """Any string literal (tabs, newlines, backslashes, NULs) passes the policy's parse unchanged."""
        literal = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        status, _, body = raw(url, "POST", "/", f"SELECT {literal} FORMAT RawBLOB".encode())
        assert (200, text) == (status, body.decode())


class TestBrowserSafe:
    def test_get_cannot_write(self, url: str, tmp_path: Path) -> None:
        """GET is read-only: an INSERT is refused with READONLY (164), INTO OUTFILE never appends."""
        target = tmp_path / "bashrc"
        target.write_text("untouched\n")
        for write in ("INSERT INTO batchobs.sentinel VALUES (9)", "DROP TABLE batchobs.sentinel",
                      "CREATE TABLE batchobs.sentinel2 (a UInt8) ENGINE = Memory"):
            assert "164" == raw(url, "GET", f"/?query={quote(write)}")[1].get("x-clickhouse-exception-code")
        append = quote(f"SELECT 'x' INTO OUTFILE '{target}' APPEND FORMAT LineAsString")
        assert "497" == raw(url, "GET", f"/?query={append}")[1].get("x-clickhouse-exception-code")
        assert "untouched\n" == target.read_text()
        alive_and_kept(url)

    @pytest.mark.parametrize("headers", [
        pytest.param({"Origin": "http://evil.example"}, id="foreign-origin"),
        pytest.param({"Host": "evil.example"}, id="dns-rebinding-host"),
        pytest.param({"Sec-Fetch-Site": "cross-site"}, id="cross-site-img"),
    ])
    def test_cross_site_requests_are_refused(self, url: str, headers: dict[str, str]) -> None:
        """A request from another site, or for another host name, is refused even with the password."""
        status, got, _ = raw(url, "GET", "/?query=SELECT%201", headers=headers)
        assert (403, "497") == (status, got.get("x-clickhouse-exception-code"))
        alive_and_kept(url)

    def test_loopback_aliases_and_same_origin_are_accepted(self, url: str) -> None:
        """localhost and 127.0.0.1 with our port, and our own origin, are this server."""
        port = port_of(url)
        for headers in ({"Host": f"localhost:{port}"}, {"Host": f"127.0.0.1:{port}"},
                        {"Origin": f"http://127.0.0.1:{port}"}):
            assert (200, b"1\n") == raw(url, "GET", "/?query=SELECT%201", headers=headers)[::2]


class TestAuthenticatedByDefault:
    def test_password_generated_private_and_never_shown(self, server: embedded.EmbeddedServer) -> None:
        """No password sent: 516; the generated one is 0600 and not in server.json, the log, argv or environ."""
        status, headers, _ = raw(server.url, "POST", "/", b"SELECT 1", auth=False)
        assert (403, "516") == (status, headers["x-clickhouse-exception-code"])
        path = server.data_dir / PASSWORD_FILE
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        secret = path.read_text().strip()
        assert secret == server.password and len(secret) >= 32
        assert secret not in (server.data_dir / READY_FILE).read_text()
        assert 0o600 == stat.S_IMODE((server.data_dir / READY_FILE).stat().st_mode)
        assert secret not in (server.data_dir / "server.log").read_text()
        for name in ("cmdline", "environ"):
            assert secret.encode() not in Path(f"/proc/{server.pid}/{name}").read_bytes()

    def test_dbt_gets_its_password_but_not_the_server_override(self) -> None:
        """dbt's environment carries the connection password, never BATCHOBS_SERVE_PASSWORD."""
        settings = ClickHouseSettings("127.0.0.1", 1, "batchobs", "default", "pw-for-dbt")
        env = dbt_env(settings, {"BATCHOBS_SERVE_PASSWORD": "server-only", "BATCHOBS_HOME": "/tmp/x"})
        assert "pw-for-dbt" == env["BATCHOBS_DBT_PASSWORD"]
        assert "server-only" not in env.values()

    def test_non_loopback_without_password_is_refused(self, tmp_path: Path) -> None:
        """--host 0.0.0.0 with an empty password stops at once with a one-line reason."""
        proc = subprocess.run(
            [sys.executable, "-m", "warehouse", "serve", "--data-dir", str(tmp_path / "wh"), "--host", "0.0.0.0",
             "--port", "0"],
            env=clean_env(BATCHOBS_SERVE_PASSWORD=""), capture_output=True, text=True, timeout=60,
        )
        assert 3 == proc.returncode
        assert 1 == len(proc.stderr.strip().splitlines())
        assert "without a password" in proc.stderr

    def test_stale_server_file_never_leads_to_another_server(self, tmp_path: Path) -> None:
        """After SIGKILL, a server.json pointing at another data directory's server is not trusted."""
        home = tmp_path / "home"
        mine = embedded.start(home / "warehouse", env=clean_env())
        other = embedded.start(tmp_path / "other", env=clean_env())
        try:
            assert mine.process is not None
            mine.process.kill()
            mine.process.wait(30)
            ready = home / "warehouse" / READY_FILE
            stale = json.loads((tmp_path / "other" / READY_FILE).read_text()) | {
                "token": "from-the-killed-server", "pid": mine.pid}
            ready.write_text(json.dumps(stale))  # the port now answers, but for another directory
            assert embedded.find_running(home / "warehouse") is None
            settings = resolve(clean_env(BATCHOBS_HOME=str(home)))
            assert port_of(other.url) != settings.port
            assert 1 == settings.with_database("default").client().command("SELECT 1")
        finally:
            again = embedded.find_running(home / "warehouse")
            if again is not None:
                again.stop()
            other.stop()


class TestShutdownOnlyByOwner:
    def test_sql_cannot_stop_it_and_it_cannot_signal_us(self, tmp_path: Path) -> None:
        """SYSTEM SHUTDOWN is refused; the server lives in its own process group, away from ours."""
        server = started(embedded.start(tmp_path / "wh", env=clean_env()))
        try:
            assert os.getpgid(server.pid) != os.getpgrp()
            for sql in (b"SYSTEM SHUTDOWN", b"SYSTEM KILL"):
                assert "497" == raw(server.url, "POST", "/", sql)[1].get("x-clickhouse-exception-code")
            assert server.process is not None and server.process.poll() is None
        finally:
            assert 0 == server.stop()

    def test_warehouse_stop_command(self, tmp_path: Path) -> None:
        """`batchobs warehouse stop` ends the server of its data directory; with none running it says so."""
        data = tmp_path / "wh"
        server = embedded.start(data, env=clean_env(), detach=True)
        cmd = [sys.executable, "-m", "warehouse", "stop", "--data-dir", str(data)]
        first = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=60)
        assert 0 == first.returncode, first.stderr
        assert server.process is not None
        assert 0 == server.process.wait(30)
        assert not (data / READY_FILE).exists()
        second = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=60)
        assert (1, True) == (second.returncode, "no embedded server" in second.stderr)

    def test_sigterm_from_the_owner_still_works(self, tmp_path: Path) -> None:
        """The starter's SIGTERM ends it cleanly (exit 0)."""
        server = embedded.start(tmp_path / "wh", env=clean_env())
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert 0 == server.process.wait(30)


