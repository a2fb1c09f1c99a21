{{ config(
    materialized=batchobs_materialized('incremental'),
    incremental_strategy='delete+insert',
    unique_key='dag_id, run_id',
    engine=batchobs_engine(),
    sharding_key='cityHash64(dag_id, run_id)',
    order_by='(dag_id, run_id, task_id, map_index, try_number)',
) }}

-- depends_on: {{ ref('stg_airflow__event_arrivals') }}  (read by changed_runs when incremental)

-- One row per task try.  Every aggregate here gives the same answer when an event
-- is seen twice (argMax, min, max, uniqExact), so a duplicate never double counts.
with task_events as (
    select
        *,
        -- a terminal state beats "running"; on a tie the scheduler's record of the
        -- metadata DB beats the task's own hook (a task killed mid-try fires none)
        (state != 'running', is_reconciled, emitted_at) as precedence,
        started_at as event_started_at,
        ended_at as event_ended_at
    from {{ ref('stg_airflow__task_events') }}
    {% if is_incremental() %}
    where (dag_id, run_id) in ({{ changed_runs(['task_instance', 'task_reconciled']) }})
    {% endif %}
),

tries as (
    select
        dag_id,
        run_id,
        task_id,
        map_index,
        try_number,
        argMax(instance, emitted_at) as instance,
        argMaxIf(run_type, emitted_at, run_type != '') as run_type,
        min(logical_date) as logical_date,
        argMax(state, precedence) as state,
        argMax(is_reconciled, precedence) as state_reconciled,
        max(max_tries) as max_tries,
        argMaxIf(hostname, emitted_at, hostname != '') as hostname,
        argMaxIf(operator, emitted_at, operator != '') as operator,
        argMaxIf(queue, emitted_at, queue != '') as queue,
        argMaxIf(pool, emitted_at, pool != '') as pool,
        min(queued_at) as queued_at,
        min(started_at) as started_at,
        max(ended_at) as ended_at,
        coalesce(
            max(duration_s),
            dateDiff('microsecond', min(event_started_at), max(event_ended_at)) / 1e6
        ) as duration_s,
        argMaxIf(error_type, emitted_at, error_type != '') as error_type,
        argMaxIf(error_message, emitted_at, error_message != '') as error_message,
        uniqExact(event_id) as events,
        min(emitted_at) as first_emitted_at,
        max(emitted_at) as last_emitted_at,
        max(ingested_at) as last_ingested_at
    from task_events
    group by dag_id, run_id, task_id, map_index, try_number
)

select * from tries
