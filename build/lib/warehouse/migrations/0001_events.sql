-- Per-run history: one row per event of the contract (listener/contract.py).
-- ReplacingMergeTree on a sorting key that ends in event_id: a replayed event
-- (same id, same descriptive fields) collapses into one row on merge; readers
-- that need exact counts before a merge use FINAL or count(DISTINCT event_id).
-- The sorting key serves the audit lookups: a DAG, a run of it, a task in it.
CREATE TABLE IF NOT EXISTS events
(
    event_id UUID,
    kind LowCardinality(String),
    schema_version UInt16,
    emitted_at DateTime64(6, 'UTC'),
    instance LowCardinality(String),
    hostname LowCardinality(String),
    dag_id LowCardinality(String),
    run_id String,
    task_id LowCardinality(String),
    map_index Int32,
    try_number UInt16,
    max_tries Int32,
    state LowCardinality(String),
    previous_state LowCardinality(String),
    operator LowCardinality(String),
    queue LowCardinality(String),
    pool LowCardinality(String),
    run_type LowCardinality(String),
    logical_date Nullable(DateTime64(6, 'UTC')),
    data_interval_start Nullable(DateTime64(6, 'UTC')),
    data_interval_end Nullable(DateTime64(6, 'UTC')),
    queued_at Nullable(DateTime64(6, 'UTC')),
    start_date Nullable(DateTime64(6, 'UTC')),
    end_date Nullable(DateTime64(6, 'UTC')),
    duration_s Nullable(Float64),
    error_type LowCardinality(String),
    error_message String,
    metric_name LowCardinality(String),
    metric_value Nullable(Float64),
    metric_unit LowCardinality(String),
    attrs Map(String, String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_task_id task_id TYPE set(1000) GRANULARITY 4,
    INDEX idx_state state TYPE set(16) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(emitted_at)
ORDER BY (dag_id, run_id, task_id, map_index, event_id)
SETTINGS non_replicated_deduplication_window = 10000;
