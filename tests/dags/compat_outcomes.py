"""Every outcome the listener records, written for Airflow 2.11 and 3.x alike.

succeed; fail once then succeed on retry; fail every try; a task mapped over 3
items; a skipped task.  Airflow 3 has ``airflow.sdk``; 2.x the older modules.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

try:
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task  # type: ignore[no-redef]
from airflow.exceptions import AirflowSkipException


@dag(
    dag_id="compat_outcomes",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
)
def compat_outcomes() -> None:
    @task
    def succeed() -> str:
        return "ok"

    @task
    def flaky(**context: Any) -> str:
        if context["ti"].try_number == 1:
            raise RuntimeError("first try fails")
        return "recovered"

    @task
    def broken() -> None:
        raise ValueError("always fails")

    @task
    def shard(item: int) -> int:
        return item * 2

    @task
    def skipped() -> None:
        raise AirflowSkipException("nothing to do")

    succeed()
    flaky()
    broken()
    shard.expand(item=[1, 2, 3])
    skipped()


compat_outcomes_dag = compat_outcomes()
