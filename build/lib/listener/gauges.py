"""Fleet-state gauges: one Pushgateway group per task and per DAG, never per run.

Grouping keys: ``{job, dag_id, task_id, instance}`` for a task and
``{job, dag_id, instance}`` for a DAG.  ``run_id``, ``try_number`` and
``map_index`` are never labels, so the number of series is bounded by the number
of tasks however many runs there are.

``task_status`` values: 1 success, -1 failed, 0 running, 0 up_for_retry (the task
will run again: not an alert; ``task_last_try_number`` shows the retry), 2 skipped.
Mapped task instances share their task's slot: the most recent state change of
any map index wins and ``task_last_map_index`` says which one it was; per-index
history is in ClickHouse.  ``dag_run_status`` shows a failed run of a mapped task.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

__all__ = ["DAG_RUN_STATUS", "TASK_STATUS", "GroupKey", "dag_run_gauges", "task_gauges"]

TASK_STATUS = {"running": 0, "success": 1, "failed": -1, "up_for_retry": 0, "skipped": 2}
DAG_RUN_STATUS = {"running": 0, "success": 1, "failed": -1}


@dataclass(frozen=True)
class GroupKey:
    """A Pushgateway group: the job plus its grouping labels."""

    job: str
    labels: tuple[tuple[str, str], ...]

    @classmethod
    def task(cls, job: str, dag_id: str, task_id: str, instance: str) -> GroupKey:
        return cls(job, (("dag_id", dag_id), ("task_id", task_id), ("instance", instance)))

    @classmethod
    def dag(cls, job: str, dag_id: str, instance: str) -> GroupKey:
        return cls(job, (("dag_id", dag_id), ("instance", instance)))


def _gauge(registry: CollectorRegistry, name: str, doc: str, value: float) -> None:
    Gauge(name, doc, registry=registry).set(value)


def task_gauges(state: str, try_number: int, map_index: int, duration_s: float | None,
                end_ts: float | None) -> CollectorRegistry:
    """The gauges one task state change sets; untouched gauges keep their last value."""
    registry = CollectorRegistry()
    _gauge(registry, "task_status", "Latest state of the task: 1 success, -1 failed, 0 running or "
           "up_for_retry, 2 skipped", TASK_STATUS[state])
    _gauge(registry, "task_last_try_number", "Try number of the latest state change", try_number)
    _gauge(registry, "task_last_map_index", "Map index of the latest state change (-1: not mapped)",
           map_index)
    if duration_s is not None:
        _gauge(registry, "task_last_duration_seconds", "Duration of the latest finished try", duration_s)
    if end_ts is not None:
        _gauge(registry, "task_last_end_timestamp_seconds", "Unix time the latest try ended", end_ts)
    return registry


def dag_run_gauges(state: str, duration_s: float | None, end_ts: float | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    _gauge(registry, "dag_run_status", "Latest DAG run state: 1 success, -1 failed, 0 running",
           DAG_RUN_STATUS[state])
    if duration_s is not None:
        _gauge(registry, "dag_run_last_duration_seconds", "Duration of the latest finished run", duration_s)
    if end_ts is not None:
        _gauge(registry, "dag_run_last_end_timestamp_seconds", "Unix time the latest run ended", end_ts)
    return registry
