"""Forward-only numbered migrations, recorded in ``schema_migrations``.

Each ``migrations/NNNN_name.sql`` runs once, in order.  A migration that was
applied and then edited is refused (its checksum no longer matches): write a
new migration instead.  Retention is not a migration: it is a setting
(``BATCHOBS_RETENTION_DAYS``) made true on every run.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from .errors import WarehouseError

__all__ = ["Migration", "MigrationError", "apply", "migrations", "retention_days_from_env"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DEFAULT_RETENTION_DAYS = 400
# Package data beside this module (pyproject.toml's package-data ships the .sql files).
_MIGRATIONS = __name__.rpartition(".")[0] + ".migrations"


class MigrationError(WarehouseError, RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        body = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in body.split(";") if s.strip()]


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files(_MIGRATIONS).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    if not found:  # a build that left the .sql files behind must not pass for "up to date"
        raise MigrationError(
            f"no migrations found in {resources.files(_MIGRATIONS)}: "
            "this install lacks warehouse/migrations/*.sql; reinstall batchobs from its wheel or sdist"
        )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration numbers must run 1..n without gaps, found {versions}")
    return found


def retention_days_from_env() -> int:
    raw = os.environ.get("BATCHOBS_RETENTION_DAYS", str(DEFAULT_RETENTION_DAYS))
    try:
        days = int(raw)
    except ValueError:
        raise MigrationError(f"BATCHOBS_RETENTION_DAYS must be a whole number of days, got {raw!r}") from None
    if not 1 <= days <= 36500:
        raise MigrationError(f"BATCHOBS_RETENTION_DAYS must be between 1 and 36500, got {days}")
    return days


def apply(admin: Any, database: str, retention_days: int) -> list[Migration]:
    """Create ``database`` if needed, apply pending migrations, set retention.

    ``admin`` is a clickhouse-connect client; returns the migrations applied now.
    """
    if not _IDENT.match(database):
        raise MigrationError(f"database name {database!r} is not a plain identifier")
    admin.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    settings = {"database": database}
    admin.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    rows = admin.query(  # database: checked against _IDENT above; identifiers take no parameters
        f"SELECT version, name, checksum FROM {database}.schema_migrations FINAL ORDER BY version"  # noqa: S608
    ).result_rows
    applied = {int(v): (n, c) for v, n, c in rows}
    done = []
    for migration in migrations():
        if migration.version in applied:
            name, checksum = applied[migration.version]
            if checksum != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{name} was changed after it was applied; "
                    "migrations are forward-only: add a new one instead"
                )
            continue
        for statement in migration.statements():
            admin.command(statement, settings=settings)
        admin.insert(
            f"{database}.schema_migrations",
            [[migration.version, migration.name, migration.checksum, datetime.now(timezone.utc)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        done.append(migration)
    _set_retention(admin, database, retention_days)
    return done


def _set_retention(admin: Any, database: str, days: int) -> None:
    current = admin.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = 'events'",
        parameters={"db": database},
    ).result_rows
    if current and ttl_expression(days) not in current[0][0]:
        admin.command(f"ALTER TABLE {database}.events MODIFY TTL {ttl_expression(days)}")


def ttl_expression(days: int) -> str:
    """When a row of ``events`` expires: ``days`` after it arrived.

    Counted from ingested_at, the server's clock at insert, never from emitted_at: an
    event's own clock may be skewed by years, and converting its DateTime64 to the TTL's
    DateTime wraps outside 1970..2106, which expired such rows at insert, silently.
    """
    return f"toDateTime(ingested_at) + toIntervalDay({days})"
