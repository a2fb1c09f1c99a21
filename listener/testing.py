"""Run history of a known shape, built from the event contract.

Used where real Airflow runs would be too slow or not yet wired in: the demo's
first step, warehouse tests that need exact expected counts, and benchmarks.
Deterministic: the same arguments give the same events (and event ids).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from listener.contract import DAG_RUN, TASK_INSTANCE, Event

__all__ = ["BASE", "TASKS", "history"]

BASE = datetime(2026, 11, 1, tzinfo=timezone.utc)

# task_id -> tries that fail before the outcome, final state, map width
# "load" fails both of its tries on every third run.
TASKS = ("extract", "transform", "load", "report", "notify")


def history(runs: int, dag_id: str = "etl_orders", instance: str = "demo",
            start: datetime = BASE) -> Iterator[Event]:
    """Events for ``runs`` daily runs of a five-task DAG.

    Per run: ``extract`` succeeds; ``transform`` fails once and succeeds on
    retry; ``load`` succeeds, except every third run (r % 3 == 2) where both
    its tries fail; ``report`` is mapped over 3 items; ``notify`` is skipped.
    """
    for r in range(runs):
        logical = start + timedelta(days=r)
        run_id = f"scheduled__{logical.isoformat()}"
        base: dict[str, Any] = dict(instance=instance, dag_id=dag_id, run_id=run_id, hostname="worker-1",
                    run_type="scheduled", logical_date=logical)
        clock = logical + timedelta(minutes=1)
        yield Event(kind=DAG_RUN, state="running", emitted_at=clock, start_date=clock, **base)
        load_fails = r % 3 == 2
        plan: list[tuple[str, int, list[str]]] = [
            ("extract", -1, ["success"]),
            ("transform", -1, ["up_for_retry", "success"]),
            ("load", -1, ["up_for_retry", "failed"] if load_fails else ["success"]),
            *[("report", i, ["success"]) for i in range(3)],
        ]
        for task_id, map_index, outcomes in plan:
            for try_number, outcome in enumerate(outcomes, start=1):
                started, ended = clock, clock + timedelta(seconds=10 + try_number)
                task: dict[str, Any] = dict(base, task_id=task_id, map_index=map_index, try_number=try_number,
                            max_tries=len(outcomes) if task_id != "extract" else 1,
                            operator="PythonOperator", queue="default", pool="default_pool")
                yield Event(kind=TASK_INSTANCE, state="running", emitted_at=started,
                            start_date=started, previous_state="queued", **task)
                failed = outcome in ("failed", "up_for_retry")
                yield Event(
                    kind=TASK_INSTANCE, state=outcome, emitted_at=ended, start_date=started,
                    end_date=ended, duration_s=(ended - started).total_seconds(),
                    previous_state="running", error_type="ValueError" if failed else "",
                    error_message=f"{task_id} try {try_number} failed" if failed else "", **task,
                )
                clock = ended + timedelta(seconds=5)
        skipped: dict[str, Any] = dict(base, task_id="notify", try_number=1, operator="EmptyOperator")
        yield Event(kind=TASK_INSTANCE, state="skipped", emitted_at=clock, **skipped)
        yield Event(kind=DAG_RUN, state="failed" if load_fails else "success", emitted_at=clock,
                    start_date=logical + timedelta(minutes=1), end_date=clock,
                    duration_s=(clock - logical - timedelta(minutes=1)).total_seconds(), **base)
