-- One row per stored copy of an event, not collapsed (no FINAL): which run an event
-- belongs to and when it arrived.  Incremental models read it to find the runs that
-- gained events since their last build; a replayed copy only makes a run look changed,
-- which is harmless, and skipping FINAL keeps that scan cheap.
with source as (
    select kind, dag_id, run_id, ingested_at
    from {{ source('airflow', 'events') }}
),

renamed as (
    select
        dag_id,
        run_id,
        kind,
        ingested_at
    from source
)

select * from renamed
