"""dbt-clickhouse (driver: http) works unchanged against the chosen ClickHouse."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from listener.contract import encode
from warehouse.connection import ClickHouseSettings
from warehouse.synthetic import BASE, history

PROJECT = Path(__file__).parent / "dbt_project"
DBT = str(Path(sys.executable).with_name("dbt"))


@pytest.fixture
def project(tmp_path: Path, database: ClickHouseSettings, admin: Any) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the test dbt project pointed at a fresh target database."""
    target = f"dbt_{uuid.uuid4().hex[:10]}"
    shutil.copytree(PROJECT, tmp_path / "proj")
    env = dict(os.environ, DBT_CH_HOST=database.host, DBT_CH_PORT=str(database.port),
               DBT_CH_USER=database.username, DBT_CH_PASSWORD=database.password,
               DBT_CH_SCHEMA=target, DBT_CH_SOURCE_SCHEMA=database.database,
               DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    yield tmp_path / "proj", env
    admin.command(f"DROP DATABASE IF EXISTS {target}")


def dbt(project: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([DBT, *args, "--project-dir", str(project), "--profiles-dir", str(project)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=project)
    assert 0 == proc.returncode, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout


def test_debug_and_build_twice(project: tuple[Path, dict[str, str]], database: ClickHouseSettings) -> None:
    """dbt debug passes; build makes a table, a view and an incremental model, twice."""
    path, env = project
    client = database.client()
    dbt(path, env, "debug")

    client.raw_insert("events", insert_block=b"".join(encode(e) for e in history(3)), fmt="JSONEachRow")
    out = dbt(path, env, "build")
    assert "PASS=6" in out  # 3 models and 3 data tests
    target = env["DBT_CH_SCHEMA"]
    first = client.query(f"SELECT count() FROM {target}.events_seen").result_rows[0][0]
    assert 53 == first  # 3 runs x (2 dag_run + 16 task events) + 3 skipped - see synthetic.history
    # run 2 of 3 is the one whose `load` fails both tries
    assert [("load", 2)] == client.query(f"SELECT task_id, tries FROM {target}.failed_tasks").result_rows

    later = history(2, start=BASE + timedelta(days=10))
    client.raw_insert("events", insert_block=b"".join(encode(e) for e in later), fmt="JSONEachRow")
    dbt(path, env, "build")
    total = client.query("SELECT uniqExact(event_id) FROM events").result_rows[0][0]
    assert (total, total) == client.query(
        f"SELECT count(), uniqExact(event_id) FROM {target}.events_seen").result_rows[0]
    assert total > first
    assert 5 * 7 == client.query(f"SELECT count() FROM {target}.task_outcomes").result_rows[0][0]
