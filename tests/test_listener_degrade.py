"""The listener degrades one path at a time: a spool that fails never costs the gauges."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from listener import contract
from listener.config import ListenerConfig
from listener.plugin import BatchobsListener

from . import servers
from .servers import airflow_env, run_dag_test
from .test_listener_airflow import DAGS, airflow_home  # noqa: F401 - a fixture, used by name

TASKS = {f"step_{i}" for i in range(5)}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Process]:
    process = servers.start_pushgateway(tmp_path_factory.mktemp("pushgateway"))
    yield process
    process.stop()


def task_status(gateway_url: str, instance: str) -> dict[str, float]:
    """task_status of each task of ``instance`` in the gateway."""
    out = {}
    for group in servers.get_json(gateway_url + "/api/v1/metrics")["data"]:
        labels = group["labels"]
        if labels.get("instance") == instance and "task_id" in labels and "task_status" in group:
            out[labels["task_id"]] = float(group["task_status"]["metrics"][0]["value"])
    return out


def wait_for(check: Any, deadline_s: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true (a liveness deadline, not a timing assertion)."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_unusable_spool_keeps_the_gauges(airflow_home: Path, gateway: servers.Process,  # noqa: F811
                                         tmp_path: Path) -> None:
    """In a real Airflow run with the spool directory unusable (a file in its way), every task's
    gauges still reach the Pushgateway and the run succeeds."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_bytes(b"")
    env = airflow_env(airflow_home, blocked / "spool", BATCHOBS_PUSHGATEWAY_URL=gateway.url,
                      BATCHOBS_INSTANCE="spool-down")
    result = run_dag_test(DAGS / "five_tasks.py", env)
    assert ["success"] == result["states"]
    assert "writing the task event failed" in result["stdout"] + result["stderr"]
    assert dict.fromkeys(TASKS, 1.0) == task_status(gateway.url, "spool-down")


def stand_in_task_instance(task_id: str) -> Any:
    """What a RuntimeTaskInstance carries.  A stand-in, because Airflow itself refuses ids longer than
    250 characters, so it cannot produce the over-long id the contract refuses."""
    now = datetime.now(timezone.utc)
    dag_run = SimpleNamespace(run_type="manual", logical_date=now, data_interval_start=now, data_interval_end=now)
    return SimpleNamespace(
        dag_id="long_ids", run_id="manual__1", task_id=task_id, map_index=-1, try_number=1, max_tries=0,
        queue="default", pool="default_pool", start_date=now, end_date=None, state="running",
        task=SimpleNamespace(task_type="PythonOperator"),
        _ti_context_from_server=SimpleNamespace(dag_run=dag_run, max_tries=0),
    )


def test_event_the_contract_refuses_keeps_the_gauges(gateway: servers.Process, tmp_path: Path) -> None:
    """A task whose id is longer than the contract allows gets no event, but its gauges are pushed;
    the next task's event is written."""
    listener = BatchobsListener(ListenerConfig(instance="long-ids", hostname="h", spool_dir=tmp_path,
                                               pushgateway_url=gateway.url))
    long_id = "t" * (contract.MAX_TEXT + 1)
    try:
        for task_id in (long_id, "short"):
            ti = stand_in_task_instance(task_id)
            listener.on_task_instance_running(None, ti)
            ti.state = "success"
            listener.on_task_instance_success("running", ti)
        assert listener.pusher is not None and listener.pusher.flush(30)
    finally:
        listener.close()
    assert {long_id: 1.0, "short": 1.0} == wait_for(lambda: task_status(gateway.url, "long-ids"))
    assert [("short", "running"), ("short", "success")] == [
        (e["task_id"], e["state"]) for e in servers.spool_events(tmp_path)]
