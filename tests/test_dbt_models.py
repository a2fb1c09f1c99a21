"""The dbt project (dbt/) against the chosen ClickHouse: exact counts on a history of known
shape, then an incremental build after new, late and duplicate events that must equal a
full rebuild."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from listener.contract import TASK_RECONCILED, Event
from listener.testing import BASE, history
from warehouse.connection import ClickHouseSettings

from .runs import dbt, insert, killed_run

MARTS = ("int_task_tries", "fct_task_runs", "fct_dag_runs", "agg_task_failure_rate_daily",
         "agg_dag_failure_rate_daily", "flaky_tasks")


@pytest.fixture
def marts(admin: Any) -> Iterator[str]:
    names: list[str] = []

    def new() -> str:
        names.append(f"m_{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield new  # type: ignore[misc]
    for name in names:
        admin.command(f"DROP DATABASE IF EXISTS {name}")


def rows(client: Any, sql: str) -> list[tuple[Any, ...]]:
    return list(client.query(sql).result_rows)


def test_full_build_counts(database: ClickHouseSettings, marts: Any, tmp_path: Path) -> None:
    """history(6): 6 runs x 7 task instances; `load` fails both tries in runs 2 and 5;
    `transform` fails once then succeeds every run; plus one run whose task was killed."""
    client = database.client()
    insert(client, [*history(6), *killed_run()])
    target = marts()
    out = dbt(database, target, tmp_path, "build")
    assert "WARN=0 ERROR=0 SKIP=0" in out
    unit_tests = {line.split("::")[1].split()[0] for line in out.splitlines() if "::" in line and "PASS" in line}
    assert unit_tests == {"int_task_tries_one_row_per_try_duplicates_and_reconciliation",
                          "fct_task_runs_retry_then_success_and_never_ran",
                          "agg_task_failure_rate_daily_counts_outcomes",
                          "agg_dag_failure_rate_daily_first_try_means_no_retry",
                          "flaky_tasks_above_threshold_in_window"}

    counts = {m: rows(client, f"SELECT count() FROM {target}.{m}")[0][0] for m in MARTS}
    # tries: 4 runs x 8 + 2 runs x 9 (load's second try) + oom try 1 + publish try 0
    assert counts == {"int_task_tries": 52, "fct_task_runs": 44, "fct_dag_runs": 7,
                      "agg_task_failure_rate_daily": 32, "agg_dag_failure_rate_daily": 7, "flaky_tasks": 1}
    assert rows(client, f"""SELECT run_id, state, tasks_total, tasks_failed, tasks_retried, duration_s
                            FROM {target}.fct_dag_runs WHERE dag_id = 'etl_orders' ORDER BY run_id""") == [
        (f"scheduled__{(BASE + timedelta(days=r)).isoformat()}", "failed" if r % 3 == 2 else "success",
         7, int(r % 3 == 2), 1 + int(r % 3 == 2), 130.0 if r % 3 == 2 else 113.0) for r in range(6)]
    # the killed task: its running hook only, then the scheduler's record wins
    assert rows(client, f"""SELECT task_id, tries, final_state, final_state_reconciled, total_duration_s
                            FROM {target}.fct_task_runs WHERE dag_id = 'nightly' ORDER BY task_id""") == [
        ("oom", 1, "failed", True, 300.0), ("publish", 0, "upstream_failed", True, None)]
    # a retry-then-success is a success and a first-try failure, every day
    assert rows(client, f"""SELECT sum(runs), sum(failures), sum(first_try_successes), sum(retried_runs)
                            FROM {target}.agg_task_failure_rate_daily
                            WHERE task_id = 'transform'""") == [(6, 0, 0, 6)]
    assert rows(client, f"""SELECT run_date, runs, failures, failure_rate, retry_rate, duration_p95_s
                            FROM {target}.agg_task_failure_rate_daily
                            WHERE task_id = 'load' ORDER BY run_date LIMIT 3""") == [
        (date(2026, 11, 1), 1, 0, 0.0, 0.0, 11.0), (date(2026, 11, 2), 1, 0, 0.0, 0.0, 11.0),
        (date(2026, 11, 3), 1, 1, 1.0, 1.0, 23.0)]
    assert rows(client, f"""SELECT dag_id, sum(runs), sum(failures), sum(first_try_successes)
                            FROM {target}.agg_dag_failure_rate_daily GROUP BY dag_id ORDER BY dag_id""") == [
        ("etl_orders", 6, 2, 0), ("nightly", 1, 1, 0)]
    assert rows(client, f"SELECT dag_id, task_id, runs, recovered_runs, flaky_rate FROM {target}.flaky_tasks") == [
        ("etl_orders", "transform", 6, 6, 1.0)]


def test_incremental_build_equals_full_rebuild(database: ClickHouseSettings, marts: Any, admin: Any,
                                               tmp_path: Path) -> None:
    """After the first build: two new runs, a late event for an old run and a replay of a
    whole old run.  The incremental build (no lookback margin, so only runs with new
    events are recomputed) must give exactly what a full rebuild gives, counting nothing twice."""
    client = database.client()
    first = list(history(6))
    insert(client, first)
    incremental = marts()
    no_margin = "{lookback_seconds: 0}"
    dbt(database, incremental, tmp_path, "build", dbt_vars=no_margin)
    time.sleep(0.01)  # ingested_at has millisecond resolution: the next batch is strictly later

    old_run = f"scheduled__{(BASE + timedelta(days=1)).isoformat()}"
    extract_of_old_run = next(e for e in first if e.run_id == old_run and e.task_id == "extract"
                              and e.state == "success")
    late = Event(kind=TASK_RECONCILED, state="failed", emitted_at=extract_of_old_run.emitted_at,
                 instance="demo", dag_id="etl_orders", run_id=old_run, task_id="extract", try_number=1,
                 end_date=extract_of_old_run.end_date, duration_s=11.0)
    replayed = [e for e in first if e.run_id.startswith("scheduled__2026-11-04")]
    admin.command(f"SYSTEM STOP MERGES {database.database}.events")  # keep the replayed copies apart
    try:
        insert(client, [*history(2, start=BASE + timedelta(days=6)), late, *replayed])
        stored, distinct = rows(client, "SELECT count(), uniqExact(event_id) FROM events")[0]
        assert stored - distinct == len(replayed)  # the duplicates really are in the table
        dbt(database, incremental, tmp_path, "build", dbt_vars=no_margin)
    finally:
        admin.command(f"SYSTEM START MERGES {database.database}.events")

    full = marts()
    dbt(database, full, tmp_path, "build", "--full-refresh")
    for model in MARTS:
        a = rows(client, f"SELECT * FROM {incremental}.{model} ORDER BY ALL")
        b = rows(client, f"SELECT * FROM {full}.{model} ORDER BY ALL")
        assert a == b, model
    assert rows(client, f"SELECT count() FROM {incremental}.fct_dag_runs") == [(8,)]
    assert rows(client, f"SELECT count() FROM {incremental}.fct_task_runs") == [(8 * 7,)]
    assert rows(client, f"""SELECT final_state, final_state_reconciled FROM {incremental}.fct_task_runs
                            WHERE run_id = '{old_run}' AND task_id = 'extract'""") == [("failed", True)]
    assert rows(client, f"""SELECT runs, failures FROM {incremental}.agg_task_failure_rate_daily
                            WHERE run_date = '2026-11-02' AND task_id = 'extract'""") == [(1, 1)]
    assert rows(client, f"""SELECT sum(events) FROM {incremental}.int_task_tries""") == rows(
        client, "SELECT uniqExact(event_id) FROM events WHERE kind != 'dag_run'")


def test_source_declares_the_contract() -> None:
    """dbt's source for events lists exactly the contract's columns and types (plus ingested_at)."""
    import yaml

    from batchobs.transform import PROJECT_DIR
    from listener.contract import COLUMNS

    spec = yaml.safe_load((PROJECT_DIR / "models/staging/airflow/_airflow__sources.yml").read_text())
    (events,) = spec["sources"][0]["tables"]
    declared = {c["name"]: c["data_type"] for c in events["columns"]}
    assert declared == {**COLUMNS, "ingested_at": "DateTime64(3, 'UTC')"}
    assert list(declared)[: len(COLUMNS)] == list(COLUMNS)


def test_batchobs_dbt_connects_from_the_warehouse_url(database: ClickHouseSettings, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    """`batchobs dbt debug` reaches the warehouse named by BATCHOBS_CLICKHOUSE_URL (profile
    from the environment), and dbt's output never shows the password."""
    from batchobs import cli

    monkeypatch.setenv("BATCHOBS_HOME", str(tmp_path))
    monkeypatch.setenv("DBT_USE_COLORS", "false")
    monkeypatch.setenv("BATCHOBS_CLICKHOUSE_URL",
                       f"http://{database.username}:{database.password}@{database.host}:{database.port}/"
                       f"{database.database}")
    assert cli.main(["dbt", "debug"]) == 0
    out = capfd.readouterr().out
    assert "Connection test: [OK connection ok]" in out and f"schema: {database.database}" in out
    if database.password:
        assert database.password not in out
    monkeypatch.setenv("BATCHOBS_CLICKHOUSE_URL", "http://127.0.0.1:1/nowhere")
    assert cli.main(["dbt", "debug"]) != 0
