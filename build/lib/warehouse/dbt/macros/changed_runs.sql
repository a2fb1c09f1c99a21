{#-
  The (dag_id, run_id) pairs that gained events of `kinds` ingested after the newest
  row already in this incremental model, less `lookback_seconds` (inserts still in
  flight when the last build read): the runs to recompute whole.  Recomputing a run
  from all its events is what makes late and duplicate events harmless (the result is
  the same however often it is done).
-#}
{% macro changed_runs(kinds) %}
    select distinct dag_id, run_id
    from {{ ref('stg_airflow__event_arrivals') }}
    where kind in ('{{ kinds | join("', '") }}')
      and ingested_at > (
        select max(last_ingested_at) - interval {{ var('lookback_seconds') | int }} second
        from {{ this }}
    )
{% endmacro %}
