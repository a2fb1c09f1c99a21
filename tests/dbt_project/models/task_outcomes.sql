{{ config(materialized='table', engine='MergeTree()', order_by='(dag_id, run_id, task_id, map_index)') }}

with events as (
    select * from {{ source('batchobs', 'events') }} final
    where kind = 'task_instance' and state != 'running'
)

select
    dag_id,
    run_id,
    task_id,
    map_index,
    max(try_number) as tries,
    argMax(state, try_number) as final_state
from events
group by dag_id, run_id, task_id, map_index
