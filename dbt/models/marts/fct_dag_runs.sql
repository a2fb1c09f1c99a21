{{ config(
    materialized=batchobs_materialized('incremental'),
    incremental_strategy='delete+insert',
    unique_key='dag_id, run_id',
    engine=batchobs_engine(),
    sharding_key='cityHash64(dag_id, run_id)',
    order_by='(dag_id, run_id)',
    partition_by='toYYYYMM(run_date)',
    query_settings={'max_partitions_per_insert_block': 0},
) }}

-- Partitioned by month of the run date (audit windows read few parts).  A backfill
-- spans as many months as it likes, and one build inserts them all at once: the
-- per-insert partition limit (100 by default, refused with TOO_MANY_PARTS) is lifted.

-- depends_on: {{ ref('stg_airflow__event_arrivals') }}  (read by changed_runs when incremental)

-- One row per DAG run: its own events (scheduler) joined to its task runs.  A run
-- seen only through task events (no listener in the scheduler) has state 'unknown'.
with

{% if is_incremental() %}
changed as (
    {{ changed_runs(['dag_run', 'task_instance', 'task_reconciled']) }}
),
{% endif %}

dag_run_events as (
    select * from {{ ref('stg_airflow__dag_run_events') }}
    {% if is_incremental() %} where (dag_id, run_id) in (select dag_id, run_id from changed) {% endif %}
),

task_runs as (
    select * from {{ ref('fct_task_runs') }}
    {% if is_incremental() %} where (dag_id, run_id) in (select dag_id, run_id from changed) {% endif %}
),

dag_runs as (
    select
        dag_id,
        run_id,
        argMax(instance, emitted_at) as instance,
        argMax(state, emitted_at) as state,
        argMaxIf(run_type, emitted_at, run_type != '') as run_type,
        min(logical_date) as logical_date,
        min(data_interval_start) as data_interval_start,
        max(data_interval_end) as data_interval_end,
        min(started_at) as started_at,
        max(ended_at) as ended_at,
        max(duration_s) as duration_s,
        min(emitted_at) as first_emitted_at,
        max(ingested_at) as last_ingested_at
    from dag_run_events
    group by dag_id, run_id
),

task_totals as (
    select
        dag_id,
        run_id,
        any(instance) as instance,
        anyIf(run_type, run_type != '') as run_type,
        min(run_date) as run_date,
        count() as tasks_total,
        countIf(final_state = 'failed') as tasks_failed,
        countIf(tries > 1) as tasks_retried,
        countIf(final_state = 'upstream_failed') as tasks_upstream_failed,
        countIf(final_state = 'skipped') as tasks_skipped,
        min(started_at) as started_at,
        max(ended_at) as ended_at,
        max(last_ingested_at) as last_ingested_at
    from task_runs
    group by dag_id, run_id
),

run_keys as (
    select dag_id, run_id from dag_runs
    union distinct
    select dag_id, run_id from task_totals
),

joined as (
    select
        run_keys.dag_id as dag_id,
        run_keys.run_id as run_id,
        if(dag_runs.instance != '', dag_runs.instance, task_totals.instance) as instance,
        if(dag_runs.state != '', dag_runs.state, 'unknown') as state,
        if(dag_runs.run_type != '', dag_runs.run_type, task_totals.run_type) as run_type,
        dag_runs.logical_date as logical_date,
        dag_runs.data_interval_start as data_interval_start,
        dag_runs.data_interval_end as data_interval_end,
        toDate(coalesce(dag_runs.logical_date, dag_runs.started_at, task_totals.started_at,
                        dag_runs.first_emitted_at)) as run_date,
        coalesce(dag_runs.started_at, task_totals.started_at) as started_at,
        coalesce(dag_runs.ended_at, if(state in ('success', 'failed'), task_totals.ended_at, null)) as ended_at,
        coalesce(dag_runs.duration_s, dateDiff('microsecond', started_at, ended_at) / 1e6) as duration_s,
        task_totals.tasks_total as tasks_total,
        task_totals.tasks_failed as tasks_failed,
        task_totals.tasks_retried as tasks_retried,
        task_totals.tasks_upstream_failed as tasks_upstream_failed,
        task_totals.tasks_skipped as tasks_skipped,
        greatest(dag_runs.last_ingested_at, task_totals.last_ingested_at) as last_ingested_at
    from run_keys
    left join dag_runs on dag_runs.dag_id = run_keys.dag_id and dag_runs.run_id = run_keys.run_id
    left join task_totals on task_totals.dag_id = run_keys.dag_id and task_totals.run_id = run_keys.run_id
)

select * from joined
