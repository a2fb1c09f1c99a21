"""Run histories of known shape for the dbt and audit tests, and a dbt runner for them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from batchobs.transform import run_dbt
from listener.contract import DAG_RUN, TASK_INSTANCE, TASK_METRIC, TASK_RECONCILED, Event, encode
from listener.testing import BASE
from warehouse.connection import ClickHouseSettings

KILLED_AT = datetime(2026, 11, 4, 6, tzinfo=timezone.utc)


def insert(client: Any, events: Iterable[Event]) -> None:
    client.raw_insert("events", insert_block=b"".join(encode(e) for e in events), fmt="JSONEachRow")


def killed_run() -> list[Event]:
    """DAG ``nightly``, one run: task ``oom`` was SIGKILLed in try 1 (only its running hook
    fired); the scheduler's reconciliation reports it failed, and ``publish`` upstream_failed."""
    run: dict[str, Any] = dict(instance="demo", dag_id="nightly", run_id="manual__oom", run_type="manual")
    start, end = KILLED_AT, KILLED_AT + timedelta(minutes=5)
    oom: dict[str, Any] = dict(run, task_id="oom", try_number=1, max_tries=1, start_date=start)
    return [
        Event(kind=DAG_RUN, state="running", emitted_at=start, start_date=start, **run),
        Event(kind=TASK_INSTANCE, state="running", emitted_at=start, previous_state="queued",
              hostname="worker-2", **oom),
        Event(kind=TASK_RECONCILED, state="failed", emitted_at=end, end_date=end, duration_s=300.0,
              attrs={"recorded_by": "scheduler"}, **oom),
        Event(kind=TASK_RECONCILED, state="upstream_failed", emitted_at=end, task_id="publish",
              attrs={"recorded_by": "scheduler"}, **run),
        Event(kind=DAG_RUN, state="failed", emitted_at=end, start_date=start, end_date=end,
              duration_s=300.0, **run),
    ]


def metric(run_index: int = 0) -> Event:
    """A custom metric recorded by ``load`` in run ``run_index`` of ``synthetic.history``."""
    logical = BASE + timedelta(days=run_index)
    return Event(kind=TASK_METRIC, emitted_at=logical + timedelta(minutes=2), instance="demo",
                 dag_id="etl_orders", run_id=f"scheduled__{logical.isoformat()}", task_id="load",
                 try_number=1, metric_name="rows_loaded", metric_value=1234.0, metric_unit="rows",
                 attrs={"table": "orders"})


def dbt(settings: ClickHouseSettings, marts: str, home: Path, *args: str, dbt_vars: str | None = None) -> str:
    """``dbt ARGS`` on the project, reading ``settings.database`` and building into ``marts``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHOBS_", "DBT_"))}
    env.update(BATCHOBS_HOME=str(home), BATCHOBS_DBT_SCHEMA=marts)
    done = run_dbt(list(args), settings, env=env, capture=True, vars_yaml=dbt_vars)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    return done.stdout
