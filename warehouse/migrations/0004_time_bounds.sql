-- Every time column within the contract's bounds (listener/contract.py EARLIEST..LATEST):
-- what ClickHouse's DateTime64 holds, with a day's margin so that a value a server saturates
-- at the edge of its range is refused rather than stored as another time.  Without this, a
-- line from a skewed clock (1850, 9999) that the table would store but the contract refuses
-- could land through the fast path.  tests/test_ingest_time_bounds.py holds the literals to
-- the contract.  The table's TTL is not set here: it is a setting (warehouse/migrate.py),
-- counted from ingested_at so that no event's own clock can make it expire at insert.
ALTER TABLE events
    ADD CONSTRAINT IF NOT EXISTS emitted_at_in_range CHECK emitted_at >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND emitted_at < toDateTime64('2299-12-31 00:00:00', 6, 'UTC'),
    ADD CONSTRAINT IF NOT EXISTS logical_date_in_range CHECK logical_date IS NULL OR (logical_date >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND logical_date < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS data_interval_start_in_range CHECK data_interval_start IS NULL OR (data_interval_start >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND data_interval_start < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS data_interval_end_in_range CHECK data_interval_end IS NULL OR (data_interval_end >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND data_interval_end < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS queued_at_in_range CHECK queued_at IS NULL OR (queued_at >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND queued_at < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS start_date_in_range CHECK start_date IS NULL OR (start_date >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND start_date < toDateTime64('2299-12-31 00:00:00', 6, 'UTC')),
    ADD CONSTRAINT IF NOT EXISTS end_date_in_range CHECK end_date IS NULL OR (end_date >= toDateTime64('1900-01-02 00:00:00', 6, 'UTC') AND end_date < toDateTime64('2299-12-31 00:00:00', 6, 'UTC'));
