-- One row per custom metric recorded by task code (listener.record_metric).
with source as (
    select * from {{ source('airflow', 'events') }} final
    -- prewhere: every copy of an event has the kind its id names (the id is in the
    -- sorting key), so filtering before FINAL keeps the same rows and reads far fewer
    prewhere kind = 'task_metric'
),

renamed as (
    select
        event_id,
        emitted_at,
        ingested_at,
        instance,
        dag_id,
        run_id,
        task_id,
        map_index,
        try_number,
        metric_name,
        metric_value,
        metric_unit,
        attrs as metric_attrs
    from source
)

select * from renamed
