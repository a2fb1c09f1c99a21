"""The run-level audit questions: named SQL with typed parameters, asked of either source.

User input only ever reaches ClickHouse as query parameters (``{name:Type}``,
bound by the server); the SQL text is fixed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["QUESTIONS", "Param", "Question"]


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # ClickHouse type of the bound parameter
    help: str
    default: object = None  # None: required, unless a window bound (filled in by the caller)

    @property
    def required(self) -> bool:
        return self.default is None and self.name not in ("since", "until")


@dataclass(frozen=True)
class Question:
    name: str
    help: str
    params: tuple[Param, ...]
    sql: str  # reads task_tries, task_runs, dag_runs, task_metrics (see sources.py)


DAG: Final = Param("dag_id", "String", "the DAG")
ANY_DAG: Final = Param("dag_id", "String", "only this DAG (default: every DAG)", default="")
RUN: Final = Param("run_id", "String", "the DAG run")
# Windows are over run dates (a run's logical date, else the day it started), as in the
# daily rollups; the marts are partitioned by month of it, so a window reads few parts.
SINCE: Final = Param("since", "Date", "first run date in the window (default: 7 days before --until)")
UNTIL: Final = Param("until", "Date", "run date after the window, exclusive (default: tomorrow, UTC)")
WINDOW: Final = "run_date >= {since:Date} AND run_date < {until:Date}"
DAG_FILTER: Final = "({dag_id:String} = '' OR dag_id = {dag_id:String})"

QUESTIONS: Final[dict[str, Question]] = {q.name: q for q in (
    Question(
        "runs", "runs of a DAG in a window of run dates",
        (DAG, SINCE, UNTIL),
        f"""
        SELECT run_id, run_type, state, started_at, ended_at, round(duration_s, 3) AS duration_s,
               tasks_total, tasks_failed, tasks_retried
        FROM dag_runs
        WHERE dag_id = {{dag_id:String}} AND {WINDOW}
        ORDER BY started_at, run_id
        """,
    ),
    Question(
        "timeline", "one run's task tries in order, with states and errors",
        (DAG, RUN),
        """
        SELECT task_id, map_index, try_number, state, started_at, ended_at,
               round(duration_s, 3) AS duration_s, hostname, error_type, error_message
        FROM task_tries
        WHERE dag_id = {dag_id:String} AND run_id = {run_id:String}
        ORDER BY started_at ASC NULLS LAST, task_id, map_index, try_number
        """,
    ),
    Question(
        "failures", "task runs that ended failed, in a window of run dates",
        (SINCE, UNTIL, ANY_DAG),
        f"""
        SELECT dag_id, run_id, task_id, map_index, tries, started_at, ended_at,
               final_error_type AS error_type, final_error_message AS error_message
        FROM task_runs
        WHERE final_state = 'failed' AND {WINDOW} AND {DAG_FILTER}
        ORDER BY started_at, dag_id, run_id, task_id, map_index
        """,
    ),
    Question(
        "flaky", "tasks that failed and then passed on retry, above a threshold, in a window",
        (SINCE, UNTIL, ANY_DAG,
         Param("threshold", "Float64", "share of finished runs that needed a retry to succeed", 0.1),
         Param("min_runs", "UInt32", "ignore tasks with fewer finished runs in the window", 3)),
        f"""
        SELECT dag_id, task_id,
               count() AS runs,
               countIf(final_state = 'success' AND NOT first_try_succeeded) AS recovered_runs,
               round(recovered_runs / runs, 4) AS flaky_rate
        FROM task_runs
        WHERE final_state IN ('success', 'failed') AND {WINDOW} AND {DAG_FILTER}
        GROUP BY dag_id, task_id
        HAVING runs >= {{min_runs:UInt32}} AND recovered_runs / runs > {{threshold:Float64}}
        ORDER BY flaky_rate DESC, dag_id, task_id
        """,
    ),
    Question(
        "slowest", "task runs in a window slower than their task's own p95 (successful runs, baseline days)",
        (SINCE, UNTIL, ANY_DAG,
         Param("baseline_days", "UInt32", "days before --until the p95 is taken over", 28),
         Param("limit", "UInt32", "rows at most", 50)),
        f"""
        SELECT runs.dag_id AS dag_id, runs.run_id AS run_id, runs.task_id AS task_id,
               runs.map_index AS map_index, runs.final_state AS final_state,
               round(runs.total_duration_s, 3) AS duration_s, round(baseline.p95_s, 3) AS p95_s,
               round(runs.total_duration_s / baseline.p95_s, 2) AS times_p95
        FROM (SELECT * FROM task_runs WHERE {WINDOW} AND {DAG_FILTER}) AS runs
        INNER JOIN (
            SELECT dag_id, task_id, quantileExact(0.95)(total_duration_s) AS p95_s
            FROM task_runs
            WHERE final_state = 'success' AND {DAG_FILTER}
              AND run_date >= {{until:Date}} - toIntervalDay({{baseline_days:UInt32}})
              AND run_date < {{until:Date}}
            GROUP BY dag_id, task_id
        ) AS baseline ON baseline.dag_id = runs.dag_id AND baseline.task_id = runs.task_id
        WHERE runs.total_duration_s > baseline.p95_s
        ORDER BY times_p95 DESC, dag_id, run_id, task_id, map_index
        LIMIT {{limit:UInt32}}
        """,
    ),
    Question(
        "metrics", "custom metrics recorded by a run's tasks",
        (DAG, RUN),
        """
        SELECT task_id, map_index, try_number, metric_name, metric_value, metric_unit,
               metric_attrs AS attrs, emitted_at
        FROM task_metrics
        WHERE dag_id = {dag_id:String} AND run_id = {run_id:String}
        ORDER BY emitted_at, task_id, map_index, metric_name
        """,
    ),
)}
