"""One ingester per spool and per state directory: a second is refused at once, naming
the owner, and the first lands every event exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.config import IngestConfig
from ingest.errors import SpoolLocked
from ingest.lock import LOCK_NAME
from ingest.service import Ingester
from warehouse.connection import ClickHouseSettings

ROOT = Path(__file__).resolve().parents[1]
BATCHOBS = str(Path(sys.executable).with_name("batchobs"))


def start_ingester(db: ClickHouseSettings, home: Path, spool: Path, state: Path, log: Path,
                   *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOBS_")}
    auth = db.username + (f":{db.password}" if db.password else "")
    env.update(BATCHOBS_HOME=str(home),
               BATCHOBS_CLICKHOUSE_URL=f"http://{auth}@{db.host}:{db.port}/{db.database}")
    with open(log, "ab") as out:
        return subprocess.Popen([BATCHOBS, "ingest", "--spool-dir", str(spool), "--state-dir", str(state),
                                 "--metrics-port", "0", "--batch-rows", "500", *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=home)


def wait_for_owner(directory: Path, pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if f"pid {pid} " in (directory / LOCK_NAME).read_text() if (directory / LOCK_NAME).exists() else False:
            return
        time.sleep(0.05)
    raise TimeoutError(f"pid {pid} did not take {directory}")


@pytest.mark.parametrize("shared", ["spool and state", "spool only", "state only"])
def test_a_second_ingester_is_refused_naming_the_owner(database: ClickHouseSettings, tmp_path: Path,
                                                       shared: str) -> None:
    """While one `batchobs ingest` runs, another on the same spool or state directory exits 1
    at once with one line naming the owner's pid and host; the first goes on, and every
    event lands exactly once."""
    total = 15_000
    spool = tmp_path / "spool"
    writer = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "spool_writer.py"), str(spool),
                               str(total), "--rate", "5000"], cwd=ROOT)
    first = start_ingester(database, tmp_path, spool, tmp_path / "state", tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for_owner(spool, first.pid)
        wait_for_owner(tmp_path / "state", first.pid)
        other_spool = spool if "spool" in shared else tmp_path / "other-spool"
        other_state = tmp_path / "state" if "state" in shared else tmp_path / "other-state"
        second = start_ingester(database, tmp_path, other_spool, other_state, tmp_path / "second.log")
        assert 1 == second.wait(60)  # at once; the deadline only guards against a hang
        said = (tmp_path / "second.log").read_text().strip().splitlines()
        assert 1 == len(said), said
        owned = other_state if "state" in shared else other_spool  # the state directory is taken first
        assert said[0] == (f"batchobs: another ingester (pid {first.pid} on {socket.gethostname()}) "
                           f"is using {owned.resolve()}: stop it first, or give this one its own "
                           "--spool-dir and --state-dir")
        assert first.poll() is None
        writer.wait(120)
        client = database.client()
        deadline = time.monotonic() + 120  # hang guard
        while client.command("SELECT uniqExact(event_id) FROM events") < total and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        writer.kill()
        first.send_signal(signal.SIGTERM)
        assert 0 == first.wait(60)
        if second is not None and second.poll() is None:
            second.kill()
    assert (total, total) == tuple(client.query("SELECT count(), uniqExact(event_id) FROM events").result_rows[0])


def test_the_lock_goes_with_its_owner(database: ClickHouseSettings, tmp_path: Path) -> None:
    """In one process: a second Ingester on the same directories is refused while the first
    holds them, and takes them once the first is closed."""
    config = IngestConfig(tmp_path / "spool", tmp_path / "state")
    first = Ingester(config, database.client())
    with pytest.raises(SpoolLocked, match=rf"another ingester \(pid {os.getpid()} on "):
        Ingester(config, database.client())
    first.close()
    Ingester(config, database.client()).close()
