"""Warehouse errors by kind: a refusal names its fix (and ends `--once` with 1), an outage
is retried with its cause in the log and a metric, a running service keeps asking."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from ingest.config import IngestConfig
from ingest.connect import connect_when_ready
from ingest.errors import IngestError, WarehouseRejected
from ingest.metrics import IngestMetrics
from ingest.retry import Retry, Target
from ingest.service import Ingester
from listener.contract import encode
from listener.spool import Spool
from listener.testing import history
from warehouse.connection import ClickHouseSettings
from warehouse.migrate import apply, migrations

from . import servers

BATCHOBS = str(Path(sys.executable).with_name("batchobs"))
EVENTS = [encode(e) for e in history(2)]


class Recorder:
    """A structlog-shaped logger that keeps what it is told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.lines.append((level, event, kw))

    def said(self, text: str) -> int:
        return sum(text in event for _, event, _ in self.lines)


def write_spool(spool: Path, lines: list[bytes]) -> None:
    writer = Spool(spool, socket.gethostname())
    for line in lines:
        writer.append(line)
    writer.close()


def url_of(settings: ClickHouseSettings, password: str | None = None, database: str | None = None) -> str:
    secret = settings.password if password is None else password
    auth = settings.username + (f":{secret}" if secret else "")
    return f"http://{auth}@{settings.host}:{settings.port}/{database or settings.database}"


