-- Lines the ingester could not accept, with why and where they came from.
-- Keyed on (source, position) so a replayed dead letter is stored once.
CREATE TABLE IF NOT EXISTS dead_letters
(
    received_at DateTime64(6, 'UTC'),
    source String,
    position UInt64,
    reason String,
    raw String,
    raw_bytes UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (source, position)
SETTINGS non_replicated_deduplication_window = 10000;
