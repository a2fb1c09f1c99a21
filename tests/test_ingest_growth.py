"""Batches that grow with the backlog and shrink back; exactly once across crashes that
change the batch size between the crash and the replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from ingest.config import BatchLimits, IngestConfig
from ingest.service import Ingester
from warehouse.connection import ClickHouseSettings

ROOT = Path(__file__).resolve().parents[1]
BATCHOBS = str(Path(sys.executable).with_name("batchobs"))

# `batchobs ingest --once` that dies (os._exit, as SIGKILL would leave it) right after its
# CRASH_AFTER-th insert is acknowledged by ClickHouse: that batch, and any other in flight,
# has landed but is not committed in the checkpoint.  Only the moment of the crash is
# arranged; the ingester, its checkpoint and the warehouse are the real ones.
CRASHING_INGESTER = """
import os, sys
from ingest import writer
crash_after = int(sys.argv[1])
landed = 0
insert_events = writer.Writer.insert_events
def insert_then_crash(self, body, token, rows):
    global landed
    written = insert_events(self, body, token, rows)
    landed += 1
    if landed == crash_after:
        os._exit(9)
    return written
writer.Writer.insert_events = insert_then_crash
from batchobs.cli import main
sys.exit(main(["ingest", "--once", "--retention", "keep", *sys.argv[2:]]))
"""


def limits(config: IngestConfig, backlog: int, steps: int) -> list[BatchLimits]:
    """The limits of ``steps`` batches in a row, ``backlog`` bytes waiting at each."""
    out: list[BatchLimits] = []
    for _ in range(steps):
        out.append(config.batch_limits(backlog, out[-1] if out else None))
    return out


class TestLimits:
    def config(self, **kwargs: int) -> IngestConfig:
        return IngestConfig(Path("s"), Path("t"), **{"max_rows": 10_000, "max_bytes": 8 << 20,
                                                     "backlog_batch_bytes": 32 << 20, **kwargs})

    def test_caught_up_batches_keep_the_base_limits(self) -> None:
        """Less waiting than three base batches: the base limits, however many batches in a row."""
        assert [BatchLimits(10_000, 8 << 20)] * 4 == limits(self.config(), 20 << 20, 4)

    def test_a_backlog_doubles_the_batch_up_to_the_bound_with_rows_in_proportion(self) -> None:
        """A large backlog: 8 -> 16 -> 32 MiB, then 32 MiB; rows grow by the same factor."""
        assert [BatchLimits(10_000, 8 << 20), BatchLimits(20_000, 16 << 20), BatchLimits(40_000, 32 << 20),
                BatchLimits(40_000, 32 << 20)] == limits(self.config(), 1 << 40, 4)
        assert BatchLimits(20_000, 16 << 20) == self.config().batch_limits(1 << 40, BatchLimits(10_000, 8 << 20))

    def test_batches_shrink_with_the_backlog(self) -> None:
        """The share of the backlog (a third, with two inserts in flight) bounds the batch, and
        once caught up the base limits come back at once."""
        config = self.config()
        big = BatchLimits(40_000, 32 << 20)
        assert BatchLimits(25_000, 20 << 20) == config.batch_limits(60 << 20, big)
        assert BatchLimits(10_000, 8 << 20) == config.batch_limits(1 << 20, big)

    def test_no_growth_when_the_bound_is_the_base(self) -> None:
        assert [BatchLimits(10_000, 8 << 20)] * 3 == limits(self.config(backlog_batch_bytes=8 << 20), 1 << 40, 3)

    def test_the_bound_is_validated(self) -> None:
        with pytest.raises(ValueError, match="backlog_batch_bytes"):
            self.config(backlog_batch_bytes=10)


def write_spool(spool: Path, count: int) -> None:
    """``count`` contract events appended by the listener's own Spool, from a process that exits."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "spool_writer.py"), str(spool), str(count)],
                   check=True, cwd=ROOT)


def counts(db: ClickHouseSettings) -> tuple[int, int, int]:
    """(rows, distinct event ids, dead letters): rows counted without FINAL, merges stopped."""
    client = db.client()
    rows, distinct = client.query("SELECT count(), uniqExact(event_id) FROM events").result_rows[0]
    return int(rows), int(distinct), int(client.command("SELECT count() FROM dead_letters"))


