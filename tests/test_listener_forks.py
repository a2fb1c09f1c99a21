"""Forking while the listener's threads work: every child writes its event and pushes its gauges.

Airflow forks task runners.  ``fork()`` copies only the calling thread, so a lock that a
writing or pushing thread holds at that moment would stay held in the child forever.
Each test runs in a fresh process (so its forks copy nothing of pytest's), with one thread
appending events, another submitting gauges that the worker pushes to a real Pushgateway,
and the main thread forking children that each write one event and push one group.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import servers

ROOT = Path(__file__).parents[1]

FORKER = """
import json, os, sys, threading, time
from datetime import datetime, timezone
from pathlib import Path
from listener import contract
from listener.config import ListenerConfig
from listener.gauges import GroupKey, task_gauges
from listener.plugin import BatchobsListener

spool_dir, gateway, children, writing = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
listener = BatchobsListener(ListenerConfig(instance="forks", hostname="h", spool_dir=spool_dir,
                                           pushgateway_url=gateway, push_timeout_s=5.0))
events, pusher = listener.events, listener.pusher
now = datetime.now(timezone.utc)

def event(run_id):
    events.write(contract.TASK_INSTANCE, emitted_at=now, dag_id="forks", run_id=run_id, task_id="t",
                 try_number=1, state="success")

def group(task_id, try_number):
    pusher.submit(GroupKey.task("airflow", "forks", task_id, "forks"),
                  task_gauges("success", try_number, -1, 1.0, None))

stop = threading.Event()
def write_events():
    n = 0
    while not stop.is_set():
        event(f"parent-{n}")
        n += 1
def push_gauges():
    n = 0
    while not stop.is_set():
        group(f"parent_{n % 20}", n % 100 + 1)
        n += 1
        time.sleep(0.0005)

threads = [threading.Thread(target=push_gauges)] + ([threading.Thread(target=write_events)] if writing else [])
for t in threads:
    t.start()
pids = []
for i in range(children):
    pid = os.fork()
    if pid == 0:
        try:
            event(f"child-{i}")
            group(f"child_{i}", 1)
            os._exit(0 if pusher.flush(20) else 3)
        except BaseException:
            os._exit(4)
    pids.append(pid)
    time.sleep(0.002)
stop.set()
for t in threads:
    t.join()
deadline, status = time.monotonic() + float(sys.argv[5]), {}
while len(status) < len(pids) and time.monotonic() < deadline:
    for pid in pids:
        if pid not in status:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status[pid] = os.waitstatus_to_exitcode(code)
    time.sleep(0.05)
hung = [pid for pid in pids if pid not in status]
for pid in hung:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
listener.close()
print(json.dumps({"hung": len(hung), "failed": sorted(c for c in status.values() if c != 0)}))
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Process]:
    process = servers.start_pushgateway(tmp_path_factory.mktemp("pushgateway"))
    yield process
    process.stop()


def child_runs(spool: Path) -> set[str]:
    return {e["run_id"] for e in servers.spool_events(spool) if e["run_id"].startswith("child-")}


@pytest.mark.parametrize(("writing", "children"), [(True, 60), (False, 200)],
                         ids=["a thread writing and one pushing", "a thread pushing"])
def test_every_forked_child_finishes(writing: bool, children: int, gateway: servers.Process,
                                     tmp_path: Path) -> None:
    """Children forked while other threads write and push each write their event, push their group and exit."""
    proc = subprocess.run([sys.executable, "-c", FORKER, str(tmp_path), gateway.url, str(children),
                           "1" if writing else "0", "60"],  # seconds all children together get to finish
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert 0 == proc.returncode, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"hung": 0, "failed": []} == result
    assert {f"child-{i}" for i in range(children)} == child_runs(tmp_path)
    pushed = {g.get("task_id") for g in servers.gateway_groups(gateway.url)}
    assert {f"child_{i}" for i in range(children)} <= pushed


FIRST_PUSH = """
import json, sys
from listener.gauges import GroupKey, task_gauges
from listener.pusher import GaugePusher

pusher = GaugePusher(sys.argv[1])
before = set(sys.modules)
pusher.submit(GroupKey.task("airflow", "imports", "t", "imports"), task_gauges("success", 1, -1, 1.0, None))
ok = pusher.flush(30)
print(json.dumps({"pushed": ok, "imported": sorted(set(sys.modules) - before)}))
"""


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_push_imports_nothing(host: str, gateway: servers.Process) -> None:
    """The worker's first push imports no module: a child forked mid-import would wait on its lock forever."""
    url = gateway.url.replace("127.0.0.1", host)
    proc = subprocess.run([sys.executable, "-c", FIRST_PUSH, url], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert 0 == proc.returncode, proc.stderr[-3000:]
    assert {"pushed": True, "imported": []} == json.loads(proc.stdout)
