"""Where the schema lives: one ClickHouse server, or a cluster (``BATCHOBS_CLICKHOUSE_CLUSTER``).

The migrations (``warehouse/migrations/*.sql``) are written once, for one server, and run as
written there.  On a cluster, ``ClusterLayout`` renders each statement into ClickHouse's own
cluster form, with nothing home-made in between:

* ``CREATE TABLE IF NOT EXISTS t (...) ENGINE = XMergeTree ...`` becomes ``t_local ON CLUSTER``
  with ``ReplicatedXMergeTree`` (Keeper path ``REPLICA_PATH``, replica ``{replica}``) and the
  table's deduplication window as the replicated one, plus a ``Distributed`` table named ``t``
  in front of it, sharded by ``SHARDING_KEYS[t]``: writers and readers keep using ``t``;
* ``ALTER TABLE t`` becomes ``ALTER TABLE t_local ON CLUSTER``; column changes are made on the
  ``Distributed`` table too (it holds its own copy of the columns);
* any other statement is refused with the reason, so a migration of a new shape fails the
  snapshot test (``tests/test_cluster.py``) rather than reach a cluster half-rendered.

Keeper paths name the shard, database and table rather than the table's UUID: the same
statement run again (``batchobs warehouse migrate --dry-run`` prints it) on a node added later
gives it the same path, so it joins its shard's replicas and fetches their data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from listener.tables import DEAD_LETTERS, EVENTS, SCHEMA_MIGRATIONS

from .errors import WarehouseError

__all__ = ["CLUSTER_VARIABLE", "SHARDING_KEYS", "SINGLE_NODE", "ClusterLayout", "Layout", "LayoutError",
           "SingleNode", "cluster_from_env", "layout_from_env"]

CLUSTER_VARIABLE = "BATCHOBS_CLICKHOUSE_CLUSTER"
LOCAL_SUFFIX = "_local"  # dbt-clickhouse's distributed materializations use the same suffix
# Every event of one DAG run on one shard: the copies of a replayed event (same id, same run)
# meet in one ReplacingMergeTree, so FINAL collapses them, and each run is read whole from one
# shard.  A spool file's dead letters together, keyed (source, position) as on one server.
SHARDING_KEYS: Mapping[str, str] = {EVENTS: "cityHash64(dag_id, run_id)", DEAD_LETTERS: "cityHash64(source)"}
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"
# The bookkeeping is one replication group over every node, whatever its shard: whichever node
# `migrate` reaches knows what is applied.
BOOKKEEPING_PATH = "/clickhouse/tables/all/{database}/{table}"
BOOKKEEPING_REPLICA = "{shard}-{replica}"
# How long a replicated table remembers a block's token (ClickHouse's default is an hour): a
# batch replayed by an ingester restarted within a week is dropped at insert, as on one server.
DEDUP_WINDOW_SECONDS = 7 * 24 * 3600
BOOKKEEPING_COLUMNS = "(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC'))"

_CLUSTER_NAME = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|\{[A-Za-z_][A-Za-z0-9_]{0,63}\})$")
_CREATE = re.compile(r"^CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(?P<name>[A-Za-z_]\w*)\s*(?=\()", re.I)
_ALTER = re.compile(r"^ALTER\s+TABLE\s+(?P<name>[A-Za-z_]\w*)\s+(?P<commands>\S.*)$", re.I | re.S)
_ENGINE = re.compile(r"\bENGINE\s*=\s*(?P<engine>[A-Za-z]*MergeTree)\b(?:\s*\((?P<args>[^()]*)\))?", re.I)
_DEDUP_WINDOW = re.compile(r"\bnon_replicated_deduplication_window\s*=\s*(?P<blocks>\d+)", re.I)
_COLUMN_COMMAND = re.compile(r"^(?:ADD|DROP|MODIFY|RENAME|CLEAR|COMMENT|MATERIALIZE)\s+COLUMN\b", re.I)


class LayoutError(WarehouseError, ValueError):
    """A cluster setting or a statement the cluster form cannot be made of; the message says which."""


class Layout(Protocol):
    """How the schema is laid out on the warehouse; ``cluster`` is None on one server."""

    @property
    def cluster(self) -> str | None: ...

    def describe(self) -> str: ...

    def preamble(self, database: str) -> list[str]:
        """The database and the bookkeeping table, created before anything is read."""
        ...

    def render(self, statement: str, database: str) -> list[str]:
        """One migration statement as this layout runs it."""
        ...

    def ttl_table(self) -> str:
        """The table that holds the events and their TTL."""
        ...

    def alter_ttl(self, database: str, expression: str) -> str: ...


@dataclass(frozen=True)
class SingleNode:
    """One server: the migrations as written."""

    cluster: None = None

    def describe(self) -> str:
        return "one server"

    def preamble(self, database: str) -> list[str]:
        return [f"CREATE DATABASE IF NOT EXISTS {database}",
                f"CREATE TABLE IF NOT EXISTS {database}.{SCHEMA_MIGRATIONS} {BOOKKEEPING_COLUMNS} "
                "ENGINE = ReplacingMergeTree ORDER BY version"]

    def render(self, statement: str, database: str) -> list[str]:
        return [statement]

    def ttl_table(self) -> str:
        return EVENTS

    def alter_ttl(self, database: str, expression: str) -> str:
        return f"ALTER TABLE {database}.{EVENTS} MODIFY TTL {expression}"


SINGLE_NODE = SingleNode()


@dataclass(frozen=True)
class ClusterLayout:
    """A ClickHouse cluster of the servers' ``remote_servers``: replicated tables behind Distributed ones."""

    cluster: str

    def __post_init__(self) -> None:
        if not _CLUSTER_NAME.match(self.cluster):
            raise LayoutError(f"{CLUSTER_VARIABLE} must name a cluster of the servers' remote_servers (letters, "
                              f"digits, '_', '.', '-') or a macro such as {{cluster}}, got {self.cluster!r}")

    @property
    def _on(self) -> str:
        return f"ON CLUSTER '{self.cluster}'"

    def describe(self) -> str:
        return f"cluster '{self.cluster}' (ON CLUSTER; replicated tables behind Distributed ones)"

    def preamble(self, database: str) -> list[str]:
        engine = _replicated("ReplacingMergeTree", None, BOOKKEEPING_PATH, BOOKKEEPING_REPLICA)
        return [f"CREATE DATABASE IF NOT EXISTS {database} {self._on}",
                f"CREATE TABLE IF NOT EXISTS {database}.{SCHEMA_MIGRATIONS} {self._on} {BOOKKEEPING_COLUMNS} "
                f"ENGINE = {engine} ORDER BY version"]

    def render(self, statement: str, database: str) -> list[str]:
        create = _CREATE.match(statement)
        if create:
            return self._create(statement, create, database)
        alter = _ALTER.match(statement)
        if alter:
            return self._alter(statement, alter, database)
        raise LayoutError(f"cannot render this statement for a cluster (only CREATE TABLE IF NOT EXISTS of a "
                          f"MergeTree-family table and ALTER TABLE can be): {' '.join(statement.split())[:80]!r}")

    def ttl_table(self) -> str:
        return EVENTS + LOCAL_SUFFIX

    def alter_ttl(self, database: str, expression: str) -> str:
        return f"ALTER TABLE {database}.{EVENTS}{LOCAL_SUFFIX} {self._on} MODIFY TTL {expression}"

    def _create(self, statement: str, head: re.Match[str], database: str) -> list[str]:
        name = head["name"]
        key = _sharding_key(name)
        engines = list(_ENGINE.finditer(statement))
        if len(engines) != 1 or engines[0]["engine"].lower().startswith("replicated"):
            raise LayoutError(f"table {name}: its migration must give one ENGINE of the MergeTree family, "
                              "not replicated (the cluster form makes it replicated)")
        body = statement[head.end():]
        body = _ENGINE.sub(lambda m: "ENGINE = " + _replicated(m["engine"], m["args"], REPLICA_PATH, REPLICA_NAME),
                           body)
        body = _DEDUP_WINDOW.sub(lambda m: f"replicated_deduplication_window = {m['blocks']}, "
                                           f"replicated_deduplication_window_seconds = {DEDUP_WINDOW_SECONDS}", body)
        local = f"{database}.{name}{LOCAL_SUFFIX}"
        return [f"CREATE TABLE IF NOT EXISTS {local} {self._on}\n{body}",
                f"CREATE TABLE IF NOT EXISTS {database}.{name} {self._on} AS {local}\n"
                f"ENGINE = Distributed('{self.cluster}', '{database}', '{name}{LOCAL_SUFFIX}', {key})"]

    def _alter(self, statement: str, head: re.Match[str], database: str) -> list[str]:
        name = head["name"]
        _sharding_key(name)  # one of the tables this layout made
        columns = [_COLUMN_COMMAND.match(command) is not None for command in _top_level_split(head["commands"])]

        def on(table: str) -> str:
            return f"{statement[:head.start('name')]}{table} {self._on}{statement[head.end('name'):]}"

        local = on(f"{database}.{name}{LOCAL_SUFFIX}")
        if not any(columns):
            return [local]
        if all(columns):  # the shards' tables first: the Distributed table never names a column they lack
            return [local, on(f"{database}.{name}")]
        raise LayoutError(f"ALTER TABLE {name}: put column changes and other changes in separate statements "
                          "(on a cluster the columns are changed on the Distributed table too)")


