{{ config(
    materialized=batchobs_materialized('table'),
    engine=batchobs_engine(),
    sharding_key='cityHash64(dag_id)',
    order_by='(run_date, dag_id, task_id)',
) }}

-- Per day (the run's logical date) and task.  A run counts once it has an outcome:
-- success or failed (skipped, upstream_failed and removed runs are counted apart).
-- Rebuilt from fct_task_runs each time: one row per task run there, so a late or
-- duplicate event has already been folded in, and a run that moves day moves here too.
with task_runs as (
    select * from {{ ref('fct_task_runs') }}
),

daily as (
    select
        run_date,
        dag_id,
        task_id,
        countIf(final_state in ('success', 'failed')) as runs,
        countIf(final_state = 'failed') as failures,
        countIf(final_state = 'success') as successes,
        countIf(final_state in ('success', 'failed') and first_try_succeeded) as first_try_successes,
        countIf(final_state in ('success', 'failed') and tries > 1) as retried_runs,
        countIf(final_state = 'skipped') as skipped_runs,
        countIf(final_state = 'upstream_failed') as upstream_failed_runs,
        failures / nullIf(runs, 0) as failure_rate,
        first_try_successes / nullIf(runs, 0) as first_try_success_rate,
        retried_runs / nullIf(runs, 0) as retry_rate,
        quantileExactIf(0.5)(total_duration_s, final_state in ('success', 'failed')) as duration_p50_s,
        quantileExactIf(0.95)(total_duration_s, final_state in ('success', 'failed')) as duration_p95_s
    from task_runs
    group by run_date, dag_id, task_id
)

select * from daily
