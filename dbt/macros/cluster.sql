{#-
  One ClickHouse server, or a cluster: BATCHOBS_DBT_CLUSTER names it (`batchobs dbt` sets it from
  BATCHOBS_CLICKHOUSE_CLUSTER; profiles.yml hands it to dbt-clickhouse as `cluster`, which puts
  ON CLUSTER on its DDL).  On a cluster each table model is dbt-clickhouse's distributed form of
  its materialization: a replicated table on every shard (`<model>_local`) behind a Distributed
  table of the model's own name, sharded by the model's `sharding_key`, so the views, tests,
  audit and Grafana read the same names as on one server.  The replicated tables take the
  server's Keeper path (default_replica_path, /clickhouse/tables/{uuid}/{shard}): dbt renames
  and recreates its tables, which a path naming the table would not survive.
-#}
{% macro on_cluster() %}
  {{ return(env_var('BATCHOBS_DBT_CLUSTER', '') | trim != '') }}
{% endmacro %}

{#- `table` or `incremental` on one server; `distributed_table` or `distributed_incremental` on a cluster. -#}
{% macro batchobs_materialized(materialized) %}
  {{ return(('distributed_' ~ materialized) if on_cluster() else materialized) }}
{% endmacro %}

{% macro batchobs_engine() %}
  {{ return('ReplicatedMergeTree()' if on_cluster() else 'MergeTree()') }}
{% endmacro %}
