"""`batchobs ingest` as a process: SIGKILL at random moments, a warehouse outage, SIGTERM, /metrics."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from warehouse import embedded
from warehouse.connection import ClickHouseSettings
from warehouse.migrate import apply

from . import servers

ROOT = Path(__file__).resolve().parents[1]
BATCHOBS = str(Path(sys.executable).with_name("batchobs"))
pytestmark = pytest.mark.slow


def start_writer(spool: Path, count: int, rate: float = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "spool_writer.py"), str(spool), str(count),
                             "--rate", str(rate)], cwd=ROOT)


def start_ingester(db: ClickHouseSettings, home: Path, *args: str) -> subprocess.Popen[bytes]:
    url = f"http://{quote(db.username)}:{quote(db.password)}@{db.host}:{db.port}/{db.database}"
    env = dict(os.environ, BATCHOBS_HOME=str(home), BATCHOBS_CLICKHOUSE_URL=url)
    log = open(home / "ingest.log", "ab")  # noqa: SIM115 - lives with the process
    return subprocess.Popen([BATCHOBS, "ingest", *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)


def counts(db: ClickHouseSettings) -> tuple[int, int, int, int]:
    client = db.client()
    plain = client.query("SELECT count(), uniqExact(event_id) FROM events").result_rows[0]
    final = client.query("SELECT count() FROM events FINAL").result_rows[0][0]
    dead = client.query("SELECT count() FROM dead_letters").result_rows[0][0]
    return int(plain[0]), int(plain[1]), int(final), int(dead)


def rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return 0.0


@pytest.fixture
def fresh_db(clickhouse: ClickHouseSettings, admin: Any) -> Iterator[ClickHouseSettings]:
    name = f"proc_{uuid.uuid4().hex[:10]}"
    apply(admin, name, retention_days=400)
    yield clickhouse.with_database(name)
    admin.command(f"DROP DATABASE IF EXISTS {name}")


def test_sigkill_at_random_moments_loses_and_doubles_nothing(fresh_db: ClickHouseSettings, tmp_path: Path) -> None:
    """SIGKILL 20+ times while 100k events stream in: finally rows = distinct ids = events written."""
    total = 100_000
    writer = start_writer(tmp_path / "spool", total, rate=6000)
    rng = random.Random(20261122)
    kills = 0
    mid_stream = 0
    try:
        while kills < 20 or writer.poll() is None:
            ingester = start_ingester(fresh_db, tmp_path, "--batch-rows", "700", "--metrics-port", "0")
            time.sleep(rng.uniform(0.4, 1.4))
            before = counts(fresh_db)[0]
            ingester.send_signal(signal.SIGKILL)
            ingester.wait(30)
            kills += 1
            mid_stream += 0 < before < total
    finally:
        writer.wait(120)
    drain = start_ingester(fresh_db, tmp_path, "--once")
    assert 0 == drain.wait(300)
    assert kills >= 20 and mid_stream >= 10, (kills, mid_stream)
    assert (total, total, total, 0) == counts(fresh_db)
    assert [] == list((tmp_path / "spool").glob("*.jsonl"))  # all finished and retired


def test_warehouse_outage_delays_and_loses_nothing(tmp_path: Path) -> None:
    """The warehouse is down 10+ s mid-stream: the ingester waits, memory stays flat, all lands."""
    port = servers.free_port()
    data = tmp_path / "warehouse"
    server = embedded.start(data, port=port)
    base = server.settings("default")
    apply(base.client(), "outage", retention_days=400)
    db = base.with_database("outage")
    total = 30_000
    writer = start_writer(tmp_path / "spool", total, rate=1500)
    ingester = start_ingester(db, tmp_path, "--metrics-port", "0")
    try:
        time.sleep(4)
        baseline = rss_mb(ingester.pid)
        server.stop()
        peak = baseline
        outage_until = time.monotonic() + 10
        while time.monotonic() < outage_until:
            time.sleep(0.5)
            peak = max(peak, rss_mb(ingester.pid))
        assert ingester.poll() is None, "the ingester must wait, not exit"
        server = embedded.start(data, port=port)
        writer.wait(120)
        deadline = time.monotonic() + 120  # hang guard
        while counts(db)[1] < total and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        ingester.send_signal(signal.SIGTERM)
        ingester.wait(60)
        plain, distinct, final, dead = counts(db)
        server.stop()
    assert (total, total, total, 0) == (plain, distinct, final, dead)
    assert 0 == ingester.returncode
    # a 10 s backlog at 1.5k events/s is ~11 MB of spool: none of it may pile up in memory
    assert peak - baseline < 48, f"RSS grew from {baseline:.0f} to {peak:.0f} MB during the outage"
    log = (tmp_path / "ingest.log").read_text()
    assert "warehouse unavailable, retrying" in log


def test_sigterm_checkpoints_and_exits_and_metrics_are_served(fresh_db: ClickHouseSettings, tmp_path: Path) -> None:
    """/metrics reports progress; SIGTERM finishes the batch, leaves nothing pending, exits 0."""
    import json
    import urllib.request

    writer = start_writer(tmp_path / "spool", 5000)
    writer.wait(60)
    port = servers.free_port()
    ingester = start_ingester(fresh_db, tmp_path, "--metrics-port", str(port))
    try:
        servers.wait_http(f"http://127.0.0.1:{port}/metrics", timeout_s=30)
        deadline = time.monotonic() + 60
        while counts(fresh_db)[1] < 5000 and time.monotonic() < deadline:
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        ingester.send_signal(signal.SIGTERM)
        code = ingester.wait(60)
    assert 0 == code
    assert "batchobs_ingest_events_inserted_total 5000.0" in text
    assert "batchobs_ingest_insert_seconds_bucket" in text and "batchobs_ingest_lag_bytes" in text
    state = json.loads((tmp_path / "ingest" / "checkpoint.json").read_text())
    assert [] == state["pending"]
