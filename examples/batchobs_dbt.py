"""batchobs observing its own upkeep: ``batchobs dbt build`` every 15 minutes.

The build turns the ingested events into the run-level facts and failure-rate rollups. Its own
runs are events too, so a failing dbt build shows up in the same fleet view and audit as any job.
The command is ``$BATCHOBS_DBT_CLI`` (default ``batchobs``): the compose stack's Airflow image
keeps dbt in a virtualenv of its own; the warehouse comes from ``BATCHOBS_CLICKHOUSE_URL``.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import dag


@dag(
    dag_id="batchobs_dbt_build",
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["batchobs"],
)
def batchobs_dbt_build() -> None:
    BashOperator(
        task_id="dbt_build",
        bash_command=f"{shlex.quote(os.environ.get('BATCHOBS_DBT_CLI') or 'batchobs')} dbt build",
        execution_timeout=timedelta(minutes=30),
    )


dbt_build_dag = batchobs_dbt_build()
