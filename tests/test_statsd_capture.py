"""Airflow 3.3's own StatsD metrics, captured from a real scheduler, through our statsd-exporter mapping.

A real api-server, scheduler and dag-processor (LocalExecutor, SQLite) send StatsD to a UDP socket
held by the test on 127.0.0.1 while a scheduled run of a DAG with dotted ids (``team.nightly``,
TaskGroup tasks ``load.orders``) goes through. Every metric name captured must be in the table
below, and ``deploy/compose/statsd-mapping.yml`` (evaluated by ``tests/statsd_mapper.py``, since
statsd-exporter itself cannot be installed here) must give the Prometheus name and labels the
table says. A new metric in a later Airflow fails the test until the table names it.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import start_http_server

from . import dashboards, servers
from .statsd_mapper import Mapper, exporter_registry, parse_line
from .test_listener_scheduler import api

ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "deploy" / "compose" / "statsd-mapping.yml"
DAGS = Path(__file__).parent / "statsd_dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "team.nightly"
pytestmark = pytest.mark.slow

DROP = None
TASK = ("dag_id", "task_id")
RUN = ("dag_id", "run_type")
QUEUED = ("dag_id", "queue", "task_id")
OPERATOR = ("dag_id", "operator_name", "task_id")
# (StatsD name, type) -> (Prometheus name or DROP, label names). Legacy names carry the ids in the
# name, with the dots of ids rewritten to "__" by Airflow; the tagged twin of each is kept instead.
EXPECTED: dict[tuple[str, str], tuple[str | None, tuple[str, ...]]] = {
    ("airflow.scheduler_heartbeat", "counter"): ("airflow_scheduler_heartbeat_total", ()),
    ("airflow.dag_processor_heartbeat", "counter"): ("airflow_dag_processor_heartbeat_total", ()),
    ("airflow.job_start", "counter"): ("airflow_job_start_total", ()),
    ("airflow.job_end", "counter"): ("airflow_job_end_total", ()),
    ("airflow.scheduler.scheduler_loop_duration", "observer"): ("airflow_scheduler_loop_duration_seconds", ()),
    ("airflow.scheduler.critical_section_duration", "observer"):
        ("airflow_scheduler_critical_section_duration_seconds", ()),
    ("airflow.scheduler.critical_section_query_duration", "observer"):
        ("airflow_scheduler_critical_section_query_duration_seconds", ()),
    ("airflow.scheduler.executor_heartbeat_duration", "observer"):
        ("airflow_scheduler_executor_heartbeat_duration_seconds", ("executor",)),
    ("airflow.scheduler.tasks.executable", "gauge"): ("airflow_scheduler_tasks_executable", ()),
    ("airflow.scheduler.tasks.starving", "gauge"): ("airflow_scheduler_tasks_starving", ()),
    ("airflow.scheduler.orphaned_tasks.adopted", "counter"): ("airflow_scheduler_orphaned_tasks_adopted_total", ()),
    ("airflow.scheduler.orphaned_tasks.cleared", "counter"): ("airflow_scheduler_orphaned_tasks_cleared_total", ()),
    ("airflow.scheduler.dag_bag.cache_hit", "counter"): (DROP, ()),
    ("airflow.scheduler.dag_bag.cache_miss", "counter"): (DROP, ()),
    ("airflow.scheduler.dag_bag.cache_size", "gauge"): (DROP, ()),
    ("airflow.serde.load_serializers", "observer"): (DROP, ()),
    ("airflow.api_server.dag_bag.cache_size", "gauge"): (DROP, ()),
    ("airflow.connection_test.active", "gauge"): (DROP, ()),
    ("airflow.connection_test.pending", "gauge"): (DROP, ()),
    **{(f"airflow.pool.{slots}", "gauge"): (f"airflow_pool_{slots}", ("pool_name",))
       for slots in ("open_slots", "queued_slots", "running_slots", "deferred_slots", "scheduled_slots",
                     "starving_tasks")},
    **{(f"airflow.pool.{slots}.default_pool", "gauge"): (DROP, ())
       for slots in ("open_slots", "queued_slots", "running_slots", "deferred_slots", "scheduled_slots",
                     "starving_tasks")},
    **{(f"airflow.executor.{what}", "gauge"): (f"airflow_executor_{what}", ("executor_class_name", "status"))
       for what in ("open_slots", "queued_tasks", "running_tasks")},
    **{(f"airflow.executor.{what}.LocalExecutor", "gauge"): (DROP, ())
       for what in ("open_slots", "queued_tasks", "running_tasks")},
    ("airflow.dagrun.duration.failed", "observer"): ("airflow_dagrun_duration_seconds", (*RUN, "state")),
    ("airflow.dagrun.duration.failed.team__nightly", "observer"): (DROP, ()),
    ("airflow.dagrun.schedule_delay", "observer"): ("airflow_dagrun_schedule_delay_seconds", ("dag_id",)),
    ("airflow.dagrun.schedule_delay.team__nightly", "observer"): (DROP, ()),
    ("airflow.dagrun.first_task_scheduling_delay", "observer"):
        ("airflow_dagrun_first_task_scheduling_delay_seconds", RUN),
    ("airflow.dagrun.team__nightly.first_task_scheduling_delay", "observer"): (DROP, ()),
    # this legacy name keeps the dag_id's dots: a positional glob would split "team.nightly"
    ("airflow.dagrun.team.nightly.first_task_scheduling_delay", "observer"): (DROP, ()),
    ("airflow.dagrun.first_task_start_delay", "observer"): ("airflow_dagrun_first_task_start_delay_seconds", RUN),
    ("airflow.dagrun.dependency-check", "observer"): ("airflow_dagrun_dependency_check_seconds", RUN),
    ("airflow.dagrun.dependency-check.team__nightly", "observer"): (DROP, ()),
    ("airflow.ti.start", "counter"): ("airflow_ti_start_total", TASK),
    ("airflow.ti.finish", "counter"): ("airflow_ti_finish_total", ("dag_id", "state", "task_id")),
    ("airflow.ti_successes", "counter"): ("airflow_ti_successes_total", TASK),
    ("airflow.ti_failures", "counter"): ("airflow_ti_failures_total", TASK),
    ("airflow.operator_successes", "counter"): ("airflow_operator_successes_total", OPERATOR),
    ("airflow.operator_failures", "counter"): ("airflow_operator_failures_total", OPERATOR),
    ("airflow.operator_successes__PythonDecoratedOperator", "counter"): (DROP, ()),
    ("airflow.operator_failures__PythonDecoratedOperator", "counter"): (DROP, ()),
    ("airflow.task_instance_created", "counter"):
        ("airflow_task_instance_created_total", ("dag_id", "run_type", "task_type")),
    ("airflow.task_instance_created__PythonDecoratedOperator", "counter"): (DROP, ()),
    ("airflow.task.duration", "observer"): ("airflow_task_duration_seconds", TASK),
    ("airflow.task.scheduled_duration", "observer"): ("airflow_task_scheduled_duration_seconds", QUEUED),
    ("airflow.task.queued_duration", "observer"): ("airflow_task_queued_duration_seconds", QUEUED),
    **{(f"airflow.ti.start.team__nightly.{task}", "counter"): (DROP, ())
       for task in ("fails", "load__orders", "load__customers")},
    **{(f"airflow.ti.finish.team__nightly.{task}", "counter"): (DROP, ())
       for task in ("fails.failed", "load__orders.success", "load__customers.success")},
    **{(f"airflow.dag.team__nightly.{task}.{what}", "observer"): (DROP, ())
       for task in ("fails", "load__orders", "load__customers")
       for what in ("duration", "scheduled_duration", "queued_duration")},
    ("airflow.dagbag_size", "gauge"): ("airflow_dagbag_size", ()),
    ("airflow.dag_processing.import_errors", "gauge"): ("airflow_dag_processing_import_errors", ()),
    ("airflow.dag_processing.total_parse_time", "gauge"): ("airflow_dag_processing_total_parse_time_seconds", ()),
    ("airflow.dag_processing.file_path_queue_size", "gauge"): ("airflow_dag_processing_file_path_queue_size", ()),
    ("airflow.dag_processing.file_path_queue_update_count", "counter"): (DROP, ()),
    ("airflow.dag_processing.last_duration", "observer"):
        ("airflow_dag_processing_last_duration_seconds", ("bundle_name", "file_name")),
    ("airflow.dag_processing.last_duration.dags-folder.dotted", "observer"): (DROP, ()),
    ("airflow.dag_processing.processes", "counter"):
        ("airflow_dag_processing_processes_total", ("action", "file_path")),
}
# What the issue asks the fleet view to show; each must have been emitted and mapped.
REQUIRED = {
    "airflow_scheduler_heartbeat_total", "airflow_pool_open_slots", "airflow_pool_queued_slots",
    "airflow_pool_running_slots", "airflow_executor_open_slots", "airflow_executor_queued_tasks",
    "airflow_executor_running_tasks", "airflow_dagrun_duration_seconds", "airflow_dagrun_schedule_delay_seconds",
    "airflow_dag_processing_total_parse_time_seconds", "airflow_dag_processing_import_errors",
    "airflow_dag_processing_last_duration_seconds", "airflow_ti_finish_total", "airflow_task_duration_seconds",
}


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Every StatsD line a real Airflow sends while one scheduled run of ``team.nightly`` goes through."""
    home = tmp_path_factory.mktemp("airflow-statsd")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.2)
    lines: list[str] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                lines.extend(sink.recv(65535).decode().splitlines())
            except OSError:
                continue

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    port = servers.free_port()
    env = servers.airflow_env(
        home, home / "spool",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS), AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="4", AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__API_AUTH__JWT_SECRET="batchobs-test-secret-" + "x" * 32,
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1", AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="2",
        # the same metrics settings as docker-compose.yml
        AIRFLOW__METRICS__STATSD_ON="True", AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
        AIRFLOW__METRICS__STATSD_PORT=str(sink.getsockname()[1]), AIRFLOW__METRICS__STATSD_PREFIX="airflow",
        AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED="True",
    )
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300, cwd=home)
    procs = []
    for cmd in (["api-server", "--host", "127.0.0.1", "--port", str(port)], ["scheduler"], ["dag-processor"]):
        log = open(home / f"{cmd[0]}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([AIRFLOW, *cmd], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home))
    cluster: dict[str, Any] = {"api": f"http://127.0.0.1:{port}"}
    try:
        servers.wait_http(cluster["api"] + "/api/v2/monitor/health", timeout_s=120)
        servers.wait_for(lambda: _finished_run(cluster), 300, f"a scheduled run of {DAG_ID} to finish")
        # one more pool-metrics interval (5 s) so the pool gauges are among the lines
        servers.wait_for(lambda: any(line.startswith("airflow.pool.open_slots") for line in lines), 60, "pool metrics")
    finally:
        servers.stop_all(procs)
        stop.set()
        receiver.join(5)
        sink.close()
    (home / "statsd.txt").write_text("\n".join(lines))  # for a failing run: every line as sent
    yield list(lines)


def _finished_run(cluster: dict[str, Any]) -> bool:
    try:
        runs = api(cluster, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
    except OSError:
        return False
    return any(run["state"] in ("success", "failed") for run in runs)


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    return Mapper.from_file(MAPPING)


def test_every_captured_metric_is_in_the_table(captured: list[str]) -> None:
    """Each StatsD name Airflow emitted during the run has an expected mapping in the table."""
    seen = {(s.name, s.metric_type) for s in map(parse_line, captured)}
    assert set() == seen - EXPECTED.keys()


def test_each_captured_line_maps_as_the_table_says(captured: list[str], mapper: Mapper) -> None:
    """The mapping gives every captured line the Prometheus name and label names of the table."""
    wrong = []
    for sample in map(parse_line, captured):
        mapped = mapper.map(sample)
        got = (mapped.name, tuple(sorted(mapped.labels)))
        if (sample.name, sample.metric_type) in EXPECTED and EXPECTED[sample.name, sample.metric_type] != got:
            wrong.append((sample.name, EXPECTED[sample.name, sample.metric_type], got))
    assert [] == wrong


def test_the_fleet_metrics_were_emitted_and_mapped(captured: list[str], mapper: Mapper) -> None:
    """Scheduler heartbeat, pools, executor, DAG-run duration and delay, parsing and tasks all reach Prometheus."""
    exported = {mapper.map(s).name for s in map(parse_line, captured)}
    assert set() == REQUIRED - exported


def test_dotted_ids_arrive_whole_as_labels(captured: list[str], mapper: Mapper) -> None:
    """TaskGroup task ids and a dotted dag_id become exact label values, not split name parts."""
    finished = set()
    for sample in map(parse_line, captured):
        mapped = mapper.map(sample)
        if mapped.name == "airflow_ti_finish_total":
            finished.add((mapped.labels["dag_id"], mapped.labels["task_id"], mapped.labels["state"]))
    assert {(DAG_ID, "load.orders", "success"), (DAG_ID, "load.customers", "success"),
            (DAG_ID, "fails", "failed")} == finished


def test_no_run_id_label(captured: list[str], mapper: Mapper) -> None:
    """No exported series carries run_id (Airflow's statsd_disabled_tags default): bounded cardinality."""
    labelled = [mapper.map(s) for s in map(parse_line, captured)]
    assert [] == [m for m in labelled if m.name and "run_id" in m.labels]


def test_the_scheduler_row_queries_answer_from_the_mapped_metrics(captured: list[str], mapper: Mapper,
                                                                  tmp_path: Path) -> None:
    """Every PromQL query of Fleet's scheduler-and-pools row (grafana/dashboards/fleet.json) returns
    series from a real Prometheus scraping, as its statsd-exporter job, what statsd-exporter would
    expose for the captured lines, with its grouping labels set."""
    row = [t.target for t in dashboards.statsd_targets()]
    assert row, f"no panel under the row {dashboards.STATSD_ROW!r} in Fleet"
    registry = exporter_registry(mapper, captured)
    exporter, thread = start_http_server(0, "127.0.0.1", registry)
    prometheus = servers.start_prometheus(tmp_path / "prometheus", statsd_exporter=f"127.0.0.1:{exporter.server_port}")
    try:
        empty = []
        for target in row:
            grouping = re.search(r"\bby \(([^)]*)\)", target["expr"])
            labels = [g.strip() for g in grouping.group(1).split(",") if g.strip() != "le"] if grouping else []
            try:
                result = servers.wait_for(lambda t=target: servers.prom_query(prometheus.url, t["expr"]), 60,
                                          target["expr"])
            except AssertionError:
                empty.append(target["expr"])
                continue
            assert all(series["metric"].get(label) for series in result for label in labels), target["expr"]
        assert [] == empty
    finally:
        prometheus.stop()
        exporter.shutdown()
        thread.join(5)
