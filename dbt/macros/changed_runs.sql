{#-
  The (dag_id, run_id) pairs of `relation` whose rows were ingested after the newest
  row already in this incremental model, less `lookback_seconds`: the runs to
  recompute whole.  Recomputing a run from all its events is what makes late and
  duplicate events harmless (the result is the same however often it is done).
-#}
{% macro changed_runs(relation, ingested_column='ingested_at') %}
    select dag_id, run_id
    from {{ relation }}
    where {{ ingested_column }} > (
        select max(last_ingested_at) - interval {{ var('lookback_seconds') | int }} second
        from {{ this }}
    )
{% endmacro %}
