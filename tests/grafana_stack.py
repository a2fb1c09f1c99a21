"""Everything the dashboards read, real and on loopback, for the Grafana and alert tests.

A real DAG run (examples/batchobs_example.py in Airflow, listener on) pushes to a real
Pushgateway scraped by a real Prometheus with the project's config and rules; a real
`batchobs ingest` process drains the run's spool (plus one bad line: a dead letter) into
ClickHouse and serves /metrics to that Prometheus; a generated history of another DAG is
inserted beside it; `dbt build` builds the marts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from listener.contract import TASK_METRIC, Event
from listener.testing import history
from warehouse.connection import ClickHouseSettings
from warehouse.migrate import apply

from . import servers
from .runs import dbt, insert

INSTANCE = "example"  # BATCHOBS_INSTANCE of the real DAG run
EXAMPLE_DAG = "batchobs_example"
HISTORY_DAG = "etl_orders"
HISTORY_RUNS = 20
BAD_METRIC_RUNS = {4: 0.0, 7: 40.0}  # run index -> rows_loaded of a successful run gone bad
SLOW_RUN = 10  # run index whose extract takes 300 s more than usual


@dataclass
class Stack:
    prometheus: str
    gateway: str
    ingester: str  # host:port of its /metrics
    warehouse: ClickHouseSettings
    client: Any


def generated_history(now: datetime) -> list[Event]:
    """etl_orders, one run a day up to yesterday, with rows_loaded metrics and a slow run."""
    start = (now - timedelta(days=HISTORY_RUNS)).replace(hour=0, minute=0, second=0, microsecond=0)
    events = []
    for event in history(HISTORY_RUNS, dag_id=HISTORY_DAG, start=start):
        run_index = (datetime.fromisoformat(event.run_id.split("__", 1)[1]) - start).days
        if run_index == SLOW_RUN and event.task_id == "extract" and event.end_date is not None:
            event = dataclasses.replace(event, end_date=event.end_date + timedelta(seconds=300),
                                        emitted_at=event.emitted_at + timedelta(seconds=300),
                                        duration_s=(event.duration_s or 0) + 300)
        events.append(event)
        if event.task_id == "load" and event.state == "success":
            value = BAD_METRIC_RUNS.get(run_index, 1000.0 + 10 * run_index)
            events.append(Event(kind=TASK_METRIC, emitted_at=event.emitted_at, instance=event.instance,
                                dag_id=event.dag_id, run_id=event.run_id, task_id="load", try_number=1,
                                metric_name="rows_loaded", metric_value=value, metric_unit="rows"))
    return events


def prom_get(prometheus: str, path: str, **params: Any) -> Any:
    body = servers.get_json(f"{prometheus}{path}?" + urllib.parse.urlencode(params, doseq=True))
    assert "success" == body["status"], body
    return body["data"]


@contextmanager
def build(root: Path, clickhouse: ClickHouseSettings, admin: Any) -> Iterator[Stack]:
    started: list[servers.Process] = []
    database = f"g_{uuid.uuid4().hex[:12]}"
    ingest: subprocess.Popen[bytes] | None = None
    try:
        gateway = servers.start_pushgateway(root / "pushgateway")
        started.append(gateway)
        ingester = f"127.0.0.1:{servers.free_port()}"
        prometheus = servers.start_prometheus(root / "prometheus", gateway.url, ingester)
        started.append(prometheus)

        airflow_home, spool = root / "airflow", root / "spool"
        servers.migrate_airflow(airflow_home)
        run = servers.run_dag_test(servers.EXAMPLES / "batchobs_example.py", servers.airflow_env(
            airflow_home, spool, BATCHOBS_PUSHGATEWAY_URL=gateway.url, BATCHOBS_INSTANCE=INSTANCE))
        assert ["failed"] == run["states"]
        with next(spool.glob("*.jsonl")).open("ab") as f:
            f.write(b"this line is not an event\n")  # one dead letter for Pipeline health

        apply(admin, database, retention_days=400)
        warehouse = ClickHouseSettings(clickhouse.host, clickhouse.port, database, clickhouse.username,
                                       clickhouse.password, clickhouse.secure)
        client = warehouse.client()
        insert(client, generated_history(datetime.now(timezone.utc)))

        auth = urllib.parse.quote(warehouse.username) + (
            ":" + urllib.parse.quote(warehouse.password) if warehouse.password else "")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOBS_")}
        env.update(BATCHOBS_CLICKHOUSE_URL=f"http://{auth}@{warehouse.host}:{warehouse.port}/{database}",
                   BATCHOBS_HOME=str(root / "home"))
        ingest = subprocess.Popen(
            [str(Path(sys.executable).with_name("batchobs")), "ingest", "--spool-dir", str(spool), "--state-dir",
             str(root / "ingest-state"), "--metrics-port", ingester.rsplit(":", 1)[1], "--max-latency", "0.2"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(root / "ingest.log", "wb"))  # noqa: SIM115
        servers.wait_for(lambda: (
            client.query("SELECT count() FROM dead_letters").result_rows[0][0] >= 1
            and client.query("SELECT count() FROM events WHERE dag_id = {d:String} AND kind = 'dag_run'",
                             parameters={"d": EXAMPLE_DAG}).result_rows[0][0] >= 1),
            180, "the ingester to land the run and the dead letter", every_s=0.5)
        dbt(warehouse, database, root / "home", "build", "--quiet")

        def scraped() -> bool:
            ready = [
                f'task_status{{instance="{INSTANCE}"}}', 'up{job="batchobs-ingester"} == 1',
                "batchobs:ingest_events_inserted:rate1m", "batchobs:ingest_insert_seconds:p95_5m",
                'ALERTS{alertname="BatchobsTaskFailed"}', 'ALERTS{alertname="BatchobsDeadLetters"}',
            ]
            return all(prom_get(prometheus.url, "/api/v1/query", query=q)["result"] for q in ready)

        servers.wait_for(scraped, 180, "Prometheus to scrape both targets and evaluate the rules", every_s=0.5)
        yield Stack(prometheus.url, gateway.url, ingester, warehouse, client)
    finally:
        if ingest is not None:
            ingest.terminate()
            ingest.wait(30)
        for process in reversed(started):
            process.stop()
        admin.command(f"DROP DATABASE IF EXISTS {database}")


def log_tail(root: Path) -> str:
    """The ingester's and Prometheus's logs, for a failure message."""
    parts = []
    for name in ("ingest.log", "prometheus/prometheus.log"):
        path = root / name
        if path.exists():
            parts.append(f"--- {name}\n{path.read_text()[-2000:]}")
    return "\n".join(parts) or json.dumps({"logs": "none"})
