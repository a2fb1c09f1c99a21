"""Airflow -> listener -> spool -> ingester -> ClickHouse, checked against Airflow's own metadata DB."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ingest.service import IngestConfig, Ingester
from warehouse.connection import ClickHouseSettings

from .servers import EXAMPLES, airflow_env, migrate_airflow, run_dag_test

pytestmark = pytest.mark.slow


def test_warehouse_rows_match_airflow_metadata(database: ClickHouseSettings, tmp_path: Path) -> None:
    """Each task instance's final state and try number in ClickHouse equal the metadata DB's."""
    home = tmp_path / "airflow"
    migrate_airflow(home)
    spool = tmp_path / "spool"
    run = run_dag_test(EXAMPLES / "batchobs_example.py", airflow_env(home, spool), runs=2)
    assert ["failed", "failed"] == run["states"]

    Ingester(IngestConfig(spool_dir=spool, state_dir=tmp_path / "state"),
             database.client(autogenerate_session_id=False)).run(once=True)

    with sqlite3.connect(home / "airflow.db") as db:
        airflow: set[tuple[Any, ...]] = set(db.execute(
            "SELECT run_id, task_id, map_index, state, try_number FROM task_instance WHERE dag_id = ?",
            ("batchobs_example",)))
    warehouse = {
        tuple(row) for row in database.client().query(
            """
            SELECT run_id, task_id, map_index,
                   argMax(state, (try_number, kind = 'task_reconciled', emitted_at)) AS final_state,
                   max(try_number)
            FROM events FINAL
            WHERE dag_id = 'batchobs_example' AND kind IN ('task_instance', 'task_reconciled')
              AND state != 'running'
            GROUP BY run_id, task_id, map_index
            """).result_rows
    }
    assert 16 == len(airflow)  # 8 task instances per run, 2 runs
    assert airflow == warehouse
