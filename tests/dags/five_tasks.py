"""Five quick tasks in a chain: for cardinality and timing tests."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="five_tasks", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def five_tasks() -> None:
    @task
    def step(n: int) -> int:
        return n

    a, b, c, d, e = (step.override(task_id=f"step_{i}")(i) for i in range(5))
    a >> b >> c >> d >> e


five_tasks_dag = five_tasks()