def ingest_once(url: str, home: Path, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    """`batchobs ingest --once` as a process; the deadline only guards against a hang."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOBS_")}
    env.update(BATCHOBS_HOME=str(home), BATCHOBS_CLICKHOUSE_URL=url)
    return subprocess.run([BATCHOBS, "ingest", "--once"], env=env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=home)


@pytest.fixture
def spooled(tmp_path: Path) -> Path:
    write_spool(tmp_path / "spool", EVENTS)
    return tmp_path


@pytest.fixture
def bare_db(clickhouse: ClickHouseSettings, admin: Any) -> Iterator[ClickHouseSettings]:
    """A database that exists but was never migrated."""
    name = f"bare_{uuid.uuid4().hex[:10]}"
    admin.command(f"CREATE DATABASE {name}")
    yield clickhouse.with_database(name)
    admin.command(f"DROP DATABASE IF EXISTS {name}")


class TestRefusalsEndOnce:
    """`batchobs ingest --once` against a warehouse that refuses: exit 1 with one line naming the fix."""

    def test_wrong_password(self, database: ClickHouseSettings, spooled: Path) -> None:
        """A wrong password: the line names the user and BATCHOBS_CLICKHOUSE_URL, never the password."""
        done = ingest_once(url_of(database, password="not-the-password-42"), spooled)
        assert 1 == done.returncode, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("batchobs: ClickHouse at http://")
        assert f"refused the password for user {database.username!r}" in last
        assert "BATCHOBS_CLICKHOUSE_URL" in last
        assert "not-the-password-42" not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr

    def test_unknown_database(self, clickhouse: ClickHouseSettings, spooled: Path) -> None:
        """A database that does not exist: run `batchobs warehouse migrate`."""
        name = f"nowhere_{uuid.uuid4().hex[:8]}"
        done = ingest_once(url_of(clickhouse, database=name), spooled)
        assert 1 == done.returncode, done.stderr[-2000:]
        assert (f"has no database {name!r}: run `batchobs warehouse migrate`"
                in done.stderr.strip().splitlines()[-1])

    def test_unmigrated_database(self, bare_db: ClickHouseSettings, spooled: Path) -> None:
        """A database without the migrations: run `batchobs warehouse migrate`."""
        done = ingest_once(url_of(bare_db), spooled)
        assert 1 == done.returncode, done.stderr[-2000:]
        assert (f"database {bare_db.database!r} at http://" in done.stderr
                and "has no schema_migrations table: run `batchobs warehouse migrate`"
                in done.stderr.strip().splitlines()[-1])

    def test_dropped_events_table(self, database: ClickHouseSettings, admin: Any, spooled: Path) -> None:
        """A migrated database whose events table was dropped: run `batchobs warehouse migrate`."""
        admin.command(f"DROP TABLE {database.database}.events")
        done = ingest_once(url_of(database), spooled)
        assert 1 == done.returncode, done.stderr[-2000:]
        assert "has no events table: run `batchobs warehouse migrate`" in done.stderr.strip().splitlines()[-1]

    def test_an_older_migration(self, database: ClickHouseSettings, admin: Any, spooled: Path) -> None:
        """A database migrated by an older release (a migration missing): migrate."""
        latest = migrations()[-1].version
        admin.command(f"DELETE FROM {database.database}.schema_migrations WHERE version = {latest}")
        done = ingest_once(url_of(database), spooled)
        assert 1 == done.returncode, done.stderr[-2000:]
        assert (f"is migrated to version {latest - 1}, this ingester needs {latest}: run `batchobs warehouse migrate`"
                in done.stderr)


class TestRefusalWhileInserting:
    """A refusal that comes at insert time (the table dropped after the ingester connected)."""

    def test_once_raises_the_refusal(self, database: ClickHouseSettings, admin: Any, tmp_path: Path) -> None:
        """run(once=True) raises WarehouseRejected naming the table and the fix; nothing is committed."""
        write_spool(tmp_path / "spool", EVENTS)
        ingester = Ingester(IngestConfig(tmp_path / "spool", tmp_path / "state"),
                            database.client(autogenerate_session_id=False), log=Recorder())
        admin.command(f"DROP TABLE {database.database}.events")
        outcome: list[BaseException] = []
        runner = threading.Thread(target=lambda: _catch(outcome, ingester.run, once=True), daemon=True)
        runner.start()
        runner.join(60)  # hang guard: the original retries this forever
        ingester.stop.set()  # (ends the retrying if it did not give up)
        assert not runner.is_alive(), "ingest --once must give up on a refusal"
        assert 1 == len(outcome) and isinstance(outcome[0], WarehouseRejected)
        assert "has no events table: run `batchobs warehouse migrate`" in str(outcome[0])
        assert all(0 == v for v in ingester.checkpoint.offsets.values())

    def test_service_keeps_asking_and_recovers(self, database: ClickHouseSettings, admin: Any,
                                               clickhouse: ClickHouseSettings, tmp_path: Path) -> None:
        """A running service logs the refusal with its fix each time it asks again (a metric
        counts them) and lands everything once the table is back."""
        write_spool(tmp_path / "spool", EVENTS)
        log = Recorder()
        ingester = Ingester(IngestConfig(tmp_path / "spool", tmp_path / "state", rejected_retry_s=0.2),
                            database.client(autogenerate_session_id=False), log=log)
        admin.command(f"DROP TABLE {database.database}.events")
        runner = threading.Thread(target=ingester.run, daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 60
            while log.said("has no events table: run `batchobs warehouse migrate`") < 3 \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert log.said("has no events table: run `batchobs warehouse migrate`") >= 3
            assert runner.is_alive()
            assert ingester.metrics.retries.labels(kind="rejected")._value.get() >= 3
            admin.command(f"TRUNCATE TABLE {database.database}.schema_migrations")  # every step again
            apply(clickhouse.client(), database.database, retention_days=400)  # the fix the line names
            client = database.client()
            while client.command("SELECT count() FROM events") < len(EVENTS) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(EVENTS) == client.command("SELECT count() FROM events")
        finally:
            ingester.stop.set()
            runner.join(30)
        assert not runner.is_alive()


class TestOutages:
    def test_unreachable_warehouse_is_retried_with_its_cause(self) -> None:
        """Connection refused: retried with backoff, the cause in the log, the metric by kind."""
        settings = ClickHouseSettings.from_url(servers.refusing_url() + "/batchobs")
        stop, log, metrics = threading.Event(), Recorder(), IngestMetrics()
        outcome: list[BaseException] = []
        runner = threading.Thread(target=lambda: _catch(outcome, connect_when_ready, settings, stop, log,
                                                        once=True, metrics=metrics), daemon=True)
        runner.start()
        deadline = time.monotonic() + 60
        while metrics.retries.labels(kind="unavailable")._value.get() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        runner.join(30)
        assert metrics.retries.labels(kind="unavailable")._value.get() >= 3  # --once waits out an outage
        assert 1 == len(outcome) and isinstance(outcome[0], InterruptedError)
        details = [kw.get("detail", "") for _, event, kw in log.lines if event == "warehouse not reachable yet"]
        assert details and all("Connection refused" in d for d in details)

    @pytest.mark.parametrize("first_error", [ConnectionRefusedError("down"), None])
    def test_a_call_that_gets_through_wakes_the_waits_for_an_outage(self, first_error: OSError | None) -> None:
        """An insert waiting out a 30 s backoff tries again as soon as another call gets through
        (the drain after an outage starts with the first answer); a wait for a refusal does not."""
        told = threading.Event()
        retry = Retry(Target("http://node/", "u", "db"), threading.Event(), lambda error, wait: told.set(),
                      rejected_every_s=30)
        retry._backoff = lambda state: 30.0  # type: ignore[method-assign]
        failures = [first_error or WarehouseRejected("refused: a person must act")]
        done: list[str] = []

        def waiting() -> None:
            def action() -> str:
                if failures:
                    raise failures.pop()
                return "landed"
            done.append(retry(action))

        worker = threading.Thread(target=waiting, daemon=True)
        worker.start()
        assert told.wait(30)  # the worker sleeps out its wait
        assert "ok" == retry(lambda: "ok")  # another call gets through
        worker.join(5)  # (the wait itself is 30 s)
        assert (["landed"] if first_error else []) == done

    @pytest.mark.parametrize("answered", [False, True])
    def test_a_warehouse_that_did_not_answer_is_probed_until_it_does(self, answered: bool) -> None:
        """Waiting out a 30 s backoff after no answer at all, the insert asks the warehouse's
        ping every probe interval and goes as soon as it answers; after a server's own error
        (a code: it answered, maybe overloaded) it is not probed and keeps its backoff."""
        told, up = threading.Event(), threading.Event()
        pings: list[bool] = []

        def ping() -> bool:
            pings.append(up.is_set())
            return up.is_set()

        retry = Retry(Target("http://node/", "u", "db"), threading.Event(), lambda error, wait: told.set(),
                      probe=ping, probe_every_s=0.1)
        retry._backoff = lambda state: 30.0  # type: ignore[method-assign]
        failure = (OperationalError("Code: 241. DB::Exception: Memory limit exceeded") if answered
                   else OperationalError("HTTPConnectionPool: Connection refused"))
        failures, done = [failure], []

        def action() -> str:
            if failures:
                raise failures.pop()
            return "landed"

        worker = threading.Thread(target=lambda: done.append(retry(action)), daemon=True)
        worker.start()
        assert told.wait(30)
        up.set()
        worker.join(5)  # (the backoff itself is 30 s)
        assert (([], []) if answered else (["landed"], [True])) == (done, pings[-1:])

    def test_a_fault_of_the_code_is_raised_at_once_not_retried_as_an_outage(self) -> None:
        """An exception no client or network raises (here a TypeError) is a bug: raised as it
        is on the first attempt, never logged as the warehouse being unavailable."""
        told: list[IngestError] = []
        attempts: list[int] = []
        retry = Retry(Target("http://node/", "u", "db"), threading.Event(), lambda error, wait: told.append(error))

        def broken() -> None:
            attempts.append(1)
            raise TypeError("a bug")

        with pytest.raises(TypeError, match="a bug"):
            retry(broken)
        assert ([1], []) == (attempts, told)

    def test_service_refused_keeps_running_and_stops_on_sigterm(self, database: ClickHouseSettings,
                                                                spooled: Path) -> None:
        """`batchobs ingest` (a service) with a wrong password stays up saying why; SIGTERM ends it with 0."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOBS_")}
        env.update(BATCHOBS_HOME=str(spooled), BATCHOBS_CLICKHOUSE_URL=url_of(database, password="wrong-pw-7"))
        log_path = spooled / "ingest.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([BATCHOBS, "ingest", "--metrics-port", "0"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=spooled)
        try:
            deadline = time.monotonic() + 60
            while "refused the password" not in log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "refused the password for user" in log_path.read_text()
            assert proc.poll() is None, "a service keeps asking"
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        assert 0 == code
        assert "wrong-pw-7" not in log_path.read_text()


def _catch(outcome: list[BaseException], fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        outcome.append(exc)
