"""The ingester: spool files to ClickHouse, batched and exactly-once."""
