{{ config(
    materialized=batchobs_materialized('incremental'),
    incremental_strategy='delete+insert',
    unique_key='dag_id, run_id',
    engine=batchobs_engine(),
    sharding_key='cityHash64(dag_id, run_id)',
    order_by='(dag_id, run_id, task_id, map_index)',
    partition_by='toYYYYMM(run_date)',
    query_settings={'max_partitions_per_insert_block': 0},
) }}

-- Partitioned by month of the run date (audit windows read few parts).  A backfill
-- spans as many months as it likes, and one build inserts them all at once: the
-- per-insert partition limit (100 by default, refused with TOO_MANY_PARTS) is lifted.

-- depends_on: {{ ref('stg_airflow__event_arrivals') }}  (read by changed_runs when incremental)

-- One row per task instance of a DAG run: (dag_id, run_id, task_id, map_index).
with tries as (
    select
        *,
        state as try_state,
        queued_at as try_queued_at,
        started_at as try_started_at
    from {{ ref('int_task_tries') }}
    {% if is_incremental() %}
    where (dag_id, run_id) in ({{ changed_runs(['task_instance', 'task_reconciled']) }})
    {% endif %}
),

task_runs as (
    select
        dag_id,
        run_id,
        task_id,
        map_index,
        argMax(instance, try_number) as instance,
        argMaxIf(run_type, try_number, run_type != '') as run_type,
        -- the run's logical date, else the day it started: the day the run counts for
        toDate(coalesce(min(logical_date), min(try_started_at), min(first_emitted_at))) as run_date,
        argMaxIf(operator, try_number, operator != '') as operator,
        max(try_number) as tries,
        argMax(state, try_number) as final_state,
        argMax(state_reconciled, try_number) as final_state_reconciled,
        countIf(try_number >= 1) > 0 and argMinIf(try_state, try_number, try_number >= 1) = 'success'
            as first_try_succeeded,
        sum(duration_s) as total_duration_s,
        argMax(duration_s, try_number) as final_try_duration_s,
        dateDiff('microsecond', argMinIf(try_queued_at, try_number, try_number >= 1),
                 argMinIf(try_started_at, try_number, try_number >= 1)) / 1e6 as queue_time_s,
        min(started_at) as started_at,
        max(ended_at) as ended_at,
        -- the error of the last try that failed ('' when none did)
        argMaxIf(error_type, try_number, error_type != '') as final_error_type,
        argMaxIf(error_message, try_number, error_message != '') as final_error_message,
        max(last_ingested_at) as last_ingested_at
    from tries
    group by dag_id, run_id, task_id, map_index
)

select * from task_runs
