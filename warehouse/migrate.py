"""Forward-only numbered migrations, recorded in ``schema_migrations``.

Each ``migrations/NNNN_name.sql`` runs once, in order.  A migration that was
applied and then edited is refused (its checksum no longer matches): write a
new migration instead.  Retention is not a migration: it is a setting
(``BATCHOBS_RETENTION_DAYS``) made true on every run.

The migrations are written for one server; on a cluster (``BATCHOBS_CLICKHOUSE_CLUSTER``)
``warehouse/layout.py`` renders each statement into its ``ON CLUSTER`` form.  A run is a
list of ``Step``s: ``apply`` executes them, ``dry_run`` only lists them (``batchobs
warehouse migrate --dry-run``).  The checksums are those of the files, in both layouts.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from listener.tables import SCHEMA_MIGRATIONS

from .errors import WarehouseError
from .layout import SINGLE_NODE, Layout

__all__ = ["Migration", "MigrationError", "Plan", "Step", "apply", "dry_run", "migrations", "retention_days_from_env"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DEFAULT_RETENTION_DAYS = 400
# Package data beside this module (pyproject.toml's package-data ships the .sql files).
_MIGRATIONS = __name__.rpartition(".")[0] + ".migrations"
_PARAMETER = re.compile(r"\{(?P<name>[A-Za-z_]\w*):[^{}]+\}")


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


@dataclass(frozen=True)
class Step:
    """One statement of a migrate run; ``parameters`` are bound by the server; ``note`` says why."""

    sql: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    in_database: bool = True  # run with the database as the session's (the migrations name no database)

    def display(self) -> str:
        """The statement with its parameters written in, to read (never to run)."""
        from clickhouse_connect.driver.binding import format_query_value

        return _PARAMETER.sub(lambda m: str(format_query_value(self.parameters[m["name"]])), self.sql)


def apply(admin: Any, database: str, retention_days: int, layout: Layout = SINGLE_NODE) -> list[Migration]:
    """Create ``database`` if needed, apply pending migrations, set retention.

    ``admin`` is a clickhouse-connect client; returns the migrations applied now.
    """
    _check_database(database)
    for step in _preamble(layout, database):
        _run(admin, step, database)
    pending = _pending(_applied(admin, database))
    for step in _migration_steps(layout, database, pending):
        _run(admin, step, database)
    retention = _retention_step(layout, database, retention_days, _engine_full(admin, database, layout))
    if retention is not None:
        _run(admin, retention, database)
    return pending


@dataclass(frozen=True)
class Plan:
    """What a migrate run would do: the migrations pending and every statement, in order."""

    pending: list[Migration]
    steps: list[Step]

    def render(self) -> str:
        """The statements as a SQL script, each after a comment saying what it is for."""
        return "".join((f"-- {step.note}\n" if step.note else "") + step.display() + ";\n\n" for step in self.steps)


def dry_run(admin: Any | None, database: str, retention_days: int, layout: Layout = SINGLE_NODE) -> Plan:
    """What ``apply`` would run now, running none of it.

    ``admin`` is asked (read-only) what is applied; None: nothing is, as for a new database.
    """
    _check_database(database)
    applied = _applied(admin, database) if admin is not None and _has_bookkeeping(admin, database) else {}
    pending = _pending(applied)
    current = _engine_full(admin, database, layout) if admin is not None else None
    if current is None and pending:
        current = ""  # created by a pending migration, without a TTL: apply sets it afterwards
    retention = _retention_step(layout, database, retention_days, current)
    return Plan(pending, [*_preamble(layout, database), *_migration_steps(layout, database, pending),
                          *([retention] if retention is not None else [])])


def _check_database(database: str) -> None:
    # Identifiers take no query parameters: every statement names the database checked here.
    if not _IDENT.match(database):
        raise MigrationError(f"database name {database!r} is not a plain identifier")


def _run(admin: Any, step: Step, database: str) -> None:
    admin.command(step.sql, parameters=dict(step.parameters) or None,
                  settings={"database": database} if step.in_database else None)


def _preamble(layout: Layout, database: str) -> list[Step]:
    return [Step(sql, note="the database and the record of applied migrations" if i == 0 else "",
                 in_database=False) for i, sql in enumerate(layout.preamble(database))]


def _has_bookkeeping(admin: Any, database: str) -> bool:
    return bool(admin.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {table:String}",
        parameters={"db": database, "table": SCHEMA_MIGRATIONS}).result_rows[0][0])


def _applied(admin: Any, database: str) -> dict[int, tuple[str, str]]:
    rows = admin.query(  # database: checked by _check_database
        f"SELECT version, name, checksum FROM {database}.{SCHEMA_MIGRATIONS} FINAL ORDER BY version"  # noqa: S608
    ).result_rows
    return {int(v): (n, c) for v, n, c in rows}


def _pending(applied: Mapping[int, tuple[str, str]]) -> list[Migration]:
    pending = []
    for migration in migrations():
        if migration.version in applied:
            name, checksum = applied[migration.version]
            if checksum != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{name} was changed after it was applied; "
                    "migrations are forward-only: add a new one instead"
                )
            continue
        pending.append(migration)
    return pending


def _migration_steps(layout: Layout, database: str, pending: Sequence[Migration]) -> list[Step]:
    steps = []
    for migration in pending:
        label = f"{migration.version:04d}_{migration.name}"
        rendered = [sql for statement in migration.statements() for sql in layout.render(statement, database)]
        steps += [Step(sql, note=label if i == 0 else "") for i, sql in enumerate(rendered)]
        steps.append(Step(
            f"INSERT INTO {database}.{SCHEMA_MIGRATIONS} (version, name, checksum, applied_at) "
            "SELECT {version:UInt32}, {name:String}, {checksum:String}, now64(3)",
            {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
            note=f"recorded as applied: {label}"))
    return steps


def _engine_full(admin: Any, database: str, layout: Layout) -> str | None:
    """The events table's engine clause (with its TTL), None when there is no such table."""
    current = admin.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {table:String}",
        parameters={"db": database, "table": layout.ttl_table()},
    ).result_rows
    return str(current[0][0]) if current else None


def _retention_step(layout: Layout, database: str, days: int, engine_full: str | None) -> Step | None:
    if engine_full is None or ttl_expression(days) in engine_full:
        return None
    return Step(layout.alter_ttl(database, ttl_expression(days)), note=f"retention: {days} days")


def ttl_expression(days: int) -> str:
    """When a row of ``events`` expires: ``days`` after it arrived.

    Counted from ingested_at, the server's clock at insert, never from emitted_at: an
    event's own clock may be skewed by years, and converting its DateTime64 to the TTL's
    DateTime wraps outside 1970..2106, which expired such rows at insert, silently.
    """
    return f"toDateTime(ingested_at) + toIntervalDay({days})"
