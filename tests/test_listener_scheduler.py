"""Scheduler tier: a real scheduler, dag-processor and api-server (LocalExecutor, SQLite).

Covers what dag.test() cannot: on_dag_run_running (fired by the scheduler only),
reconciliation of a task killed with SIGKILL (no task hook fires), and a manual
state change through the REST API (the hook fires in the API server).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import servers

DAGS = Path(__file__).parent / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("airflow-cluster")
    spool = home / "spool"
    port = servers.free_port()
    env = servers.airflow_env(
        home, spool,
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS), AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="4", AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET="batchobs-test-secret-" + "x" * 32,
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1", AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="2",
    )
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300, cwd=home)
    procs = []
    for cmd in (["api-server", "--host", "127.0.0.1", "--port", str(port)], ["scheduler"], ["dag-processor"]):
        log = open(home / f"{cmd[0]}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([AIRFLOW, *cmd], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home))
    api = f"http://127.0.0.1:{port}"
    try:
        servers.wait_http(api + "/api/v2/monitor/health", timeout_s=120)
        yield {"home": home, "spool": spool, "env": env, "api": api}
    finally:
        servers.stop_all(procs)


def airflow(cluster: dict[str, Any], *args: str) -> str:
    proc = subprocess.run([AIRFLOW, *args], env=cluster["env"], capture_output=True, text=True, timeout=120,
                          cwd=cluster["home"])
    assert 0 == proc.returncode, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def api(cluster: dict[str, Any], method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(cluster["api"] + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def trigger(cluster: dict[str, Any], dag_id: str) -> str:
    servers.wait_for(lambda: _dag_known(cluster, dag_id), 120, f"{dag_id} to be parsed")
    api(cluster, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    run = api(cluster, "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})
    return str(run["dag_run_id"])


def _dag_known(cluster: dict[str, Any], dag_id: str) -> bool:
    try:
        api(cluster, "GET", f"/api/v2/dags/{dag_id}")
        return True
    except OSError:
        return False


def run_events(cluster: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    return [e for e in servers.spool_events(cluster["spool"]) if e["run_id"] == run_id]


def test_dag_run_running_and_sigkill_reconciled(cluster: dict[str, Any]) -> None:
    """The scheduler records the run starting; a SIGKILLed task shows up as reconciled failed."""
    run_id = trigger(cluster, "killed")
    events = servers.wait_for(
        lambda: (ev := run_events(cluster, run_id)) and len([e for e in ev if e["kind"] == "task_reconciled"]) == 2
        and ev, 240, "the killed run to end and be reconciled")
    dag_states = [e["state"] for e in events if e["kind"] == "dag_run"]
    assert "running" in dag_states and "failed" in dag_states
    killed_hooks = [e["state"] for e in events if e["kind"] == "task_instance" and e["task_id"] == "oom_killed"]
    assert "failed" not in killed_hooks  # no terminal task hook fired for the killed task
    reconciled = {e["task_id"]: e["state"] for e in events if e["kind"] == "task_reconciled"}
    assert {"fine": "success", "oom_killed": "failed"} == reconciled
    assert ["running", "success"] == [e["state"] for e in events
                                      if e["kind"] == "task_instance" and e["task_id"] == "fine"]


def test_manual_state_change_through_the_api_is_recorded(cluster: dict[str, Any]) -> None:
    """Marking a task instance success through the REST API lands as an event from the API server."""
    run_id = trigger(cluster, "killed")
    servers.wait_for(lambda: any(e["kind"] == "dag_run" and e["state"] == "failed"
                                 for e in run_events(cluster, run_id)), 240, "the run to end")
    api(cluster, "PATCH", f"/api/v2/dags/killed/dagRuns/{run_id}/taskInstances/oom_killed",
        {"new_state": "success"})
    manual = servers.wait_for(
        lambda: [e for e in run_events(cluster, run_id)
                 if e["kind"] == "task_instance" and e["attrs"].get("recorded_by") == "api-server"],
        60, "the API server's event")
    assert [("oom_killed", "success", "")] == [(e["task_id"], e["state"], e["previous_state"]) for e in manual]
    scheduler_log = (cluster["home"] / "scheduler.log").read_text()
    assert "batchobs:" not in scheduler_log, "a hook failed in the scheduler"
