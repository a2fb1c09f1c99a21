"""Skewed clocks through the real ingester: every time the contract accepts is stored and kept,
every other one is a dead letter with its reason; none vanish."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timezone
from pathlib import Path

from listener import contract
from warehouse.connection import ClickHouseSettings
from warehouse.migrate import migrations, ttl_expression

from .test_ingest import TASK, ingest_once, line, stored, write_lines

# The skewed clocks: emitted_at far in the past, at the epoch's edge, years ago,
# past 2106 (where DateTime wraps) and past what DateTime64 holds; and the other time columns.
# In the form the listener writes, which the ingester's fast path hands to ClickHouse as it is.
SKEWED: list[tuple[str, str]] = [
    ("emitted_at", "1850-06-01 00:00:00.000000"),
    ("emitted_at", "1969-12-31 23:59:59.999999"),
    ("emitted_at", "1970-01-01 00:00:00.000001"),
    ("emitted_at", "2024-02-29 12:00:00.000000"),
    ("emitted_at", "2262-04-12 00:00:00.000000"),
    ("emitted_at", "9999-12-31 23:59:59.000000"),
    ("start_date", "1850-06-01 00:00:00.000000"),
    ("end_date", "2262-04-12 00:00:00.000000"),
    ("logical_date", "9999-12-31 23:59:59.000000"),
    ("queued_at", "1969-07-20 20:17:40.000000"),
    ("data_interval_end", "2299-12-31 12:00:00.000000"),
]


def skewed_lines() -> list[tuple[bytes, bool]]:
    """One line per skewed time, with whether the contract accepts it."""
    out = []
    for name, when in SKEWED:
        raw = line({**TASK, "event_id": str(uuid.uuid4()), name: when})
        try:
            contract.decode(raw)
            out.append((raw, True))
        except contract.ContractError:
            out.append((raw, False))
    return out


def test_skewed_clocks_land_or_are_dead_letters(database: ClickHouseSettings, tmp_path: Path) -> None:
    """Each skewed-clock event is a row that outlives a TTL pass, or a dead letter naming the time."""
    lines = skewed_lines()
    assert 5 == sum(not ok for _, ok in lines)  # 1850, 9999 and past 2299: outside DateTime64's range
    write_lines(tmp_path / "spool", [raw for raw, _ in lines])
    ingester = ingest_once(database, tmp_path / "spool", tmp_path / "state")
    client = database.client()
    client.command("OPTIMIZE TABLE events FINAL")  # applies the TTL to every part now
    ids, dead = stored(database)
    positions, expected_ids, expected_dead = 0, set(), {}
    for (raw, ok), (name, _) in zip(lines, SKEWED, strict=True):
        if ok:
            expected_ids.add(json.loads(raw)["event_id"])
        else:
            expected_dead[positions] = name
        positions += len(raw)
    assert expected_ids == ids
    assert sorted(expected_dead) == sorted(dead)
    assert all(f"contract: {name}:" in dead[p] and "outside" in dead[p] for p, name in expected_dead.items())
    assert len(ids) == ingester.metrics.events_inserted._value.get()


def test_a_line_cannot_choose_its_own_arrival_time(database: ClickHouseSettings, tmp_path: Path) -> None:
    """ingested_at, which the TTL counts from, is the server's: a line that sets it is a dead letter."""
    good = line({**TASK, "event_id": str(uuid.uuid4())})
    bad = line({**TASK, "event_id": str(uuid.uuid4()), "ingested_at": "1971-01-01 00:00:00.000"})
    write_lines(tmp_path / "spool", [good, bad])
    ingest_once(database, tmp_path / "spool", tmp_path / "state")
    database.client().command("OPTIMIZE TABLE events FINAL")
    ids, dead = stored(database)
    assert {json.loads(good)["event_id"]} == ids
    assert [len(good)] == list(dead)


def test_ttl_counts_from_arrival(database: ClickHouseSettings) -> None:
    """The table's TTL is the one migrate sets, from ingested_at (never emitted_at, which wraps)."""
    engine = database.client().query("SELECT engine_full FROM system.tables WHERE database = {db:String} "
                                     "AND name = 'events'", parameters={"db": database.database}).result_rows[0][0]
    assert ttl_expression(400) in engine and "emitted_at) +" not in engine


def test_table_bounds_are_the_contracts() -> None:
    """The CHECK constraints' bounds are the contract's EARLIEST and LATEST, for every time column."""
    sql = next(m.sql for m in migrations() if m.name == "time_bounds")
    bounds = set(re.findall(r"toDateTime64\('([^']+)', 6, 'UTC'\)", sql))
    fmt = "%Y-%m-%d %H:%M:%S"
    assert {contract.EARLIEST.strftime(fmt), contract.LATEST.strftime(fmt)} == bounds
    times = [n for n, t in contract.COLUMNS.items() if "DateTime64" in t]
    assert all(f"{name}_in_range" in sql and sql.count(f"{name} >= ") == 1 and sql.count(f"{name} < ") == 1
               for name in times)
    assert all(b.tzinfo is timezone.utc for b in (contract.EARLIEST, contract.LATEST))
