"""What a client of the embedded server may run, decided on the engine's own parse of the statement.

chDB, like clickhouse-local, trusts its caller: ``file()``, ``url()``, ``INTO
OUTFILE``, ``SYSTEM SHUTDOWN`` all work, and its access control (users, grants,
``user_files_path``) is not enforced for absolute paths (tried on chDB 26.9:
``file('/etc/hostname')`` reads with ``user_files_path`` set).  So every
statement is parsed by the engine itself (``parseQueryToJSON``; ``EXPLAIN AST``
for the few statements that function cannot serialize) and the tree is checked:

* statements: an allow-list of kinds batchobs, dbt-clickhouse, the audit and
  Grafana send; GET allows only the read-only ones (ClickHouse's ``readonly=2``:
  reads and settings);
* table functions and table/database engines: an allow-list of those that stay
  inside the data directory; any other function whose name is an I/O table
  function or engine (``file``, ``url``, ``s3``, ``remote``, ``executable``, ...,
  taken from the engine's own ``system.table_functions`` / ``table_engines`` /
  ``database_engines``) is refused wherever it appears, as is the scalar ``file()``;
* ``INTO OUTFILE``, ``FROM INFILE``, ``ATTACH``, dictionaries, ``SYSTEM`` other
  than ``FLUSH LOGS`` and stopping/starting merges, ``KILL``, ``BACKUP``/``RESTORE``, dropping or renaming the
  protected databases, and settings that name files or disks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any, Protocol

from .engine import ACCESS_DENIED, READONLY, EngineError

__all__ = ["ACCESS_DENIED", "Policy", "denied_setting"]

ALLOWED_TABLE_FUNCTIONS = frozenset({
    "numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateseries", "null",
    "view", "merge", "format", "generaterandom",
})
ALLOWED_ENGINES = frozenset({
    # tables: data stays in the data directory
    "mergetree", "replacingmergetree", "summingmergetree", "aggregatingmergetree", "collapsingmergetree",
    "versionedcollapsingmergetree", "coalescingmergetree", "log", "tinylog", "stripelog", "memory", "null",
    "set", "join", "buffer", "merge", "view", "materializedview",
    # databases
    "atomic", "ordinary",
})
# Scalar functions that read files or the process itself (table functions come from the engine).
DENIED_SCALARS = frozenset({"file", "catboostevaluate", "addresstoline", "addresstolinewithinlines",
                            "addresstosymbol", "demangle", "trap"})
# Settings whose values name files or disks outside the data directory, or open introspection.
DENIED_SETTINGS = frozenset({"format_schema", "output_format_schema", "format_template_resultset",
                             "format_template_row", "disk", "allow_introspection_functions"})
PROTECTED_DATABASES = frozenset({"batchobs", "default", "system", "information_schema"})

_STATEMENTS = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "InsertQuery", "CreateQuery", "AlterQuery",
    "DropQuery", "RenameQuery", "SetQuery", "UseQuery", "OptimizeQuery", "ShowTablesQuery", "ExplainQuery",
    "CheckTableQuery", "DeleteQuery", "CreateSQLFunctionQuery", "DropFunctionQuery", "SystemQuery",
    "ShowColumnsQuery", "ShowIndexesQuery", "UpdateQuery",
})
_READ_ONLY = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SetQuery", "ShowTablesQuery", "ExplainQuery",
    "ShowColumnsQuery", "ShowIndexesQuery", "DescribeQuery", "ShowCreateTableQuery",
    "ShowCreateDatabaseQuery", "ShowCreateViewQuery", "ExistsTableQuery", "ExistsDatabaseQuery",
    "ExistsViewQuery", "ShowProcesslistQuery",
})
# Statements parseQueryToJSON cannot serialize, checked on EXPLAIN AST's node list instead.
_EXPLAIN_ONLY = frozenset(_READ_ONLY - _STATEMENTS | {"InsertQuery"})
# SYSTEM statements that act only on this server's own tables and logs.
_SYSTEM_ALLOWED = frozenset({"FLUSH_LOGS", "STOP_MERGES", "START_MERGES", "STOP_TTL_MERGES", "START_TTL_MERGES"})
CACHED_STATEMENT_CHARS = 8192
_CANNOT_SERIALIZE = "does not support JSON serialization"
_INLINE_DATA = "INSERT with inline data"


class Parser(Protocol):
    def query(self, sql: str, fmt: str, params: dict[str, str]) -> Any: ...


def denied_setting(name: str) -> bool:
    return name.lower() in DENIED_SETTINGS


def _refuse(what: str) -> EngineError:
    return EngineError.of(ACCESS_DENIED, f"Not allowed on the embedded warehouse: {what}. (ACCESS_DENIED)")


class Policy:
    """Checks statements against what clients of the embedded server may do."""

    def __init__(self, parser: Parser) -> None:
        self._parser = parser
        self._lock = threading.Lock()  # one chDB connection parses, one statement at a time
        names = self._names("SELECT lower(name) FROM system.table_functions UNION ALL "
                            "SELECT lower(name) FROM system.table_engines UNION ALL "
                            "SELECT lower(name) FROM system.database_engines")
        self.denied_names = frozenset(names - ALLOWED_TABLE_FUNCTIONS - ALLOWED_ENGINES) | DENIED_SCALARS
        # Clients repeat the same statements (clickhouse-connect's probes, dbt's macros): remember
        # the short ones that passed.  Refusals raise and are not cached.
        self._cached = lru_cache(maxsize=4096)(self._check)

    def check(self, sql: str, read_only: bool, params: Mapping[str, str] | None = None) -> None:
        """Raise ACCESS_DENIED (or READONLY for a write over GET) unless ``sql`` is allowed.

        ``params`` are the query's parameters: ``EXPLAIN AST`` (used where the parser cannot
        serialize the statement, e.g. ``DESCRIBE``) substitutes them, as the query itself will.
        """
        bound = tuple(sorted((params or {}).items()))
        if len(sql) <= CACHED_STATEMENT_CHARS:
            self._cached(sql, read_only, bound)
        else:
            self._check(sql, read_only, bound)

    def _names(self, sql: str) -> set[str]:
        with self._lock:
            raw = self._parser.query(sql, "TabSeparatedRaw", {})
        return set(bytes(raw.bytes()).decode().split())

    def _check(self, sql: str, read_only: bool, params: tuple[tuple[str, str], ...] = ()) -> None:
        tree = self._parse(sql)
        if tree is None:
            self._check_explained(sql, read_only, dict(params))
            return
        kind = str(tree.get("type", ""))
        if read_only and kind not in _READ_ONLY:
            raise EngineError.of(READONLY, "Cannot execute query in readonly mode (GET request). (READONLY)")
        if kind not in _STATEMENTS:
            raise _refuse(f"{kind} statements")
        self._check_statement(kind, tree)
        for key, node in _walk(tree):
            self._check_node(key, node)

    def _parse(self, sql: str) -> dict[str, Any] | None:
        try:
            with self._lock:
                raw = self._parser.query("SELECT parseQueryToJSON({q:String})", "TabSeparatedRaw",
                                         {"q": _escaped(sql)})
        except EngineError as err:
            if _CANNOT_SERIALIZE in err.message or _INLINE_DATA in err.message:
                return None
            raise _strip_scope(err) from None
        tree = json.loads(bytes(raw.bytes()))
        if not isinstance(tree, dict):
            raise _refuse("a statement the parser did not describe")
        return tree

    def _check_statement(self, kind: str, tree: Mapping[str, Any]) -> None:
        if "out_file" in tree:
            raise _refuse("INTO OUTFILE (the result would be written to the server's files)")
        if "infile" in tree:
            raise _refuse("INSERT ... FROM INFILE (send the data in the request body)")
        if kind == "SystemQuery" and tree.get("query_type") not in _SYSTEM_ALLOWED:
            raise _refuse(f"SYSTEM {tree.get('query_type')}")
        if kind == "CreateQuery" and (tree.get("attach") or tree.get("has_attach_from_path")):
            raise _refuse("ATTACH")
        if kind == "CreateQuery" and tree.get("is_dictionary"):
            raise _refuse("dictionaries (their sources reach files, URLs and programs)")
        if kind == "DropQuery" and not tree.get("table") and _protected(tree.get("database")):
            raise _refuse(f"{tree.get('kind', 'DROP')} of database {tree.get('database')}")
        if kind == "RenameQuery" and tree.get("database"):
            for element in tree.get("elements", []):
                if _protected(element.get("from_database")) or _protected(element.get("from_table")):
                    raise _refuse("renaming a protected database")

    def _check_node(self, key: str, node: Mapping[str, Any]) -> None:
        kind = node.get("type")
        if kind == "Function":
            name = str(node.get("name", "")).lower()
            if key in ("table_function", "as_table_function") and name not in ALLOWED_TABLE_FUNCTIONS:
                raise _refuse(f"table function {node.get('name')}")
            if key == "engine" and name not in ALLOWED_ENGINES:
                raise _refuse(f"engine {node.get('name')}")
            if name in self.denied_names:
                raise _refuse(f"function {node.get('name')}")
        elif kind == "SetQuery":
            for change in node.get("changes", []):
                name = str(change.get("name", ""))
                value = change.get("value")
                if denied_setting(name) or (isinstance(value, dict) and value.get("field_type") == "CustomType"):
                    raise _refuse(f"setting {name}")

    def _check_explained(self, sql: str, read_only: bool, params: dict[str, str]) -> None:
        try:
            with self._lock:
                raw = self._parser.query("EXPLAIN AST " + sql, "TabSeparatedRaw", params)
        except EngineError as err:
            raise _strip_scope(err) from None
        lines = bytes(raw.bytes()).decode().splitlines()
        kind = lines[0].split(" ", 1)[0] if lines else ""
        if kind not in _EXPLAIN_ONLY or (read_only and kind not in _READ_ONLY):
            if read_only and kind in _STATEMENTS | _EXPLAIN_ONLY:
                raise EngineError.of(READONLY, "Cannot execute query in readonly mode (GET request). (READONLY)")
            raise _refuse(f"{kind or 'this'} statement")
        for line in lines[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "Function" and parts[1].lower() in self.denied_names:
                raise _refuse(f"function {parts[1]}")
            if parts and parts[0] == "Set":
                raise _refuse("SETTINGS in this statement (send them as URL parameters)")


def _escaped(text: str) -> str:
    """A query parameter's value is read in the engine's escaped text form (as in TSV)."""
    return text.translate(_ESCAPES)


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def _protected(name: object) -> bool:
    return isinstance(name, str) and name.lower() in PROTECTED_DATABASES


def _strip_scope(err: EngineError) -> EngineError:
    """The parser's errors name our wrapping query; say them about the client's statement."""
    message = err.message.split(": In scope SELECT parseQueryToJSON", 1)[0]
    return EngineError(err.code, message)


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(node, dict):
        yield key, node
        for child_key, child in node.items():
            yield from _walk(child, child_key)
    elif isinstance(node, list):
        for child in node:
            yield from _walk(child, key)
