-- The event contract's rules (listener/contract.py), enforced by the table itself so
-- the ingester can insert whole batches without decoding each line in Python: a batch
-- with a line that breaks a rule is refused whole, and only then checked line by line.
-- tests/test_ingest.py holds these to the contract, rule by rule.
ALTER TABLE events
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
