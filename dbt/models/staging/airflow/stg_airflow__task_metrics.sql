-- One row per custom metric recorded by task code (listener.record_metric).
with source as (
    select * from {{ source('airflow', 'events') }} final
    where kind = 'task_metric'
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
