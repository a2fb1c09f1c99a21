"""One spool directory shared by writers with different host names (task pods on one node).

Each writer is a process of its own with its own host name, as each pod has: in a UTS
namespace of its own (``unshare --uts``, where the kernel lets this user make one), else
with ``socket.gethostname`` patched in that process (said in the test's output).  Either
way the listener takes the host name as it does in Airflow (``ListenerConfig.from_env``).
While a writer lives its open file is not finished and stays; once it has gone, cleanly,
by SIGKILL, or leaving a forked child behind, the ingester drains and retires every file,
and every event lands once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest import spoolfiles
from ingest.lock import LOCK_NAME
from ingest.service import IngestConfig, Ingester
from listener.contract import encode
from listener.spool import parse_name
from listener.testing import history
from warehouse.connection import ClickHouseSettings

ROOT = Path(__file__).resolve().parents[1]
EVENTS = [encode(e) for e in history(10)]  # 176 events, ~300 bytes each
HOSTS = ("pod-a", "pod-b", "pod-c")

# A listener's spool in a process of its own: the host name and spool settings come from
# the environment as in Airflow.  Appends its lines, says so, then waits for its stdin to
# close.  With "fork", it first forks a child that outlives it, writing nothing.
WRITER = """
import os, socket, sys, time
if os.environ.get("TEST_HOSTNAME"):  # no UTS namespace of its own: patched, said by the test
    socket.gethostname = lambda: os.environ["TEST_HOSTNAME"]
from listener.config import ListenerConfig
from listener.spool import Spool
config = ListenerConfig.from_env()
spool = Spool(config.spool_dir, config.hostname, config.spool_max_bytes)
for line in open(sys.argv[1], "rb"):
    spool.append(line)
child = 0
if sys.argv[2] == "fork":
    child = os.fork()
    if child == 0:
        time.sleep(600)  # the test kills it
        os._exit(0)
print(f"written {socket.gethostname()} {child}", flush=True)
sys.stdin.read()
"""


def uts_namespaces() -> bool:
    """Whether this process may give a child a host name of its own."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    done = subprocess.run([unshare, "--uts", "sh", "-c", "hostname batchobs-probe"], capture_output=True, check=False)
    return done.returncode == 0


class Writer:
    def __init__(self, host: str, spool: Path, lines: Path, fork: bool, namespaces: bool) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOBS_")}
        env.update(BATCHOBS_SPOOL_DIR=str(spool), BATCHOBS_SPOOL_MAX_BYTES="4096")  # ~10 lines a file
        command = [sys.executable, "-c", WRITER, str(lines), "fork" if fork else "-"]
        if namespaces:
            command = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *command]
        else:
            env["TEST_HOSTNAME"] = host
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        said = self.process.stdout.readline().decode().split()  # blocks until written (or the process died)
        assert ["written", host] == said[:2], said
        self.child = int(said[2])

    def exit(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert 0 == self.process.wait(30)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert -signal.SIGKILL == self.process.wait(30)


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[list[Writer]]:
    """pod-a, pod-b and pod-c, each with a third of the events; pod-c forks a child that outlives it."""
    namespaces = uts_namespaces()
    if not namespaces:
        print("no UTS namespace for this user: writers' socket.gethostname() patched instead")
    started: list[Writer] = []
    try:
        for n, host in enumerate(HOSTS):
            lines = tmp_path / f"{host}.jsonl"
            lines.write_bytes(b"".join(EVENTS[n::3]))
            started.append(Writer(host, tmp_path / "spool", lines, host == "pod-c", namespaces))
        yield started
    finally:
        for writer in started:
            writer.process.kill()
            writer.process.wait(30)
            if writer.child:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(writer.child, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):  # not ours: reaped by init
                    os.waitpid(writer.child, 0)


def spool_files(spool: Path) -> dict[str, list[str]]:
    """Spool file names by writer host (nothing else is there but the ingester's lock)."""
    found: dict[str, list[str]] = {}
    for path in sorted(spool.iterdir()):
        if path.name == LOCK_NAME:
            continue
        parsed = parse_name(path.name)
        assert parsed is not None, f"{path.name}: not a spool file name"
        found.setdefault(parsed.host, []).append(path.name)
    return found


class TestWritersOnOtherHosts:
    @pytest.mark.parametrize("retention", ["delete", "archive"])
    def test_files_are_retired_once_their_writers_are_gone(self, database: ClickHouseSettings, tmp_path: Path,
                                                           writers: list[Writer], retention: str) -> None:
        """While the three writers live, each one's open file stays (not finished) and every
        line lands; after one exits, one is killed and one exits leaving a forked child,
        every file is retired per the retention, and every event landed exactly once."""
        spool, state = tmp_path / "spool", tmp_path / "state"
        before = spool_files(spool)
        assert {"pod_a", "pod_b", "pod_c"} == set(before)
        assert all(len(names) >= 3 for names in before.values()), before  # rotated: earlier files closed
        config = IngestConfig(spool_dir=spool, state_dir=state, retention=retention)
        ingester = Ingester(config, database.client(autogenerate_session_id=False))
        ingester.run(once=True)
        assert {host: names[-1:] for host, names in before.items()} == spool_files(spool)  # open files stay
        assert not any(spoolfiles.finished(f) for f in spoolfiles.list_files(spool))
        client = database.client()
        assert len(EVENTS) == client.command("SELECT count() FROM events")

        a, b, c = writers
        a.exit()
        b.kill()
        c.exit()  # its child lives on, holding nothing
        os.kill(c.child, 0)
        ingester.run(once=True)
        assert {} == spool_files(spool)
        ids = {json.loads(line)["event_id"] for line in EVENTS}
        assert (len(EVENTS), len(ids)) == tuple(client.query(
            "SELECT count(), uniqExact(event_id) FROM events").result_rows[0])
        assert len(EVENTS) == ingester.metrics.events_read._value.get()  # no line read twice
        if retention == "archive":
            assert sorted(n for names in before.values() for n in names) == sorted(
                p.name for p in (state / "archive").iterdir())
