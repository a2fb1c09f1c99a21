"""Every dashboard query, run as Grafana would send it, against the real backends; the alerts on
the live Prometheus.  No Grafana binary runs here: variables and the ClickHouse plugin's macros are
expanded by tests/grafana_expand.py, with each board's default time range."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from warehouse.connection import ClickHouseSettings

from . import dashboards, grafana_stack, servers
from .grafana_expand import ALL, Scope, TimeRange, Variable, clickhouse_sql, interval_ms, promql
from .grafana_stack import EXAMPLE_DAG, HISTORY_DAG, INSTANCE, Stack, prom_get

pytestmark = pytest.mark.slow

BOARDS = dashboards.load()
TARGETS = dashboards.targets()
VARIABLES = [(uid, v["name"]) for uid, board in BOARDS.items() for v in dashboards.query_variables(board)]
RULES = {rule["alert"]: rule for group in yaml.safe_load(
    (dashboards.ROOT / "prometheus/rules/batchobs.yml").read_text())["groups"]
    for rule in group["rules"] if "alert" in rule}

# Single-value variables take these values when their query returns them (else the first value);
# multi-value variables keep their default (All).
PREFERRED = {
    "batchobs-fleet": {"instance": INSTANCE, "dag_id": EXAMPLE_DAG},
    "batchobs-history": {"dag_id": HISTORY_DAG},
    "batchobs-run-detail": {"dag_id": EXAMPLE_DAG},
}
# Panels whose query may rightly return nothing on this data, and why.
MAY_BE_EMPTY = {
    "batchobs-fleet:Stale tasks:A": "no task is stale minutes after its run",
    "batchobs-fleet:Pushes failing:A": "no push failed",
}
# Fleet's StatsD row reads Airflow's own metrics, which only statsd-exporter exposes; this stack has
# none (its Prometheus leaves that job out), so these queries run (valid PromQL, variables expanded)
# and return nothing. tests/test_statsd_capture.py runs them on series mapped from a real Airflow.
STATSD = {t.id for t in dashboards.statsd_targets()}
_TIME_TYPES = re.compile(r"^(Nullable\()?(Date|Date32|DateTime|DateTime64)\b")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\)$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, clickhouse: ClickHouseSettings, admin: Any) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("grafana")
    try:
        with grafana_stack.build(root, clickhouse, admin) as built:
            # Grafana aligns a range query's end down to its step, so a series younger than one step
            # shows nothing yet: wait for the next step boundary of the coarsest Prometheus panel.
            step_s = max(_interval(BOARDS[t.board], t.panel) for t in TARGETS if t.kind == "prometheus") / 1000
            ready = time.time()
            servers.wait_for(lambda: math.floor(time.time() / step_s) * step_s > ready, 2 * step_s + 5,
                             "a full step of data", every_s=0.5)
            yield built
    except Exception as exc:
        raise RuntimeError(f"{exc}\n{grafana_stack.log_tail(root)}") from exc


def _interval(board: dict[str, Any], panel: dict[str, Any], now_ms: int = 0) -> int:
    time_range = TimeRange.parse(board["time"]["from"], board["time"]["to"], now_ms or int(time.time() * 1000))
    return interval_ms(time_range, panel.get("maxDataPoints", 1000), panel.get("interval") or "15s")


def run_variable_query(stack: Stack, variable: dict[str, Any], scope: Scope) -> list[str]:
    text = dashboards.variable_query(variable)
    if variable["datasource"]["type"] == dashboards.CLICKHOUSE_TYPE:
        result = stack.client.query(clickhouse_sql(text, scope))
        return [str(row[0]) for row in result.result_rows]
    match = _LABEL_VALUES.match(text)
    assert match, f"unsupported Prometheus variable query {text!r}"
    r = scope.time_range
    return list(prom_get(stack.prometheus, f"/api/v1/label/{match['label']}/values",
                         **{"match[]": promql(match["selector"], scope)}, start=r.from_ms / 1000, end=r.to_ms / 1000))


Resolved = tuple[dict[str, Variable], TimeRange]


@pytest.fixture(scope="module")
def resolve(stack: Stack) -> Callable[[str], Resolved]:
    """A board's variables set as a user opening it would find them: each query run in order."""
    cache: dict[str, Resolved] = {}

    def get(uid: str) -> Resolved:
        if uid not in cache:
            board = BOARDS[uid]
            time_range = TimeRange.parse(board["time"]["from"], board["time"]["to"], int(time.time() * 1000))
            variables: dict[str, Variable] = {}
            for v in board["templating"]["list"]:
                name, multi, include_all = v["name"], bool(v.get("multi")), bool(v.get("includeAll"))
                if v["type"] == "custom":
                    options = [o["value"] for o in v["options"]]
                    variables[name] = Variable(name, v["current"]["value"], multi, include_all, options=tuple(options))
                    continue
                options = run_variable_query(stack, v, Scope(variables, time_range))
                assert options, f"{uid}: variable {name} has no values"
                default = v.get("current", {}).get("value")
                if include_all and default in (ALL, [ALL]):
                    value: str | list[str] = ALL
                else:
                    wanted = PREFERRED.get(uid, {}).get(name)
                    value = wanted if wanted in options else options[0]
                variables[name] = Variable(name, value, multi, include_all, v.get("allValue") or None, tuple(options))
            cache[uid] = (variables, time_range)
        return cache[uid]

    return get


