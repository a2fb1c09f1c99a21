-- One row per DAG-run state change (fired in the scheduler).
with source as (
    select * from {{ source('airflow', 'events') }} final
    -- prewhere: every copy of an event has the kind its id names (the id is in the
    -- sorting key), so filtering before FINAL keeps the same rows and reads far fewer
    prewhere kind = 'dag_run'
),

renamed as (
    select
        event_id,
        emitted_at,
        ingested_at,
        instance,
        dag_id,
        run_id,
        run_type,
        state,
        logical_date,
        data_interval_start,
        data_interval_end,
        queued_at,
        start_date as started_at,
        end_date as ended_at,
        duration_s
    from source
)

select * from renamed
