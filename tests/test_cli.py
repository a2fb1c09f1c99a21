"""The command line speaks one language: each failure is one line on stderr and an exit code."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from warehouse.connection import ClickHouseSettings

from .conftest import product_settings

ROOT = Path(__file__).resolve().parents[1]
BATCHOBS = str(Path(sys.executable).with_name("batchobs"))
DEADLINE_S = 90  # generous: the CLI must be done long before this, even on a loaded machine


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, BATCHOBS_HOME=str(home), **extra)


def batchobs(home: Path, *args: str, env: dict[str, str] | None = None,
             **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run ``batchobs ARGS`` to the end (within the deadline) and return what it said."""
    popen.setdefault("capture_output", True)
    return subprocess.run([BATCHOBS, *args], env=env or cli_env(home), cwd=home, text=True,
                          timeout=DEADLINE_S, check=False, **popen)


def one_line(stderr: str) -> str:
    """The single line a failure prints; fails when there is more (a traceback) or none."""
    lines = stderr.splitlines()
    assert 1 == len(lines), stderr
    assert lines[0].startswith("batchobs: "), stderr
    return lines[0]


def url_of(settings: ClickHouseSettings) -> str:
    return f"http://{settings.username}:{settings.password}@{settings.host}:{settings.port}/{settings.database}"


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # the kernel completes the handshakes; nobody ever reads or writes
        yield int(sock.getsockname()[1])


class TestWarehouseAway:
    def test_unreachable_warehouse_is_one_line(self, tmp_path: Path, closed_port: int) -> None:
        """`audit` against a warehouse that refuses connections: one line naming it and the fix, exit 1."""
        done = batchobs(tmp_path, "audit", "runs", "--dag-id", "d",
                        env=cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=f"http://127.0.0.1:{closed_port}/"))
        line = one_line(done.stderr)
        assert 1 == done.returncode
        assert f"127.0.0.1:{closed_port}" in line and "Connection refused" in line
        assert "BATCHOBS_CLICKHOUSE_URL" in line

    def test_silent_warehouse_times_out(self, tmp_path: Path, silent_server: int) -> None:
        """A server that accepts but never answers: `audit` gives up after the configured query
        timeout (not the driver's five minutes) with one line, exit 1."""
        env = cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=f"http://127.0.0.1:{silent_server}/",
                      BATCHOBS_CLICKHOUSE_QUERY_TIMEOUT_S="1")
        done = batchobs(tmp_path, "audit", "runs", "--dag-id", "d", env=env)
        line = one_line(done.stderr)
        assert 1 == done.returncode
        assert "no answer in time" in line and "BATCHOBS_CLICKHOUSE_QUERY_TIMEOUT_S" in line

    def test_timeouts_are_bounded_by_default(self) -> None:
        """Without settings, connecting and waiting for an answer are both bounded."""
        settings = ClickHouseSettings.from_url("http://127.0.0.1:8123/")
        assert 0 < settings.connect_timeout_s <= 30
        assert 0 < settings.query_timeout_s <= 300

    @pytest.mark.parametrize("value", ["abc", "0", "-1", "inf"])
    def test_bad_timeout_setting_is_named(self, tmp_path: Path, value: str) -> None:
        """A timeout that is not a positive number of seconds is refused in one line naming the variable."""
        env = cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL="http://127.0.0.1:1/",
                      BATCHOBS_CLICKHOUSE_CONNECT_TIMEOUT_S=value)
        done = batchobs(tmp_path, "audit", "runs", "--dag-id", "d", env=env)
        assert 1 == done.returncode
        assert "BATCHOBS_CLICKHOUSE_CONNECT_TIMEOUT_S" in one_line(done.stderr)

    def test_unknown_database_names_the_fix(self, tmp_path: Path, clickhouse: ClickHouseSettings) -> None:
        """A server error (an unmigrated database) is one line with ClickHouse's reason and the fix."""
        env = cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=url_of(clickhouse.with_database("never_migrated")))
        done = batchobs(tmp_path, "audit", "runs", "--dag-id", "d", env=env)
        line = one_line(done.stderr)
        assert 1 == done.returncode
        assert "batchobs warehouse migrate" in line
        assert clickhouse.password not in line or not clickhouse.password


