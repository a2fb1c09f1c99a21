{{ config(
    materialized=batchobs_materialized('table'),
    engine=batchobs_engine(),
    sharding_key='cityHash64(dag_id)',
    order_by='(dag_id, task_id)',
) }}

-- Tasks that fail and then pass on retry: over the window of `flaky_window_days` days
-- ending at `flaky_as_of` (default: the newest run date), the share of their finished
-- runs that succeeded only after a failed try is above `flaky_threshold`.
with task_runs as (
    select * from {{ ref('fct_task_runs') }}
    where final_state in ('success', 'failed')
),

as_of_date as (
    {% if var('flaky_as_of') -%}
    {#- parsed as a date first, so only a date can reach the SQL -#}
    select toDate('{{ modules.datetime.date.fromisoformat(var("flaky_as_of") | string).isoformat() }}') as as_of
    {%- else -%}
    select max(run_date) as as_of from task_runs
    {%- endif %}
),

recent as (
    select task_runs.*
    from task_runs
    where run_date > (select as_of from as_of_date) - {{ var('flaky_window_days') | int }}
      and run_date <= (select as_of from as_of_date)
),

rates as (
    select
        dag_id,
        task_id,
        (select as_of from as_of_date) - {{ var('flaky_window_days') | int }} + 1 as window_start,
        (select as_of from as_of_date) as window_end,
        count() as runs,
        countIf(final_state = 'success' and not first_try_succeeded) as recovered_runs,
        countIf(final_state = 'failed') as failed_runs,
        recovered_runs / runs as flaky_rate,
        argMaxIf(run_id, started_at, final_state = 'success' and not first_try_succeeded)
            as last_recovered_run_id
    from recent
    group by dag_id, task_id
)

select * from rates
where runs >= {{ var('flaky_min_runs') | int }}
  and flaky_rate > {{ var('flaky_threshold') | float }}