@pytest.mark.parametrize(("uid", "name"), VARIABLES, ids=[f"{u}:{n}" for u, n in VARIABLES])
def test_variable_query_returns_values(resolve: Callable[[str], Resolved], uid: str, name: str) -> None:
    """Each query variable's query runs and returns values (the board's earlier variables set)."""
    variables, _ = resolve(uid)
    assert variables[name].options


def _check_clickhouse(stack: Stack, target: dashboards.Target, scope: Scope) -> list[Any]:
    sql = clickhouse_sql(target.target["rawSql"], scope)
    result = stack.client.query(sql)
    # the columns and types ClickHouse gives the query, whether or not it returns rows
    types = {row[0]: row[1] for row in stack.client.query(f"DESCRIBE ({sql})").result_rows}
    if target.target.get("format", 0) == 0:
        assert any(_TIME_TYPES.match(t) for t in types.values()), f"time series without a time column: {types}"
    missing = dashboards.fields_used(target.panel) - set(types)
    assert not missing, f"the panel names columns the query lacks: {missing} (has {sorted(types)})"
    return list(result.result_rows)


def _check_prometheus(stack: Stack, target: dashboards.Target, scope: Scope) -> list[Any]:
    expr, r = promql(target.target["expr"], scope), scope.time_range
    if target.target.get("instant"):
        data = prom_get(stack.prometheus, "/api/v1/query", query=expr, time=r.to_ms / 1000)
        assert data["resultType"] == "vector"
    else:
        step = scope.interval_ms / 1000  # Grafana aligns the range to the step
        data = prom_get(stack.prometheus, "/api/v1/query_range", query=expr, step=step,
                        start=math.floor(r.from_ms / 1000 / step) * step, end=math.floor(r.to_ms / 1000 / step) * step)
        assert data["resultType"] == "matrix"
    used = dashboards.fields_used(target.panel) | dashboards.labels_used(target.panel)
    for series in data["result"]:
        missing = used - set(series["metric"])
        assert not missing, f"the panel names labels the series lacks: {missing} ({series['metric']})"
    return list(data["result"])


@pytest.mark.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])
def test_panel_query(stack: Stack, resolve: Callable[[str], Resolved], target: dashboards.Target) -> None:
    """The panel's query runs without error, has the columns the panel uses, and returns rows."""
    variables, time_range = resolve(target.board)
    scope = Scope(variables, time_range, _interval(BOARDS[target.board], target.panel, time_range.to_ms))
    check = _check_clickhouse if target.kind == dashboards.CLICKHOUSE_TYPE else _check_prometheus
    rows = check(stack, target, scope)
    if target.id in STATSD:
        assert [] == rows, f"{target.id}: series without statsd-exporter? {rows[:1]}"
    elif target.id not in MAY_BE_EMPTY:
        assert rows, f"{target.id} returned no rows"


def test_green_ticks_panel_finds_the_bad_runs(stack: Stack, resolve: Callable[[str], Resolved]) -> None:
    """Successful runs whose rows_loaded fell to 0 or 40 (median ~1100) are listed, and only they."""
    target = next(t for t in TARGETS if t.panel["title"] == "Green ticks that hide bad runs")
    variables, time_range = resolve(target.board)
    rows = stack.client.query(clickhouse_sql(target.target["rawSql"], Scope(variables, time_range))).named_results()
    assert sorted(grafana_stack.BAD_METRIC_RUNS.values()) == sorted(row["value"] for row in rows)


