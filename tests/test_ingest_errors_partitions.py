"""The engine's partition limit: a batch spanning 120 months lands (cut into inserts the
engine takes), and dbt builds a monthly DAG backfilled over 120 months, then builds again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ingest.config import IngestConfig
from ingest.service import Ingester
from listener.contract import Event, encode
from listener.spool import Spool
from listener.testing import history
from warehouse.connection import ClickHouseSettings

from .runs import dbt

BATCHOBS = str(Path(sys.executable).with_name("batchobs"))
MONTHS = 120  # more than the engine's default max_partitions_per_insert_block (100)


def monthly_runs(months: int = MONTHS) -> list[Event]:
    """One run a month of a five-task DAG, from November 2026: each run's events (and its
    logical date) in a month of their own, like a monthly DAG backfilled over ``months``."""
    events: list[Event] = []
    for m in range(months):
        year, month = divmod(2026 * 12 + 10 + m, 12)
        events.extend(history(1, dag_id="monthly", start=datetime(year, month + 1, 1, tzinfo=timezone.utc)))
    return events


@pytest.fixture
def spool_of_months(tmp_path: Path) -> tuple[Path, int]:
    writer = Spool(tmp_path / "spool", socket.gethostname())
    events = monthly_runs()
    for event in events:
        writer.append(encode(event))
    writer.close()
    return tmp_path / "spool", len(events)


@pytest.fixture
def marts(admin: Any) -> Iterator[str]:
    name = f"m_{uuid.uuid4().hex[:10]}"
    yield name
    admin.command(f"DROP DATABASE IF EXISTS {name}")


def test_a_batch_over_120_months_lands_and_dbt_builds_it(database: ClickHouseSettings, marts: str,
                                                         spool_of_months: tuple[Path, int],
                                                         tmp_path: Path) -> None:
    """`batchobs ingest --once` lands one batch of 120 months whole (no dead letter) and
    exits 0; `dbt build` of the backfill succeeds, and so does the next build."""
    spool, total = spool_of_months
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOBS_")}
    auth = database.username + (f":{database.password}" if database.password else "")
    env.update(BATCHOBS_HOME=str(tmp_path),
               BATCHOBS_CLICKHOUSE_URL=f"http://{auth}@{database.host}:{database.port}/{database.database}")
    done = subprocess.run([BATCHOBS, "ingest", "--once", "--spool-dir", str(spool), "--batch-rows", "100000"],
                          env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)  # hang guard
    assert 0 == done.returncode, done.stderr[-3000:]
    client = database.client()
    assert (total, total, 0) == (
        client.command("SELECT count() FROM events"), client.command("SELECT uniqExact(event_id) FROM events"),
        client.command("SELECT count() FROM dead_letters"))
    assert MONTHS == client.command("SELECT uniqExact(toYYYYMM(emitted_at)) FROM events")

    dbt(database, marts, tmp_path, "build")  # asserts dbt exits 0
    assert (MONTHS * 7, MONTHS) == (client.command(f"SELECT count() FROM {marts}.fct_task_runs"),
                                    client.command(f"SELECT count() FROM {marts}.fct_dag_runs"))
    assert MONTHS == client.command(f"SELECT uniqExact(toYYYYMM(run_date)) FROM {marts}.fct_task_runs")
    # every later build too: the incremental path recomputes all 120 months (no lookback)
    client.command("ALTER TABLE events UPDATE ingested_at = now64(3) WHERE 1 SETTINGS mutations_sync = 1")
    dbt(database, marts, tmp_path, "build", dbt_vars="{lookback_seconds: 0}")
    assert MONTHS * 7 == client.command(f"SELECT count() FROM {marts}.fct_task_runs")


def test_events_inserted_counts_rows_landed(database: ClickHouseSettings, spool_of_months: tuple[Path, int],
                                            tmp_path: Path) -> None:
    """After a batch cut for the partition limit, the events_inserted metric equals the rows
    in the table."""
    spool, total = spool_of_months
    ingester = Ingester(IngestConfig(spool, tmp_path / "state", max_rows=100_000),
                        database.client(autogenerate_session_id=False))
    runner = threading.Thread(target=ingester.run, kwargs={"once": True}, daemon=True)
    runner.start()
    runner.join(120)  # hang guard: the original retried the batch forever
    ingester.stop.set()  # (ends the retrying if it did not finish)
    assert not runner.is_alive()
    landed = database.client().command("SELECT count() FROM events")
    assert total == landed
    assert landed == ingester.metrics.events_inserted._value.get()
    assert 0 == ingester.metrics.dead_letters._value.get()
