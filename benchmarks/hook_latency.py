"""Hook time per task (running + terminal hook): batchobs vs. the article's V3 plugin.

The V3 plugin is rebuilt here from the article ("Building the Stack", part 4): a
fresh CollectorRegistry per hook and a synchronous ``pushadd_to_gateway`` with a
5 s timeout, on the task's critical path.  batchobs appends the event to the
spool and hands the gauges to its background pusher.

Three gateway conditions: up (a real Pushgateway on loopback), refusing (a port
nothing listens on) and not answering (accepts, never replies).  The task
instance is a stand-in carrying the attributes a RuntimeTaskInstance has; what
is timed is the hook code, not Airflow's.

Usage: python benchmarks/hook_latency.py [--tasks 2000] [--v3-silent-tasks 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def task_instance(i: int) -> Any:
    now = datetime.now(timezone.utc)
    dag_run = SimpleNamespace(run_type="scheduled", logical_date=now, data_interval_start=now,
                              data_interval_end=now)
    return SimpleNamespace(
        dag_id=f"dag_{i % 10}", run_id=f"scheduled__{i}", task_id=f"task_{i % 50}", map_index=-1,
        try_number=1, max_tries=1, queue="default", pool="default_pool", start_date=now, end_date=None,
        state="running", task=SimpleNamespace(task_type="PythonOperator"),
        _ti_context_from_server=SimpleNamespace(dag_run=dag_run, max_tries=1),
    )


def measure(plugin: Any, tasks: int) -> list[float]:
    samples = []
    for i in range(tasks):
        ti = task_instance(i)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--v3-silent-tasks", type=int, default=4, help="V3 takes 10 s a task then")
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
                v3_tasks = args.tasks if case != "not answering" else args.v3_silent_tasks
                report[f"article V3, gateway {case}"] = summary(measure(ArticleV3Plugin(url), v3_tasks))
    finally:
        gateway.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for case in ("up", "refusing", "not answering"):
        ours, v3 = report[f"batchobs, gateway {case}"], report[f"article V3, gateway {case}"]
        report[f"p99 ratio V3/batchobs, gateway {case}"] = round(v3["p99_ms"] / ours["p99_ms"], 1)
    save("hook_latency", report)


if __name__ == "__main__":
    main()
