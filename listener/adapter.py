"""Plain values out of Airflow objects, for events and gauges.

Works on what each hook receives in Airflow 3.0 to 3.3: a ``RuntimeTaskInstance``
in the task's own process (no duration, operator, queued_dttm: derived here), an
ORM ``TaskInstance`` in the API server (manual state changes) and an ORM
``DagRun`` in the scheduler; and in Airflow 2.11, an ORM ``TaskInstance`` in the
task's own process.  Every attribute is read defensively: a missing one becomes
"unknown", never an error.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

__all__ = ["dag_run_fields", "error_fields", "state_name", "task_fields"]


def state_name(state: Any) -> str:
    if state is None:
        return ""
    return str(getattr(state, "value", state))


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    try:
        value = getattr(obj, name, default)
    except Exception:  # noqa: BLE001 - lazy ORM attributes can raise (detached instance)
        return default
    return default if value is None else value


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _dag_run_of(ti: Any) -> Any:
    context = _attr(ti, "_ti_context_from_server")
    if context is not None:
        return _attr(context, "dag_run")
    return _attr(ti, "dag_run")


def _timing(obj: Any, state: str, now: datetime) -> dict[str, Any]:
    """start_date, end_date and duration_s of a task try or a DAG run at a state change."""
    start = _aware(_attr(obj, "start_date"))
    end = _aware(_attr(obj, "end_date"))
    if state == "running":
        return {"start_date": start, "end_date": None, "duration_s": None}
    end = end or now  # the end hooks fire before Airflow records end_date
    duration = (end - start).total_seconds() if start else None
    return {"start_date": start, "end_date": end,
            "duration_s": max(0.0, duration) if duration is not None else None}


def _run_context(dag_run: Any) -> dict[str, Any]:
    return {
        "run_type": state_name(_attr(dag_run, "run_type")),
        "logical_date": _aware(_attr(dag_run, "logical_date")),
        "data_interval_start": _aware(_attr(dag_run, "data_interval_start")),
        "data_interval_end": _aware(_attr(dag_run, "data_interval_end")),
    }


def task_fields(ti: Any, state: str, previous_state: Any, now: datetime) -> dict[str, Any]:
    """Event fields of a task instance at a state change."""
    task = _attr(ti, "task")
    context = _attr(ti, "_ti_context_from_server")
    map_index = _attr(ti, "map_index", -1)
    return {
        "dag_id": str(ti.dag_id),
        "run_id": str(ti.run_id),
        "task_id": str(ti.task_id),
        "map_index": int(map_index) if map_index is not None else -1,
        "try_number": int(_attr(ti, "try_number", 0)),
        "max_tries": int(_attr(context, "max_tries", _attr(ti, "max_tries", 0))),
        "previous_state": state_name(previous_state),
        "operator": str(_attr(task, "task_type", _attr(ti, "operator", ""))),
        "queue": str(_attr(ti, "queue", _attr(task, "queue", ""))),
        "pool": str(_attr(ti, "pool", _attr(task, "pool", ""))),
        "queued_at": _aware(_attr(ti, "queued_dttm")),
        **_run_context(_dag_run_of(ti)),
        **_timing(ti, state, now),
    }


def dag_run_fields(dag_run: Any, state: str, now: datetime) -> dict[str, Any]:
    return {
        "dag_id": str(dag_run.dag_id),
        "run_id": str(dag_run.run_id),
        "queued_at": _aware(_attr(dag_run, "queued_at")),
        **_run_context(dag_run),
        **_timing(dag_run, state, now),
    }


def error_fields(error: Any) -> dict[str, str]:
    """error_type and error_message (unscrubbed: the writer scrubs and bounds it)."""
    if error is None:
        return {"error_type": "", "error_message": ""}
    if isinstance(error, BaseException):
        return {"error_type": type(error).__name__, "error_message": str(error)}
    return {"error_type": "", "error_message": str(error)}