class TestLocalFailures:
    def test_corrupt_checkpoint_names_the_file(self, tmp_path: Path) -> None:
        """A checkpoint that is not JSON: one line naming the file and what to do with it, exit 1."""
        state = tmp_path / "state"
        state.mkdir()
        (state / "checkpoint.json").write_text('{"offsets": {"a.jsonl": 12')
        done = batchobs(tmp_path, "ingest", "--once", "--state-dir", str(state), "--spool-dir", str(tmp_path),
                        env=cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL="http://127.0.0.1:1/"))
        line = one_line(done.stderr)
        assert 1 == done.returncode
        assert str(state / "checkpoint.json") in line and "move it aside" in line

    @pytest.mark.parametrize("debug", [["--debug"], []])
    def test_debug_adds_the_traceback(self, tmp_path: Path, debug: list[str]) -> None:
        """`--debug` or BATCHOBS_DEBUG=1 prints the traceback before the same one line and exit code."""
        (tmp_path / "checkpoint.json").write_text("[")
        env = cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL="http://127.0.0.1:1/",
                      **({} if debug else {"BATCHOBS_DEBUG": "1"}))
        done = batchobs(tmp_path, *debug, "ingest", "--once", "--state-dir", str(tmp_path),
                        "--spool-dir", str(tmp_path), env=env)
        assert 1 == done.returncode
        assert "Traceback (most recent call last)" in done.stderr
        assert done.stderr.splitlines()[-1].startswith("batchobs: checkpoint ")

    @pytest.mark.parametrize("argv", [
        ["ingest", "--batch-rows", "0"],
        ["ingest", "--batch-rows", "ten"],
        ["ingest", "--batch-bytes", "100"],
        ["ingest", "--max-line-bytes", "-5"],
        ["ingest", "--max-latency", "-1"],
        ["ingest", "--max-latency", "nan"],
        ["ingest", "--inserts-in-flight", "0"],
        ["ingest", "--metrics-port", "99999"],
        ["warehouse", "serve", "--data-dir", "unused", "--port", "99999"],
        ["warehouse", "serve", "--data-dir", "unused", "--port", "-1"],
        ["warehouse", "serve", "--data-dir", "unused", "--max-concurrent-queries", "0"],
    ])
    def test_out_of_range_values_are_usage_errors(self, argv: list[str], tmp_path: Path) -> None:
        """A value out of its range is refused by the parser, naming the option and the range (exit 2)."""
        done = batchobs(tmp_path, *argv, "--once" if argv[0] == "ingest" else "--help",
                        env=cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL="http://127.0.0.1:1/"))
        assert 2 == done.returncode, done.stderr
        option = next(a for a in argv if a.startswith("--") and a != "--data-dir")
        assert f"argument {option}: must be" in done.stderr.splitlines()[-1]

    def test_metrics_port_in_use(self, tmp_path: Path, database: ClickHouseSettings) -> None:
        """`ingest --metrics-port P` with P taken: one line naming the port and the fix, exit 1."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            done = batchobs(tmp_path, "ingest", "--once", "--metrics-port", str(port),
                            "--spool-dir", str(tmp_path / "spool"), "--state-dir", str(tmp_path / "state"),
                            env=cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=url_of(database)))
        line = one_line(done.stderr)
        assert 1 == done.returncode
        assert f"127.0.0.1:{port}" in line and "--metrics-port" in line


class TestOutput:
    def test_closed_stdout_ends_quietly(self, tmp_path: Path, database: ClickHouseSettings) -> None:
        """`audit ... | head` that stopped reading: no traceback, exit 141 like any tool cut off by a pipe."""
        read_end, write_end = os.pipe()
        os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
        try:
            done = batchobs(tmp_path, "audit", "runs", "--dag-id", "d", capture_output=False,
                            stdout=write_end, stderr=subprocess.PIPE,
                            env=cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=url_of(database)))
        finally:
            os.close(write_end)
        assert "" == done.stderr
        assert 128 + signal.SIGPIPE == done.returncode

    @pytest.mark.parametrize("fmt", ["csv", "json", "table"])
    def test_empty_answer_keeps_its_header(self, tmp_path: Path, database: ClickHouseSettings, fmt: str) -> None:
        """An audit with no rows still prints its columns (CSV: the header line alone), exit 0."""
        done = batchobs(tmp_path, "audit", "runs", "--dag-id", "nothing", "--format", fmt,
                        env=cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=url_of(database)))
        assert 0 == done.returncode, done.stderr
        if fmt == "csv":
            lines = done.stdout.splitlines()
            assert 1 == len(lines)
            assert ["run_id", "run_type", "state"] == lines[0].split(",")[:3]
        elif fmt == "json":
            assert "[]" == done.stdout.strip()
        else:
            assert "run_id" in done.stdout and "no rows" in done.stdout


class TestSignals:
    def start_ingest(self, tmp_path: Path, port: int, *args: str) -> subprocess.Popen[str]:
        """`batchobs ingest` waiting for a warehouse that refuses connections; returns once it says so."""
        env = cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=f"http://127.0.0.1:{port}/")
        proc = subprocess.Popen([BATCHOBS, "ingest", *args, "--spool-dir", str(tmp_path / "spool"),
                                 "--state-dir", str(tmp_path / "state")],
                                env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        assert proc.stderr.readline(), "the ingester said nothing before exiting"  # past its signal set-up
        return proc

    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
    def test_signal_during_once_is_not_success(self, tmp_path: Path, closed_port: int, sig: int) -> None:
        """`ingest --once` stopped by SIGINT / SIGTERM before the drain ends exits 128 + the signal
        (130 / 143), not 0 like a complete drain."""
        proc = self.start_ingest(tmp_path, closed_port, "--once")
        proc.send_signal(sig)
        assert 128 + sig == proc.wait(DEADLINE_S)

    def test_sigterm_stops_the_service_cleanly(self, tmp_path: Path, closed_port: int) -> None:
        """The service (no --once) stopped by its supervisor's SIGTERM exits 0."""
        proc = self.start_ingest(tmp_path, closed_port, "--metrics-port", "0")
        proc.send_signal(signal.SIGTERM)
        assert 0 == proc.wait(DEADLINE_S)


class TestCleanEnvironment:
    def test_no_batchobs_settings_reach_the_tests(self) -> None:
        """The caller's BATCHOBS_* settings are gone; BATCHOBS_HOME points into pytest's temporary tree."""
        assert ["BATCHOBS_HOME"] == product_settings(os.environ)
        assert "pytest-" in os.environ["BATCHOBS_HOME"]

    @pytest.mark.slow
    def test_suite_ignores_the_callers_settings(self, tmp_path: Path) -> None:
        """Tests that start the embedded server pass with an operator's BATCHOBS_* settings in the shell."""
        env = dict(os.environ, BATCHOBS_SERVE_PASSWORD="operator-secret",
                   BATCHOBS_CLICKHOUSE_URL="http://127.0.0.1:1/", BATCHOBS_HOME="/nonexistent",
                   BATCHOBS_DBT_SCHEMA="elsewhere", BATCHOBS_RETENTION_DAYS="0")
        done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
                               "tests/test_warehouse.py::TestSchema::test_migrate_is_idempotent",
                               "tests/test_audit.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        assert 0 == done.returncode, done.stdout[-3000:]
