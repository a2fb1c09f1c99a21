"""`batchobs demo` stopped by a signal leaves no process and no temporary directory behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BATCHOBS = str(Path(sys.executable).with_name("batchobs"))
pytestmark = pytest.mark.slow


def children() -> dict[int, list[int]]:
    """Every live process's children, from /proc (zombies count as gone)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if fields[0] != "Z":
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_child(tmp_path: Path, sig: int) -> None:
    """SIGTERM / SIGINT to the demo while the Airflow runner works: the demo exits 128 + the signal,
    and the warehouse, Pushgateway, Prometheus, the runner and its temporary directory are gone."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, BATCHOBS_HOME=str(tmp_path / "home"), TMPDIR=str(temp))
    demo = subprocess.Popen([BATCHOBS, "demo", "--runs", "50"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    assert demo.stdout is not None
    reader = threading.Thread(target=lambda: output.extend(demo.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600  # the first run creates Airflow's metadata DB
        runner: set[int] = set()
        while not runner:
            assert demo.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "no Airflow runner started:\n" + "".join(output)
            time.sleep(0.5)
            runner = {pid for pid in descendants(demo.pid) if "dagfile" in cmdline(pid)}
        started = descendants(demo.pid)
        assert any("warehouse" in cmdline(pid) and "serve" in cmdline(pid) for pid in started), started
        if shutil.which("prometheus"):
            assert any("prometheus" in cmdline(pid) for pid in started)
        demo.send_signal(sig)
        assert 128 + sig == demo.wait(120), "".join(output)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    # Killed processes go at once; the grace is short so that a runner left alone cannot pass by
    # dying later of a write to its closed stdout.
    deadline = time.monotonic() + 0.5
    while {pid for pid in started if alive(pid)} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert set() == {f"{pid}: {cmdline(pid)}" for pid in started if alive(pid)}
    assert [] == [p.name for p in temp.iterdir() if p.name.startswith("batchobs-demo")]
