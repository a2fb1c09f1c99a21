select dag_id, run_id, task_id, map_index, tries
from {{ ref('task_outcomes') }}
where final_state = 'failed'
