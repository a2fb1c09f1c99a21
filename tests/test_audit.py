"""``batchobs audit``: each question's exact rows, from the dbt marts and from raw events."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from batchobs import cli
from batchobs.audit import AuditError, ask, marts_built, render
from listener.testing import history
from warehouse.connection import ClickHouseSettings
from warehouse.migrate import apply

from .runs import dbt, insert, killed_run, metric

RUN = "scheduled__2026-11-0{}T00:00:00+00:00".format
WEEK = {"since": "2026-11-01", "until": "2026-11-07"}  # run dates 1 to 6 November


@pytest.fixture(scope="module")
def built(clickhouse: ClickHouseSettings, admin: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClickHouseSettings, str]]:
    """history(6) + a killed run + a metric, with the models built into a second database."""
    name, marts = f"a_{uuid.uuid4().hex[:10]}", f"am_{uuid.uuid4().hex[:10]}"
    apply(admin, name, retention_days=400)
    settings = ClickHouseSettings(clickhouse.host, clickhouse.port, name, clickhouse.username,
                                  clickhouse.password, clickhouse.secure)
    insert(settings.client(), [*history(6), *killed_run(), metric(0)])
    dbt(settings, marts, tmp_path_factory.mktemp("dbt"), "build")
    yield settings, marts
    admin.command(f"DROP DATABASE IF EXISTS {name}")
    admin.command(f"DROP DATABASE IF EXISTS {marts}")


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


EXPECTED: dict[str, tuple[dict[str, Any], list[tuple[Any, ...]]]] = {
    "runs": ({"dag_id": "etl_orders", "since": "2026-11-01", "until": "2026-11-04"}, [
        (RUN(1), "scheduled", "success", dt("2026-11-01 00:01"), dt("2026-11-01 00:02:53"), 113.0, 7, 0, 1),
        (RUN(2), "scheduled", "success", dt("2026-11-02 00:01"), dt("2026-11-02 00:02:53"), 113.0, 7, 0, 1),
        (RUN(3), "scheduled", "failed", dt("2026-11-03 00:01"), dt("2026-11-03 00:03:10"), 130.0, 7, 1, 2),
    ]),
    "timeline": ({"dag_id": "etl_orders", "run_id": RUN(3)}, [
        ("extract", -1, 1, "success", dt("2026-11-03 00:01:00"), dt("2026-11-03 00:01:11"), 11.0, "worker-1", "", ""),
        ("transform", -1, 1, "up_for_retry", dt("2026-11-03 00:01:16"), dt("2026-11-03 00:01:27"), 11.0,
         "worker-1", "ValueError", "transform try 1 failed"),
        ("transform", -1, 2, "success", dt("2026-11-03 00:01:32"), dt("2026-11-03 00:01:44"), 12.0, "worker-1", "", ""),
        ("load", -1, 1, "up_for_retry", dt("2026-11-03 00:01:49"), dt("2026-11-03 00:02:00"), 11.0,
         "worker-1", "ValueError", "load try 1 failed"),
        ("load", -1, 2, "failed", dt("2026-11-03 00:02:05"), dt("2026-11-03 00:02:17"), 12.0,
         "worker-1", "ValueError", "load try 2 failed"),
        ("report", 0, 1, "success", dt("2026-11-03 00:02:22"), dt("2026-11-03 00:02:33"), 11.0, "worker-1", "", ""),
        ("report", 1, 1, "success", dt("2026-11-03 00:02:38"), dt("2026-11-03 00:02:49"), 11.0, "worker-1", "", ""),
        ("report", 2, 1, "success", dt("2026-11-03 00:02:54"), dt("2026-11-03 00:03:05"), 11.0, "worker-1", "", ""),
        ("notify", -1, 1, "skipped", None, None, None, "worker-1", "", ""),
    ]),
    "failures": (WEEK, [
        ("etl_orders", RUN(3), "load", -1, 2, dt("2026-11-03 00:01:49"), dt("2026-11-03 00:02:17"),
         "ValueError", "load try 2 failed"),
        ("nightly", "manual__oom", "oom", -1, 1, dt("2026-11-04 06:00"), dt("2026-11-04 06:05"), "", ""),
        ("etl_orders", RUN(6), "load", -1, 2, dt("2026-11-06 00:01:49"), dt("2026-11-06 00:02:17"),
         "ValueError", "load try 2 failed"),
    ]),
    "flaky": (WEEK, [("etl_orders", "transform", 6, 6, 1.0)]),
    "slowest": (WEEK, [
        ("etl_orders", RUN(3), "load", -1, "failed", 23.0, 11.0, 2.09),
        ("etl_orders", RUN(6), "load", -1, "failed", 23.0, 11.0, 2.09),
    ]),
    "metrics": ({"dag_id": "etl_orders", "run_id": RUN(1)}, [
        ("load", -1, 1, "rows_loaded", 1234.0, "rows", {"table": "orders"}, dt("2026-11-01 00:02")),
    ]),
}


@pytest.mark.parametrize("source", ["marts", "events"])
@pytest.mark.parametrize("question", sorted(EXPECTED))
def test_question_exact_rows(built: tuple[ClickHouseSettings, str], question: str, source: str) -> None:
    settings, marts = built
    params, expected = EXPECTED[question]
    answer = ask(settings.client(), question, params, marts, source)
    assert (answer.source, answer.rows) == (source, expected)


def test_auto_reads_marts_once_built(built: tuple[ClickHouseSettings, str]) -> None:
    settings, marts = built
    client = settings.client()
    assert marts_built(client, marts) and not marts_built(client, settings.database)
    assert ask(client, "flaky", WEEK, marts).source == "marts"
    assert ask(client, "flaky", WEEK, settings.database).source == "events"


def test_parameters_are_bound_not_formatted(built: tuple[ClickHouseSettings, str]) -> None:
    settings, marts = built
    hostile = "etl_orders' OR '1'='1"
    for source in ("marts", "events"):
        assert ask(settings.client(), "runs", {**WEEK, "dag_id": hostile}, marts, source).rows == []
        assert ask(settings.client(), "failures", {**WEEK, "dag_id": hostile}, marts, source).rows == []


def test_bad_parameters_are_clear_errors(built: tuple[ClickHouseSettings, str]) -> None:
    settings, marts = built
    client = settings.client()
    with pytest.raises(AuditError, match="--run-id is required"):
        ask(client, "timeline", {"dag_id": "etl_orders"}, marts)
    with pytest.raises(AuditError, match="--since: 'last week' is not a valid Date"):
        ask(client, "failures", {"since": "last week"}, marts)
    with pytest.raises(AuditError, match="--since must be before --until"):
        ask(client, "failures", {"since": "2026-11-07", "until": "2026-11-01"}, marts)
    with pytest.raises(AuditError, match="--min-runs"):
        ask(client, "flaky", {**WEEK, "min_runs": "-1"}, marts)
    with pytest.raises(AuditError, match="unknown question"):
        ask(client, "everything", {}, marts)


def test_cli_json_and_csv(built: tuple[ClickHouseSettings, str], monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    settings, marts = built
    auth = f"{quote(settings.username)}:{quote(settings.password)}@"
    monkeypatch.setenv("BATCHOBS_CLICKHOUSE_URL", f"http://{auth}{settings.host}:{settings.port}/{settings.database}")
    monkeypatch.setenv("BATCHOBS_DBT_SCHEMA", marts)
    assert cli.main(["audit", "failures", "--since", "2026-11-01", "--until", "2026-11-07",
                     "--dag-id", "nightly", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{
        "dag_id": "nightly", "run_id": "manual__oom", "task_id": "oom", "map_index": -1, "tries": 1,
        "started_at": "2026-11-04T06:00:00+00:00", "ended_at": "2026-11-04T06:05:00+00:00",
        "error_type": "", "error_message": ""}]
    assert cli.main(["audit", "metrics", "--dag-id", "etl_orders", "--run-id", RUN(1), "--format", "csv"]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out))) == [
        ["task_id", "map_index", "try_number", "metric_name", "metric_value", "metric_unit", "attrs", "emitted_at"],
        ["load", "-1", "1", "rows_loaded", "1234.0", "rows", '{"table": "orders"}', "2026-11-01T00:02:00+00:00"]]
    assert cli.main(["audit", "runs", "--dag-id", "etl_orders", "--since", "2026-11-07", "--until", "2026-11-01"]) == 2
    assert "--since must be before --until" in capsys.readouterr().err


def test_table_output_names_the_source(tmp_path: Path) -> None:
    from batchobs.audit import Answer

    out = io.StringIO()
    render(Answer("flaky", "events", ("dag_id", "flaky_rate"), [("etl_orders", 1.0)]), "table", out)
    text = out.getvalue()
    assert "flaky (from events)" in text and "etl_orders" in text and "1.0" in text