def _sharding_key(table: str) -> str:
    try:
        return SHARDING_KEYS[table]
    except KeyError:
        raise LayoutError(f"table {table} has no sharding key for a cluster: add one to SHARDING_KEYS in "
                          "warehouse/layout.py") from None


def _replicated(engine: str, args: str | None, path: str, replica: str) -> str:
    extra = f", {args.strip()}" if args and args.strip() else ""
    return f"Replicated{engine}('{path}', '{replica}'{extra})"


def _top_level_split(text: str) -> list[str]:
    """``text`` cut at the commas outside brackets and quotes (an ALTER's list of commands)."""
    parts, depth, quote, start, escaped = [], 0, "", 0, False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def cluster_from_env(env: Mapping[str, str] = os.environ) -> str | None:
    """The configured cluster's name, or None (unset or empty: one server)."""
    return env.get(CLUSTER_VARIABLE, "").strip() or None


def layout_from_env(env: Mapping[str, str] = os.environ) -> Layout:
    """The layout ``BATCHOBS_CLICKHOUSE_CLUSTER`` asks for; a cluster needs a real server's URL."""
    cluster = cluster_from_env(env)
    if cluster is None:
        return SINGLE_NODE
    layout = ClusterLayout(cluster)
    if not env.get("BATCHOBS_CLICKHOUSE_URL", "").strip():
        raise LayoutError(f"{CLUSTER_VARIABLE}={cluster!r} names a cluster but BATCHOBS_CLICKHOUSE_URL is unset "
                          "(the embedded warehouse is one server): point BATCHOBS_CLICKHOUSE_URL at a node of the "
                          f"cluster, or unset {CLUSTER_VARIABLE}")
    return layout
