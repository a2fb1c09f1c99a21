"""A DAG whose ids contain dots: a dotted dag_id and a TaskGroup (task ids ``group.task``).

Positional StatsD globs split such names wrongly; the StatsD capture test runs it.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import TaskGroup, dag, task


# Scheduled (not triggered) so that the scheduler emits dagrun.schedule_delay; unpaused at creation.
@dag(dag_id="team.nightly", schedule="@daily", start_date=datetime(2026, 1, 1), catchup=False)
def team_nightly() -> None:
    @task
    def extract() -> int:
        return 1

    @task(retries=0)
    def fails() -> None:
        raise RuntimeError("fails on purpose: a failed task's metrics")

    with TaskGroup("load"):
        first = extract.override(task_id="orders")()
        second = extract.override(task_id="customers")()
        first >> second
    fails()


team_nightly_dag = team_nightly()
