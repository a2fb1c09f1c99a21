"""Maintenance DAG: prune the Pushgateway groups of DAGs and tasks that no longer exist.

The listener keeps each task's latest state in the Pushgateway, so a DAG or task deleted from
Airflow would stay on the Fleet dashboard (and a failed one would alert) forever.  This DAG asks
Airflow's own DagBag which DAGs and tasks the DAGs folder defines, and runs
``batchobs gateway prune`` with that list.  DAG files that fail to import stop the prune (their
DAGs are not deleted, only broken).

Dry run by default: read the task log, then trigger with ``{"apply": true}`` (or change the
default below) to delete.  Uses the same BATCHOBS_PUSHGATEWAY_URL, BATCHOBS_INSTANCE and
BATCHOBS_JOB as the listener.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="batchobs_gateway_prune",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "apply": Param(False, type="boolean", description="delete the groups (default: only list them)"),
        "max_age_days": Param(None, type=["null", "number"],
                              description="also prune groups not pushed for this many days"),
    },
    tags=["batchobs"],
)
def batchobs_gateway_prune() -> None:
    @task
    def prune() -> list[str]:
        from pathlib import Path

        from airflow.configuration import conf

        from listener.config import ListenerConfig
        from batchobs.gateway import known_from_dags_folder, prune

        params = get_current_context()["params"]
        listener = ListenerConfig.from_env()
        if not listener.pushgateway_url:
            raise ValueError("BATCHOBS_PUSHGATEWAY_URL is not set: there is no Pushgateway to prune")
        known = known_from_dags_folder(Path(conf.get("core", "dags_folder")))
        pruned = prune(listener.pushgateway_url, job=listener.job, instance=listener.instance, known=known,
                       max_age_days=params["max_age_days"], apply=bool(params["apply"]))
        lines = [f"{'deleted' if p.deleted else 'would delete'}: {p.group.describe()} ({p.reason})"
                 for p in pruned]
        for line in lines:
            print(line)
        return lines

    prune()


maintenance_dag = batchobs_gateway_prune()
