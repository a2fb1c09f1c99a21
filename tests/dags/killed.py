"""A task that is killed with SIGKILL (no task hook can fire), beside one that succeeds."""

from __future__ import annotations

import os
import signal
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="killed", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def killed() -> None:
    @task
    def fine() -> str:
        return "ok"

    @task(retries=0)
    def oom_killed() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    fine() >> oom_killed()


killed_dag = killed()
