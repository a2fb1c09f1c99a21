-- One row per task-try event: the task's own hooks (task_instance) and the scheduler's
-- record of what the metadata DB held when the run ended (task_reconciled).
with source as (
    select * from {{ source('airflow', 'events') }} final
    -- prewhere: every copy of an event has the kind its id names (the id is in the
    -- sorting key), so filtering before FINAL keeps the same rows and reads far fewer
    prewhere kind in ('task_instance', 'task_reconciled')
),

renamed as (
    select
        event_id,
        cast(kind = 'task_reconciled' as Bool) as is_reconciled,
        emitted_at,
        ingested_at,
        instance,
        hostname,
        dag_id,
        run_id,
        run_type,
        logical_date,
        task_id,
        map_index,
        try_number,
        max_tries,
        state,
        previous_state,
        operator,
        queue,
        pool,
        queued_at,
        start_date as started_at,
        end_date as ended_at,
        duration_s,
        error_type,
        error_message
    from source
)

select * from renamed
