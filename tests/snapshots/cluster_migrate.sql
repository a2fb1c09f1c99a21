-- the database and the record of applied migrations
CREATE DATABASE IF NOT EXISTS batchobs ON CLUSTER 'batchobs';

CREATE TABLE IF NOT EXISTS batchobs.schema_migrations ON CLUSTER 'batchobs' (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC')) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/{table}', '{shard}-{replica}') ORDER BY version;

-- 0001_events
CREATE TABLE IF NOT EXISTS batchobs.events_local ON CLUSTER 'batchobs'
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
PARTITION BY toYYYYMM(emitted_at)
ORDER BY (dag_id, run_id, task_id, map_index, event_id)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS batchobs.events ON CLUSTER 'batchobs' AS batchobs.events_local
ENGINE = Distributed('batchobs', 'batchobs', 'events_local', cityHash64(dag_id, run_id));

-- recorded as applied: 0001_events
INSERT INTO batchobs.schema_migrations (version, name, checksum, applied_at) SELECT 1, 'events', 'ac4b2f1ecd0a034524e58dfcdb2574a62f3bf22206dc1bf414fa1a6c3c0448c6', now64(3);

-- 0002_dead_letters
CREATE TABLE IF NOT EXISTS batchobs.dead_letters_local ON CLUSTER 'batchobs'
(
    received_at DateTime64(6, 'UTC'),
    source String,
    position UInt64,
    reason String,
    raw String,
    raw_bytes UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (source, position)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800;

CREATE TABLE IF NOT EXISTS batchobs.dead_letters ON CLUSTER 'batchobs' AS batchobs.dead_letters_local
ENGINE = Distributed('batchobs', 'batchobs', 'dead_letters_local', cityHash64(source));

-- recorded as applied: 0002_dead_letters
INSERT INTO batchobs.schema_migrations (version, name, checksum, applied_at) SELECT 2, 'dead_letters', '81f2c996befb41f53cf49a09b9ede0b53bfe19b6e49e2ad6be6302124e7cb96e', now64(3);

-- 0003_contract_constraints
ALTER TABLE batchobs.events_local ON CLUSTER 'batchobs'
    ADD CONSTRAINT IF NOT EXISTS known_kind CHECK kind IN ('task_instance', 'task_reconciled', 'dag_run', 'task_metric'),
    ADD CONSTRAINT IF NOT EXISTS known_version CHECK schema_version = 1,
    ADD CONSTRAINT IF NOT EXISTS has_event_id CHECK event_id != toUUID('00000000-0000-0000-0000-000000000000'),
    ADD CONSTRAINT IF NOT EXISTS has_emitted_at CHECK toUnixTimestamp64Micro(emitted_at) != 0,
    ADD CONSTRAINT IF NOT EXISTS has_identity CHECK instance != '' AND dag_id != '' AND run_id != '',
    ADD CONSTRAINT IF NOT EXISTS dag_run_shape CHECK kind != 'dag_run' OR (state IN ('running', 'success', 'failed') AND task_id = ''),
    ADD CONSTRAINT IF NOT EXISTS task_shape CHECK kind = 'dag_run' OR (task_id != '' AND (try_number >= 1 OR kind = 'task_reconciled')),
    ADD CONSTRAINT IF NOT EXISTS task_state CHECK kind != 'task_instance' OR state IN ('running', 'success', 'failed', 'up_for_retry', 'skipped'),
    ADD CONSTRAINT IF NOT EXISTS reconciled_state CHECK kind != 'task_reconciled' OR state IN ('success', 'failed', 'up_for_retry', 'skipped', 'upstream_failed', 'removed'),
    ADD CONSTRAINT IF NOT EXISTS metric_shape CHECK kind != 'task_metric' OR (metric_name != '' AND metric_value IS NOT NULL),
    ADD CONSTRAINT IF NOT EXISTS sane_numbers CHECK map_index >= -1 AND max_tries >= -1 AND (duration_s IS NULL OR (isFinite(duration_s) AND duration_s >= 0)) AND (metric_value IS NULL OR isFinite(metric_value)),
    ADD CONSTRAINT IF NOT EXISTS bounded_text CHECK lengthUTF8(error_message) <= 4096 AND lengthUTF8(run_id) <= 1024 AND lengthUTF8(dag_id) <= 1024 AND lengthUTF8(task_id) <= 1024 AND lengthUTF8(instance) <= 1024 AND lengthUTF8(hostname) <= 1024 AND lengthUTF8(state) <= 1024 AND lengthUTF8(previous_state) <= 1024 AND lengthUTF8(operator) <= 1024 AND lengthUTF8(queue) <= 1024 AND lengthUTF8(pool) <= 1024 AND lengthUTF8(run_type) <= 1024 AND lengthUTF8(error_type) <= 1024 AND lengthUTF8(metric_name) <= 1024 AND lengthUTF8(metric_unit) <= 1024,
    ADD CONSTRAINT IF NOT EXISTS bounded_attrs CHECK length(attrs) <= 64 AND arrayAll(k -> lengthUTF8(k) <= 1024, mapKeys(attrs)) AND arrayAll(v -> lengthUTF8(v) <= 1024, mapValues(attrs));

-- recorded as applied: 0003_contract_constraints
INSERT INTO batchobs.schema_migrations (version, name, checksum, applied_at) SELECT 3, 'contract_constraints', 'de36ff225f354b1ac23e2b69b4973a7b306f9a16f607255b6f1e9724f414e72e', now64(3);

-- 0004_time_bounds
ALTER TABLE batchobs.events_local ON CLUSTER 'batchobs'
    ADD CONSTRAINT IF NOT EXISTS emitted_at_in_range CHECK emitted_at >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND emitted_at < toDateTime64('2299-12-31 00:00:00', 6, 'UTC'),
    ADD CONSTRAINT IF NOT EXISTS logical_date_in_range CHECK logical_date IS NULL OR (logical_date >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND logical_date < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS data_interval_start_in_range CHECK data_interval_start IS NULL OR (data_interval_start >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND data_interval_start < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS data_interval_end_in_range CHECK data_interval_end IS NULL OR (data_interval_end >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND data_interval_end < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS queued_at_in_range CHECK queued_at IS NULL OR (queued_at >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND queued_at < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS start_date_in_range CHECK start_date IS NULL OR (start_date >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND start_date < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS end_date_in_range CHECK end_date IS NULL OR (end_date >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND end_date < toDateTime64('2299-12-31 00:00:00', 6, 'UTC'));

-- recorded as applied: 0004_time_bounds
INSERT INTO batchobs.schema_migrations (version, name, checksum, applied_at) SELECT 4, 'time_bounds', 'f49db933e2e5fd65fb2fc30c52f6cfabeb075664d54471bcfec5c321bfdcc750', now64(3);

-- retention: 400 days
ALTER TABLE batchobs.events_local ON CLUSTER 'batchobs' MODIFY TTL toDateTime(ingested_at) + toIntervalDay(400);

