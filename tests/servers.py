"""Real servers for the tests, on loopback: Pushgateway, Prometheus, a black hole, Airflow runs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warehouse import demo

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


@dataclass
class Process:
    url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is None:
        raise RuntimeError(f"{name} is not installed: run `make test` (it installs Debian's {name})")
    return path


def start_pushgateway(workdir: Path) -> Process:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}",
         f"--persistence.file={workdir / 'pushgateway.dat'}"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "pushgateway.log", "wb"),  # noqa: SIM115 - lives with the process
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/-/ready")
    return Process(url, proc)


def start_prometheus(workdir: Path, gateway_url: str, ingester: str = "") -> Process:
    """Prometheus with the project's scrape config and rules; ``ingester`` is host:port of a /metrics."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(demo.prometheus_config(gateway_url.split("//", 1)[1], ingester))
    proc = subprocess.Popen(
        [binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "prometheus.log", "wb"),  # noqa: SIM115 - lives with the process
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/-/ready", timeout_s=30)
    return Process(url, proc)


def prom_query(prometheus_url: str, query: str) -> list[dict[str, Any]]:
    data = get_json(prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    return list(data["data"]["result"])


def gateway_groups(gateway_url: str) -> list[dict[str, str]]:
    return [group["labels"] for group in get_json(gateway_url + "/api/v1/metrics")["data"]]


@contextmanager
def black_hole() -> Iterator[str]:
    """A loopback server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def refusing_url() -> str:
    """A loopback URL nothing listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def airflow_env(home: Path, spool: Path, **extra: str) -> dict[str, str]:
    """The demo's Airflow environment, with batchobs' listener the only one: the OpenLineage
    provider (installed for benchmarks/hook_latency.py) off whatever the caller's OPENLINEAGE_*."""
    return demo.airflow_env(home, spool, EXAMPLES, **{"BATCHOBS_INSTANCE": "test",
                                                      "AIRFLOW__OPENLINEAGE__DISABLED": "true", **extra})


def migrate_airflow(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                   env=airflow_env(home, home / "spool"), check=True, capture_output=True, timeout=300)


def run_dag_test(dag_file: Path, env: dict[str, str], runs: int = 1) -> dict[str, Any]:
    """Run a DAG with ``dag.test()`` in a fresh process (the same runner as the main job)."""
    return demo.run_dag_test(dag_file, env, runs)


def spool_events(spool: Path) -> list[dict[str, Any]]:
    from listener.contract import decode

    events = []
    for path in sorted(spool.glob("*.jsonl")):
        for line in path.read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n"), f"half a line in {path}"
            events.append(decode(line).to_dict())
    return events
