"""Sample DAG: every outcome batchobs must record.

succeed; fail once then succeed on retry; fail every try; a task mapped over 3
items; a skipped task; a task that records custom per-run metrics.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from listener import record_metric


@dag(
    dag_id="batchobs_example",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
    tags=["batchobs"],
)
def batchobs_example() -> None:
    @task
    def succeed() -> str:
        return "ok"

    @task
    def flaky() -> str:
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("first try fails: password=hunter2 postgresql://etl:hunter2@db/x")
        return "recovered"

    @task(retries=1)
    def broken() -> None:
        raise ValueError("always fails")

    @task
    def shard(item: int) -> int:
        return item * 2

    @task
    def skipped() -> None:
        raise AirflowSkipException("nothing to do today")

    @task
    def measured() -> None:
        record_metric("rows_processed", 1234, unit="rows", table="orders")
        record_metric("null_ratio", 0.02, unit="ratio", column="customer_id")

    succeed()
    flaky()
    broken()
    shard.expand(item=[1, 2, 3])
    skipped()
    measured()


example_dag = batchobs_example()
