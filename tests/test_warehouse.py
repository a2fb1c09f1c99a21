"""The warehouse schema and client factory, against whichever ClickHouse the session chose."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Any

import pytest

from listener import contract
from listener.contract import encode
from listener.testing import history
from warehouse.connection import ClickHouseSettings, SettingsError, resolve
from warehouse.migrate import MigrationError, apply, migrations


def _normalise(ch_type: str) -> str:
    return re.sub(r"\s+", "", ch_type)


class TestSchema:
    def test_events_columns_match_the_contract(self, database: ClickHouseSettings, admin: Any) -> None:
        """Every contract column exists in events with exactly the contract's type."""
        rows = admin.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 'events' "
            "ORDER BY position", parameters={"db": database.database}).result_rows
        stored = {name: _normalise(t) for name, t in rows}
        expected = {name: _normalise(t) for name, t in contract.COLUMNS.items()}
        assert expected == {name: stored.get(name) for name in expected}
        assert ["ingested_at"] == [name for name in stored if name not in expected]

    def test_dead_letters_shape(self, database: ClickHouseSettings, admin: Any) -> None:
        """dead_letters keeps raw line, reason and source position."""
        cols = {n for (n,) in admin.query(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'dead_letters'",
            parameters={"db": database.database}).result_rows}
        assert {"received_at", "source", "position", "reason", "raw", "raw_bytes"} == cols

    def test_migrate_is_idempotent(self, database: ClickHouseSettings, admin: Any) -> None:
        """A second migrate applies nothing and records each migration once."""
        assert [] == apply(admin, database.database, retention_days=400)
        recorded = admin.query(f"SELECT version FROM {database.database}.schema_migrations FINAL "
                               "ORDER BY version").result_rows
        assert [(m.version,) for m in migrations()] == recorded

    def test_edited_migration_is_refused(self, database: ClickHouseSettings, admin: Any) -> None:
        """A migration changed after it was applied stops migrate with a clear error."""
        admin.insert(f"{database.database}.schema_migrations",
                     [[1, "events", "0" * 64, datetime.now(timezone.utc)]],
                     column_names=["version", "name", "checksum", "applied_at"])
        with pytest.raises(MigrationError, match="forward-only"):
            apply(admin, database.database, retention_days=400)

    def test_retention_is_configurable(self, database: ClickHouseSettings, admin: Any) -> None:
        """The events TTL follows the configured retention."""
        apply(admin, database.database, retention_days=30)
        engine = admin.query("SELECT engine_full FROM system.tables WHERE database = {db:String} "
                             "AND name = 'events'", parameters={"db": database.database}).result_rows[0][0]
        assert "toIntervalDay(30)" in engine

    def test_replayed_events_are_stored_once(self, database: ClickHouseSettings) -> None:
        """The same batch inserted twice (same token) and a replayed event leave one row each."""
        client = database.client()
        events = list(history(3))
        body = b"".join(encode(e) for e in events)
        token = hashlib.sha256(body).hexdigest()
        for _ in range(2):
            client.raw_insert("events", insert_block=body, fmt="JSONEachRow",
                              settings={"insert_deduplication_token": token})
        # a replay in another batch (another token): dedup by event_id on the key
        client.raw_insert("events", insert_block=encode(events[0]), fmt="JSONEachRow")
        assert [(len(events), len(events))] == client.query(
            "SELECT count(), uniqExact(event_id) FROM events FINAL").result_rows
        assert len(events) == client.query("SELECT uniqExact(event_id) FROM events").result_rows[0][0]

    def test_contract_line_is_a_jsoneachrow_row(self, database: ClickHouseSettings) -> None:
        """An encoded event inserts as is and reads back with the same id and timestamps."""
        client = database.client()
        event = next(e for e in history(1) if e.duration_s)
        client.raw_insert("events", insert_block=encode(event), fmt="JSONEachRow")
        row = client.query("SELECT toString(event_id), start_date, duration_s, attrs FROM events").result_rows[0]
        # clickhouse-connect returns naive datetimes in the column's zone (UTC here)
        assert (event.event_id, event.start_date.replace(tzinfo=None), event.duration_s, {}) == row


class TestSettings:
    def test_url_parsing(self) -> None:
        """User, password, host, port and database come from the URL."""
        s = ClickHouseSettings.from_url("https://ana:p%40ss@ch.example:9443/audit")
        assert ("ch.example", 9443, "audit", "ana", "p@ss", True) == (
            s.host, s.port, s.database, s.username, s.password, s.secure)

    def test_password_never_shown(self) -> None:
        """repr and the printable URL mask the password."""
        s = ClickHouseSettings.from_url("http://ana:hunter2@127.0.0.1:8123/x")
        assert "hunter2" not in repr(s) and "hunter2" not in s.url
        assert "http://ana:***@127.0.0.1:8123/x" == s.url

    @pytest.mark.parametrize("url", ["ftp://h/x", "http://:8123/x", "http://h:port/x"])
    def test_bad_urls(self, url: str) -> None:
        """Bad URLs name the setting and never echo a password."""
        with pytest.raises(SettingsError, match="BATCHOBS_CLICKHOUSE_URL"):
            ClickHouseSettings.from_url(url.replace("//", "//u:topsecret@") if "@" not in url else url)

    def test_nothing_configured_and_nothing_running(self, tmp_path: Any) -> None:
        """With no URL and no embedded server, resolve says how to get one."""
        with pytest.raises(SettingsError, match="BATCHOBS_CLICKHOUSE_URL"):
            resolve({"BATCHOBS_HOME": str(tmp_path)}, start_embedded=False)

    def test_embedded_default_is_started_and_found(self, tmp_path: Any) -> None:
        """With nothing configured, the embedded server is started once and then reused."""
        env = {"BATCHOBS_HOME": str(tmp_path)}
        first = resolve(env)
        try:
            assert first.host == "127.0.0.1"
            assert first.url == resolve(env).url  # found, not started again
            assert 1 == first.with_database("default").client().command("SELECT 1")
        finally:
            from warehouse import embedded

            running = embedded.find_running(tmp_path / "warehouse")
            assert running is not None
            running.stop()
