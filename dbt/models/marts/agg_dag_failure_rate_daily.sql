{{ config(
    materialized=batchobs_materialized('table'),
    engine=batchobs_engine(),
    sharding_key='cityHash64(dag_id)',
    order_by='(run_date, dag_id)',
) }}

-- Per day (the run's logical date) and DAG, over runs that ended success or failed.
-- A first-try success is a successful run in which no task needed a retry.
with dag_runs as (
    select * from {{ ref('fct_dag_runs') }}
),

daily as (
    select
        run_date,
        dag_id,
        countIf(state in ('success', 'failed')) as runs,
        countIf(state = 'failed') as failures,
        countIf(state = 'success') as successes,
        countIf(state = 'success' and tasks_retried = 0) as first_try_successes,
        countIf(state in ('success', 'failed') and tasks_retried > 0) as retried_runs,
        failures / nullIf(runs, 0) as failure_rate,
        first_try_successes / nullIf(runs, 0) as first_try_success_rate,
        retried_runs / nullIf(runs, 0) as retry_rate,
        quantileExactIf(0.5)(duration_s, state in ('success', 'failed')) as duration_p50_s,
        quantileExactIf(0.95)(duration_s, state in ('success', 'failed')) as duration_p95_s
    from dag_runs
    group by run_date, dag_id
)

select * from daily
