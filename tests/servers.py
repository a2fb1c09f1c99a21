"""Real servers for the tests, on loopback: Pushgateway, Prometheus, a black hole, Airflow runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from batchobs import demo
from batchobs.loopback import (  # noqa: F401 - the tests' servers, shared with the main job and benchmarks
    Process,
    binary,
    black_hole,
    free_port,
    prometheus_config,
    refusing_url,
    start_prometheus,
    start_pushgateway,
    wait_http,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def prom_query(prometheus_url: str, query: str) -> list[dict[str, Any]]:
    data = get_json(prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    return list(data["data"]["result"])


def gateway_groups(gateway_url: str) -> list[dict[str, str]]:
    return [group["labels"] for group in get_json(gateway_url + "/api/v1/metrics")["data"]]


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


def wait_for(predicate: Any, timeout_s: float, what: str, every_s: float = 1.0) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that (a hang guard, not a
    measurement: ``timeout_s`` only bounds how long a broken run waits)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


def stop_all(procs: list[subprocess.Popen[Any]], timeout_s: float = 30) -> None:
    """Terminate every process, then wait for each (killing those that outstay ``timeout_s``)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
