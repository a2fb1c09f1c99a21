"""Hook time per task (running + terminal hook): batchobs, the OpenLineage provider's
listener and the article's V3 plugin, on the same tasks in one run.

The V3 plugin is rebuilt here from the article ("Building the Stack", part 4): a
fresh CollectorRegistry per hook and a synchronous ``pushadd_to_gateway`` with a
5 s timeout, on the task's critical path.  batchobs appends the event to the
spool and hands the gauges to its background pusher.  OpenLineage
(apache-airflow-providers-openlineage, the `bench` extra) is its own listener with
a file transport (no network): by default it forks a child per hook that builds and
emits the event, and waits for it; with ``[openlineage] execute_in_thread`` it
does that in a thread it waits for.  Both are measured; every event each writes is
counted in its file (a run where one went missing fails).

Three gateway conditions for the two Pushgateway clients: up (a real Pushgateway
on loopback), refusing (a port nothing listens on) and not answering (accepts,
never replies); OpenLineage pushes nothing, and is measured once, beside "up".
The task instances are real Airflow 3 ``RuntimeTaskInstance`` objects of real
DAGs (PythonOperator tasks) with their run context, as the task runner hands them
to the hooks (template context built before the hooks, as the runner does); what
is timed is the hook code, not Airflow's.

Usage: python benchmarks/hook_latency.py [--tasks 2000] [--v3-silent-tasks 4] [--ol-tasks 2000] 2> hooks.log
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from airflow.providers.standard.operators.python import PythonOperator  # noqa: E402
from airflow.sdk import DAG  # noqa: E402
from airflow.sdk.api.datamodels._generated import DagRun, TIRunContext  # noqa: E402
from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance  # noqa: E402
from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway  # noqa: E402

from batchobs import loopback as servers  # noqa: E402
from benchmarks._report import save  # noqa: E402
from listener.config import ListenerConfig  # noqa: E402
from listener.plugin import BatchobsListener  # noqa: E402


class ArticleV3Plugin:
    """The article's V3 listener: no run_id in the key, synchronous push, 5 s timeout."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.instance_name = "bench"

    def _get_task_group_key(self, ti: Any) -> dict[str, str]:
        return {"dag_id": ti.dag_id, "task_id": ti.task_id, "instance": self.instance_name}

    def _push(self, registry: CollectorRegistry, group_key: dict[str, str]) -> None:
        try:
            pushadd_to_gateway(self.url, job="airflow_v3", grouping_key=group_key, registry=registry, timeout=5)
        except Exception as exc:  # noqa: BLE001 - as the article: log and carry on
            print(f"Failed to push metric: {exc}", file=sys.stderr)

    def _status(self, ti: Any, value: int) -> None:
        registry = CollectorRegistry()
        Gauge("task_status", "Task state snapshot (1=success, -1=failed)", registry=registry).set(value)
        self._push(registry, self._get_task_group_key(ti))

    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self._status(task_instance, 0)

    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self._status(task_instance, 1)


def _nothing() -> None:
    return None


@cache
def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))


@cache
def _task(dag_id: str, task_id: str) -> PythonOperator:
    return PythonOperator(task_id=task_id, python_callable=_nothing, dag=_dag(dag_id))


def task_instance(i: int) -> Any:
    """The ``RuntimeTaskInstance`` the task runner hands the hooks, for task ``i``."""
    now = datetime.now(timezone.utc)
    dag_id, task_id, run_id = f"dag_{i % 10}", f"task_{i % 50}", f"scheduled__{i}"
    dag_run = DagRun(dag_id=dag_id, run_id=run_id, logical_date=now, data_interval_start=now,
                     data_interval_end=now, run_after=now, start_date=now, end_date=None, run_type="scheduled",
                     state="running", consumed_asset_events=[], partition_key=None)
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(), task_id=task_id, dag_id=dag_id, run_id=run_id, try_number=1, map_index=-1,
        dag_version_id=uuid.uuid4(), task=_task(dag_id, task_id), max_tries=1, start_date=now, state="running",
        queue="default", pool="default_pool", _ti_context_from_server=TIRunContext(dag_run=dag_run, max_tries=1))
    ti.get_template_context()  # the runner builds it at start-up, before any hook
    return ti


