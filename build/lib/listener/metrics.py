"""Custom per-run metrics from task code: rows processed, bytes, data-quality results.

They land as ``task_metric`` events carrying the run's context (dag, run, task,
map index, try), so they are per-run history in ClickHouse and never Prometheus
labels.
"""

from __future__ import annotations

import logging
import math
from typing import Any

__all__ = ["record_metric"]

log = logging.getLogger("batchobs.listener")


def record_metric(name: str, value: float, unit: str = "", **attrs: str) -> None:
    """Record a metric of the running task try.

    Call it from inside a task.  Bad arguments raise ValueError; a failure to
    write (a full disk, say) is logged and does not fail the task.
    """
    if not name:
        raise ValueError("record_metric: name must not be empty")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"record_metric: value must be a finite number, got {value!r}")
    bad = [k for k, v in attrs.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"record_metric: attribute {bad[0]!r} must be a string")
    from airflow.sdk import get_current_context

    from .plugin import get_listener

    listener = get_listener()
    if listener is None:
        return
    ti: Any = get_current_context()["ti"]
    try:
        listener.record_metric(ti, name, value, unit, dict(attrs))
    except OSError as exc:
        log.warning("batchobs: metric %r not recorded (%s); no impact on the task", name, exc)