class TestDrain:
    def test_a_drain_grows_its_batches_and_shrinks_back_when_caught_up(self, database: ClickHouseSettings,
                                                                       tmp_path: Path) -> None:
        """A backlog lands in fewer, larger inserts than the base limits allow; a few new lines
        afterwards go in a batch with the base limits again."""
        spool = tmp_path / "spool"
        write_spool(spool, 6000)
        size = sum(f.stat().st_size for f in spool.iterdir())
        config = IngestConfig(spool_dir=spool, state_dir=tmp_path / "state", max_rows=200, max_bytes=100_000,
                              backlog_batch_bytes=800_000, retention="keep")
        ingester = Ingester(config, database.client(autogenerate_session_id=False))
        ingester.run(once=True)
        assert (6000, 6000, 0) == counts(database)
        batches = ingester.metrics.batches._value.get()
        assert batches < size / 100_000 / 2, batches  # at the base limits it would take size / 100 kB
        write_spool(spool, 10)
        ingester.run(once=True)
        assert 100_000 == ingester.metrics.batch_limit_bytes._value.get()
        assert size > 800_000 * 3  # the backlog was large enough to reach the bound

    def test_crashes_between_insert_and_commit_with_other_batch_sizes_on_restart(
            self, database: ClickHouseSettings, tmp_path: Path) -> None:
        """Killed right after inserts landed and before they were committed, then restarted
        with other batch limits (growing, then fixed, then growing otherwise): the batches in
        flight are replayed with their recorded ranges, so with their tokens, and ClickHouse
        drops the copies; nothing lands twice (rows = distinct ids, merges stopped) and nothing
        is lost."""
        total = 6000
        spool, home = tmp_path / "spool", tmp_path / "home"
        write_spool(spool, total)
        database.client().command("SYSTEM STOP MERGES events")  # a duplicate would stay counted
        url = (f"http://{quote(database.username)}:{quote(database.password)}@{database.host}:{database.port}"
               f"/{database.database}")
        env = dict(os.environ, BATCHOBS_HOME=str(home), BATCHOBS_CLICKHOUSE_URL=url,
                   BATCHOBS_SPOOL_DIR=str(spool))
        runs = [  # (crash after this many inserts, --batch-rows, --batch-bytes, --backlog-batch-bytes)
            (3, 300, 200_000, 1_600_000),
            (4, 170, 120_000, 120_000),
            (2, 500, 150_000, 900_000),
        ]
        uncommitted = []
        for crash_after, rows, size, backlog in runs:
            done = subprocess.run(
                [sys.executable, "-c", CRASHING_INGESTER, str(crash_after), "--batch-rows", str(rows),
                 "--batch-bytes", str(size), "--backlog-batch-bytes", str(backlog)],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert 9 == done.returncode, done.stderr[-2000:]
            state = json.loads((home / "ingest" / "checkpoint.json").read_text())
            assert state["pending"], "the crash left no batch in flight"
            landed = counts(database)[0]
            uncommitted.append(landed - committed_lines(spool, state["offsets"]))
        assert all(n > 0 for n in uncommitted), uncommitted  # every crash had landed, uncommitted rows
        drain = subprocess.run([BATCHOBS, "ingest", "--once", "--retention", "keep", "--batch-rows", "1000",
                                "--batch-bytes", "700000"], env=env, cwd=ROOT, capture_output=True, text=True,
                               timeout=120)
        assert 0 == drain.returncode, drain.stderr[-2000:]
        assert (total, total, 0) == counts(database)


def committed_lines(spool: Path, offsets: dict[str, int]) -> int:
    """Lines of the spool before the checkpoint's read positions."""
    return sum((spool / name).read_bytes()[:offset].count(b"\n") for name, offset in offsets.items())


class TestBacklogLatency:
    """A line's wait for its batch counts from when it was written, as far as the spool tells:
    a backlog's last, partial batch goes at once instead of waiting ``max_latency_s`` more.
    (No warehouse is needed: only the batch collection is exercised.)"""

    def collect_in_background(self, tmp_path: Path, age_s: float) -> tuple[Ingester, threading.Thread, list[int]]:
        spool = tmp_path / "spool"
        write_spool(spool, 50)
        for file in spool.iterdir():
            written = time.time() - age_s
            os.utime(file, (written, written))
        config = IngestConfig(spool_dir=spool, state_dir=tmp_path / "state", max_latency_s=3600)
        ingester = Ingester(config, None)
        collected: list[int] = []
        worker = threading.Thread(target=lambda: collected.append(sum(c.lines for c in ingester._collect(False, {}))),
                                  daemon=True)
        worker.start()
        return ingester, worker, collected

    def test_lines_written_long_ago_are_a_batch_at_once(self, tmp_path: Path) -> None:
        """Lines already an hour old when read: the batch is collected without waiting."""
        ingester, worker, collected = self.collect_in_background(tmp_path, age_s=3600)
        worker.join(10)  # (without the rule it would wait an hour)
        stopped = ingester.stop.is_set()
        ingester.stop.set()
        assert ([50], False) == (collected, stopped)

    def test_lines_just_written_wait_for_more(self, tmp_path: Path) -> None:
        """Lines written just now: the batch waits for more (here until stopped)."""
        ingester, worker, collected = self.collect_in_background(tmp_path, age_s=0)
        worker.join(1.0)
        waiting = worker.is_alive()
        ingester.stop.set()
        worker.join(60)
        assert (True, [50]) == (waiting, collected)