def measure(plugin: Any, tasks: int) -> list[float]:
    samples = []
    for i in range(tasks):
        ti = task_instance(i)  # not timed
        started = time.perf_counter()
        plugin.on_task_instance_running(None, ti)
        ti.state = "success"
        plugin.on_task_instance_success("running", ti)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick: Callable[[float], float] = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"tasks": len(samples), "p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(pick(0.99), 3), "max_ms": round(ordered[-1], 3)}


def openlineage(events: Path, in_thread: bool) -> Any:
    """The OpenLineage provider's listener, writing its events to ``events`` (one JSON a line)."""
    os.environ["AIRFLOW__OPENLINEAGE__DISABLED"] = "false"  # the test suite sets it true
    os.environ["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
        {"type": "file", "log_file_path": str(events), "append": True})
    os.environ["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "bench"
    os.environ["AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD"] = str(in_thread)
    from airflow.providers.openlineage import conf
    from airflow.providers.openlineage.plugins.listener import OpenLineageListener

    for option in (conf.is_disabled, conf.transport, conf.namespace, conf.execute_in_thread):
        option.cache_clear()  # read once per process: read again for this configuration
    if conf.is_disabled():
        raise SystemExit("OpenLineage is disabled in this environment: nothing would be measured")
    return OpenLineageListener()


def measure_openlineage(tmp: Path, in_thread: bool, tasks: int) -> dict[str, float]:
    events = tmp / f"openlineage-{'thread' if in_thread else 'fork'}.jsonl"
    listener = openlineage(events, in_thread)
    measure(listener, 20)  # warm-up: first client, first transport
    report = summary(measure(listener, tasks))
    written = events.read_text().splitlines() if events.exists() else []
    kinds = [json.loads(line)["eventType"] for line in written]
    if kinds.count("START") != tasks + 20 or kinds.count("COMPLETE") != tasks + 20:
        raise SystemExit(f"OpenLineage wrote {kinds.count('START')} START and {kinds.count('COMPLETE')} COMPLETE "
                         f"events for {tasks + 20} tasks: the figures would time failures, not emissions")
    report["event_bytes"] = round(sum(len(line) for line in written) / len(written))
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--v3-silent-tasks", type=int, default=4, help="V3 takes 10 s a task then")
    parser.add_argument("--ol-tasks", type=int, default=2000, help="OpenLineage tasks (each mode)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hooks-"))
    gateway = servers.start_pushgateway(tmp / "gw")
    report: dict[str, Any] = {}
    try:
        with servers.black_hole() as hole:
            for case, url in (("up", gateway.url), ("refusing", servers.refusing_url()), ("not answering", hole)):
                config = ListenerConfig(instance="bench", hostname="bench", spool_dir=tmp / f"spool-{case}",
                                        pushgateway_url=url)
                ours = BatchobsListener(config)
                measure(ours, 50)  # warm-up: first file open, first registry
                report[f"batchobs, gateway {case}"] = summary(measure(ours, args.tasks))
                closing = time.perf_counter()
                ours.close()
                report[f"batchobs, gateway {case}"]["exit_wait_s"] = round(time.perf_counter() - closing, 3)
                spooled = sum(len(f.read_bytes().splitlines()) for f in config.spool_dir.glob("*.jsonl"))
                if spooled != 2 * (args.tasks + 50):
                    raise SystemExit(f"batchobs spooled {spooled} events for {args.tasks + 50} tasks: the figures "
                                     "would time failures, not events")
                v3_tasks = args.tasks if case != "not answering" else args.v3_silent_tasks
                report[f"article V3, gateway {case}"] = summary(measure(ArticleV3Plugin(url), v3_tasks))
                if case == "up":  # no gateway of its own: measured once, between the same two
                    for in_thread in (False, True):
                        mode = "execute_in_thread" if in_thread else "fork per hook (default)"
                        report[f"OpenLineage, {mode}"] = measure_openlineage(tmp, in_thread, args.ol_tasks)
    finally:
        gateway.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for case in ("up", "refusing", "not answering"):
        ours, v3 = report[f"batchobs, gateway {case}"], report[f"article V3, gateway {case}"]
        report[f"p99 ratio V3/batchobs, gateway {case}"] = round(v3["p99_ms"] / ours["p99_ms"], 1)
    for mode in ("fork per hook (default)", "execute_in_thread"):
        ratio = report[f"OpenLineage, {mode}"]["p99_ms"] / report["batchobs, gateway up"]["p99_ms"]
        report[f"p99 ratio OpenLineage ({mode})/batchobs, gateway up"] = round(ratio, 1)
    save("hook_latency", report)


if __name__ == "__main__":
    main()
