{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='event_id',
    engine='MergeTree()',
    order_by='(event_id)',
) }}

select event_id, dag_id, run_id, task_id, state, ingested_at
from {{ source('batchobs', 'events') }} final
{% if is_incremental() %}
where ingested_at > (select max(ingested_at) from {{ this }})
{% endif %}
