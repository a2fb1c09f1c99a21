"""The relations the audit questions read, from the dbt marts or from raw events.

Each question is written once, against four relation names (``task_tries``,
``task_runs``, ``dag_runs``, ``task_metrics``).  A source binds those names as
common table expressions: to the dbt models when they have been built, or to
aggregates over ``events FINAL`` when they have not.  The raw definitions follow
the dbt models' rules (dbt/models) for the columns the questions use; a test asks
every question of both sources and expects the same rows.  Kinds are filtered in
PREWHERE, before FINAL, as in the staging models: every copy of an event has the kind
its id names.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EVENTS", "MARTS", "MODELS", "RELATIONS"]

# Each relation the questions read, and the dbt model that holds it.
MODELS: Final = {
    "task_tries": "int_task_tries",
    "task_runs": "fct_task_runs",
    "dag_runs": "fct_dag_runs",
    "task_metrics": "stg_airflow__task_metrics",
}
RELATIONS: Final = tuple(MODELS)

# The models, in the database named by the query parameter ``marts`` (the names above
# are fixed here; nothing a user types reaches this text).
MARTS: Final = ",\n".join(f"{relation} AS (SELECT * FROM {{marts:Identifier}}.{model})"  # noqa: S608
                          for relation, model in MODELS.items())

# The same relations from the events table of the connected database.
EVENTS: Final = """
task_tries AS (
    SELECT
        dag_id, run_id, task_id, map_index, try_number,
        argMax(state, (state != 'running', kind = 'task_reconciled', emitted_at)) AS state,
        argMaxIf(run_type, emitted_at, run_type != '') AS run_type,
        argMaxIf(hostname, emitted_at, hostname != '') AS hostname,
        min(start_date) AS started_at,
        max(end_date) AS ended_at,
        coalesce(max(duration_s), dateDiff('microsecond', min(start_date), max(end_date)) / 1e6) AS duration_s,
        argMaxIf(error_type, emitted_at, error_type != '') AS error_type,
        argMaxIf(error_message, emitted_at, error_message != '') AS error_message,
        min(logical_date) AS logical_date,
        min(emitted_at) AS first_emitted_at
    FROM events FINAL
    PREWHERE kind IN ('task_instance', 'task_reconciled')
    GROUP BY dag_id, run_id, task_id, map_index, try_number
),
task_runs AS (
    SELECT
        dag_id, run_id, task_id, map_index,
        min(started_at) AS started_at,
        max(ended_at) AS ended_at,
        toDate(coalesce(min(logical_date), started_at, min(first_emitted_at))) AS run_date,
        argMaxIf(run_type, try_number, run_type != '') AS run_type,
        max(try_number) AS tries,
        argMax(state, try_number) AS final_state,
        countIf(try_number >= 1) > 0 AND argMinIf(state, try_number, try_number >= 1) = 'success'
            AS first_try_succeeded,
        sum(duration_s) AS total_duration_s,
        argMaxIf(error_type, try_number, error_type != '') AS final_error_type,
        argMaxIf(error_message, try_number, error_message != '') AS final_error_message
    FROM task_tries
    GROUP BY dag_id, run_id, task_id, map_index
),
dag_runs AS (
    SELECT
        keys.dag_id AS dag_id,
        keys.run_id AS run_id,
        if(runs.state != '', runs.state, 'unknown') AS state,
        if(runs.run_type != '', runs.run_type, tasks.run_type) AS run_type,
        toDate(coalesce(runs.logical_date, runs.started_at, tasks.started_at, runs.first_emitted_at)) AS run_date,
        coalesce(runs.started_at, tasks.started_at) AS started_at,
        coalesce(runs.ended_at, if(state IN ('success', 'failed'), tasks.ended_at, NULL)) AS ended_at,
        coalesce(runs.duration_s, dateDiff('microsecond', started_at, ended_at) / 1e6) AS duration_s,
        tasks.tasks_total AS tasks_total,
        tasks.tasks_failed AS tasks_failed,
        tasks.tasks_retried AS tasks_retried
    FROM (
        SELECT DISTINCT dag_id, run_id FROM events
        WHERE kind IN ('dag_run', 'task_instance', 'task_reconciled')
    ) AS keys
    LEFT JOIN (
        SELECT
            dag_id, run_id,
            argMax(state, emitted_at) AS state,
            argMaxIf(run_type, emitted_at, run_type != '') AS run_type,
            min(logical_date) AS logical_date,
            min(start_date) AS started_at,
            max(end_date) AS ended_at,
            max(duration_s) AS duration_s,
            min(emitted_at) AS first_emitted_at
        FROM events FINAL
        PREWHERE kind = 'dag_run'
        GROUP BY dag_id, run_id
    ) AS runs ON runs.dag_id = keys.dag_id AND runs.run_id = keys.run_id
    LEFT JOIN (
        SELECT
            dag_id, run_id,
            anyIf(run_type, run_type != '') AS run_type,
            count() AS tasks_total,
            countIf(final_state = 'failed') AS tasks_failed,
            countIf(tries > 1) AS tasks_retried,
            min(started_at) AS started_at,
            max(ended_at) AS ended_at
        FROM task_runs
        GROUP BY dag_id, run_id
    ) AS tasks ON tasks.dag_id = keys.dag_id AND tasks.run_id = keys.run_id
),
task_metrics AS (
    SELECT dag_id, run_id, task_id, map_index, try_number, metric_name, metric_value, metric_unit,
           attrs AS metric_attrs, emitted_at
    FROM events FINAL
    PREWHERE kind = 'task_metric'
)
"""