def test_slow_runs_panel_finds_the_slow_run(stack: Stack, resolve: Callable[[str], Resolved]) -> None:
    """The run whose extract took 300 s longer than usual is above extract's p95."""
    target = next(t for t in TARGETS if t.panel["title"] == "Runs slower than their task's own p95")
    variables, time_range = resolve(target.board)
    rows = stack.client.query(clickhouse_sql(target.target["rawSql"], Scope(variables, time_range))).named_results()
    assert "extract" in {row["task_id"] for row in rows}


MERGED = [(uid, panel) for uid, board in BOARDS.items() for panel in dashboards.panels(board)
          if any(t["id"] == "merge" for t in panel.get("transformations", []))]


@pytest.mark.parametrize(("uid", "panel"), MERGED, ids=[f"{u}:{p['title']}" for u, p in MERGED])
def test_merged_queries_share_their_rows(stack: Stack, resolve: Callable[[str], Resolved], uid: str,
                                         panel: dict[str, Any]) -> None:
    """A table merging several instant queries gets the same label names from each (no __name__ or
    extra label that would split a task over several rows), and rows that join up."""
    variables, time_range = resolve(uid)
    names, rows = set(), []
    for target in panel["targets"]:
        result = prom_get(stack.prometheus, "/api/v1/query", query=promql(target["expr"], Scope(variables, time_range)),
                          time=time_range.to_ms / 1000)["result"]
        names |= {tuple(sorted(series["metric"])) for series in result}
        rows.append({tuple(sorted(series["metric"].items())) for series in result})
    assert 1 == len(names), names
    assert all(other <= rows[0] for other in rows[1:])  # every value joins a row of the first query


def _alert(stack: Stack, name: str) -> list[dict[str, str]]:
    return [s["metric"] for s in prom_get(stack.prometheus, "/api/v1/query", query=RULES[name]["expr"])["result"]]


def test_task_failed_fires_for_the_failed_task_only(stack: Stack) -> None:
    """BatchobsTaskFailed's expression: the example's `broken` task, none of those that succeeded."""
    fired = {(m["dag_id"], m["task_id"]) for m in _alert(stack, "BatchobsTaskFailed") if m["instance"] == INSTANCE}
    succeeded = {m["metric"]["task_id"] for m in prom_get(
        stack.prometheus, "/api/v1/query", query=f'task_status{{instance="{INSTANCE}"}} == 1')["result"]}
    assert {(EXAMPLE_DAG, "broken")} == fired
    assert {"succeed", "flaky", "shard", "measured"} == succeeded


def test_dag_run_failed_fires_for_the_example(stack: Stack) -> None:
    """BatchobsDagRunFailed's expression: the example DAG, whose run failed."""
    assert [EXAMPLE_DAG] == [m["dag_id"] for m in _alert(stack, "BatchobsDagRunFailed") if m["instance"] == INSTANCE]


def test_every_rule_evaluates_cleanly(stack: Stack) -> None:
    """Prometheus loaded every rule of prometheus/rules and none fails to evaluate."""
    groups = prom_get(stack.prometheus, "/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(RULES) == len([r for r in rules if r["type"] == "alerting"])
    assert [] == [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]


def test_firing_alerts_are_the_expected_ones(stack: Stack) -> None:
    """Firing now: the failed task, the failed run and the dead letter; nothing about the ingester's health."""
    firing = {a["labels"]["alertname"] for a in prom_get(stack.prometheus, "/api/v1/alerts")["alerts"]
              if a["state"] == "firing"}
    assert {"BatchobsTaskFailed", "BatchobsDagRunFailed", "BatchobsDeadLetters"} == firing


def test_query_count(stack: Stack) -> None:
    """Every panel target and variable query of every board is among the cases above."""
    expected = sum(len(p.get("targets", [])) for b in BOARDS.values() for p in dashboards.panels(b))
    assert expected == len(TARGETS)
    assert sum(len(dashboards.query_variables(b)) for b in BOARDS.values()) == len(VARIABLES)
