"""The batchobs app: the ``batchobs`` command line, the main job, audit questions, the dbt
runner and Pushgateway upkeep, over the ingester, the warehouse and the listener."""
