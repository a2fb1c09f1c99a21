"""The batchobs event contract: the one definition of a per-run event.

Standard library only, so the listener, the ingester, the warehouse DDL test
and the dbt sources can all import it without Airflow or ClickHouse.

An event is one JSON object on one line.  Every field is always present in the
encoded form (``None`` where unknown), so the line is also a valid
``JSONEachRow`` row for the ``batchobs.events`` table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

__all__ = [
    "COLUMNS",
    "DAG_RUN",
    "DAG_RUN_STATES",
    "EARLIEST",
    "KINDS",
    "LATEST",
    "MAX_ATTRS",
    "MAX_ERROR_MESSAGE",
    "MAX_TEXT",
    "RECONCILED_STATES",
    "SCHEMA_VERSION",
    "TASK_INSTANCE",
    "TASK_METRIC",
    "TASK_RECONCILED",
    "TASK_STATES",
    "ContractError",
    "Event",
    "decode",
    "encode",
    "event_id_for",
    "from_dict",
    "replace",
]

SCHEMA_VERSION: Final = 1

# Kinds of event.
TASK_INSTANCE: Final = "task_instance"  # a task try changed state (a hook fired)
TASK_RECONCILED: Final = "task_reconciled"  # a state learned after the fact (no hook fired)
DAG_RUN: Final = "dag_run"  # a DAG run changed state
TASK_METRIC: Final = "task_metric"  # a custom per-run metric recorded by task code
KINDS: Final = frozenset({TASK_INSTANCE, TASK_RECONCILED, DAG_RUN, TASK_METRIC})

TASK_STATES: Final = frozenset({"running", "success", "failed", "up_for_retry", "skipped"})
# Reconciliation reports whatever Airflow's metadata DB holds for a try whose
# terminal hook never fired (SIGKILL, OOM, executor failure, upstream failure).
RECONCILED_STATES: Final = frozenset(
    {"success", "failed", "up_for_retry", "skipped", "upstream_failed", "removed"}
)
DAG_RUN_STATES: Final = frozenset({"running", "success", "failed"})

MAX_ERROR_MESSAGE: Final = 4096  # characters kept of an error message
MAX_TEXT: Final = 1024  # characters of any other text field (ids, names)
MAX_ATTRS: Final = 64  # entries in attrs
# Every time is within [EARLIEST, LATEST): what every ClickHouse DateTime64(6) column holds.
# ClickHouse documents DateTime64's range as 1900-01-01 .. 2299-12-31 23:59:59.99999999;
# outside it, versions differ (chDB 26.9 stores 1850 and 9999 as they are, others saturate
# at the edges).  A day's margin on each side keeps a value saturated at an edge out of the
# contract's range, so the table's CHECK (migrations/0004_time_bounds.sql) refuses it.
EARLIEST: Final = datetime(1900, 1, 2, tzinfo=timezone.utc)
LATEST: Final = datetime(2299, 12, 31, tzinfo=timezone.utc)
# What ClickHouse reads a missing DateTime64 as; the table refuses it as emitted_at.
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UUID_NAMESPACE: Final = uuid.UUID("6f1f3c5e-2b0d-4c53-9a47-9d1c5e0b7a11")


class ContractError(ValueError):
    """An event does not satisfy the contract; names the field and the reason."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


# Column name -> ClickHouse type, in column order.  The warehouse DDL and the
# dbt sources are checked against this mapping by tests.
COLUMNS: Final[dict[str, str]] = {
    "event_id": "UUID",
    "kind": "LowCardinality(String)",
    "schema_version": "UInt16",
    "emitted_at": "DateTime64(6, 'UTC')",
    "instance": "LowCardinality(String)",
    "hostname": "LowCardinality(String)",
    "dag_id": "LowCardinality(String)",
    "run_id": "String",
    "task_id": "LowCardinality(String)",
    "map_index": "Int32",
    "try_number": "UInt16",
    "max_tries": "Int32",
    "state": "LowCardinality(String)",
    "previous_state": "LowCardinality(String)",
    "operator": "LowCardinality(String)",
    "queue": "LowCardinality(String)",
    "pool": "LowCardinality(String)",
    "run_type": "LowCardinality(String)",
    "logical_date": "Nullable(DateTime64(6, 'UTC'))",
    "data_interval_start": "Nullable(DateTime64(6, 'UTC'))",
    "data_interval_end": "Nullable(DateTime64(6, 'UTC'))",
    "queued_at": "Nullable(DateTime64(6, 'UTC'))",
    "start_date": "Nullable(DateTime64(6, 'UTC'))",
    "end_date": "Nullable(DateTime64(6, 'UTC'))",
    "duration_s": "Nullable(Float64)",
    "error_type": "LowCardinality(String)",
    "error_message": "String",
    "metric_name": "LowCardinality(String)",
    "metric_value": "Nullable(Float64)",
    "metric_unit": "LowCardinality(String)",
    "attrs": "Map(String, String)",
}

_TIMESTAMPS: Final = (
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "queued_at",
    "start_date",
    "end_date",
)
_TEXTS: Final = (
    "kind",
    "instance",
    "hostname",
    "dag_id",
    "run_id",
    "task_id",
    "state",
    "previous_state",
    "operator",
    "queue",
    "pool",
    "run_type",
    "error_type",
    "metric_name",
    "metric_unit",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One state change (or custom metric) of a task try or a DAG run.

    Text fields use ``""`` for "not applicable"; timestamps and numbers that
    may be unknown use ``None``.  Timestamps are timezone-aware UTC.
    """

    kind: str
    emitted_at: datetime
    instance: str
    dag_id: str
    run_id: str
    state: str = ""
    hostname: str = ""
    task_id: str = ""
    map_index: int = -1
    try_number: int = 0
    max_tries: int = 0
    previous_state: str = ""
    operator: str = ""
    queue: str = ""
    pool: str = ""
    run_type: str = ""
    logical_date: datetime | None = None
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    queued_at: datetime | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    duration_s: float | None = None
    error_type: str = ""
    error_message: str = ""
    metric_name: str = ""
    metric_value: float | None = None
    metric_unit: str = ""
    attrs: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    event_id: str = ""

    def __post_init__(self) -> None:
        _validate(self)
        if not self.event_id:
            object.__setattr__(self, "event_id", event_id_for(self))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: every column of ``COLUMNS``, in order."""
        out: dict[str, Any] = {}
        for name in COLUMNS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = _format_ts(value)
            elif name == "attrs":
                value = dict(value)
            out[name] = value
        return out


def event_id_for(event: Event) -> str:
    """The deterministic id of what an event describes (not of when it was emitted).

    A replay of the same state change yields the same id, so the warehouse can
    deduplicate.  A DAG run re-run after a clear gets a new start_date, hence a
    new id; a task re-run gets a new try_number.
    """
    parts: tuple[object, ...]
    if event.kind == DAG_RUN:
        parts = (event.instance, event.dag_id, event.run_id, event.state, _ts_or_empty(event.start_date))
    elif event.kind == TASK_METRIC:
        parts = (
            event.instance, event.dag_id, event.run_id, event.task_id, event.map_index,
            event.try_number, event.metric_name, sorted(event.attrs.items()),
        )
    else:
        parts = (
            event.instance, event.dag_id, event.run_id, event.task_id, event.map_index,
            event.try_number, event.state,
        )
    key = json.dumps([event.kind, *parts], separators=(",", ":"), ensure_ascii=False)
    return str(uuid.uuid5(_UUID_NAMESPACE, key))


def encode(event: Event) -> bytes:
    """One JSON line (with the trailing newline), UTF-8."""
    return (
        json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        + "\n"
    ).encode("utf-8")


def decode(line: bytes | str) -> Event:
    """Parse and validate one JSON line; raises ContractError naming the field, and nothing else."""
    try:
        # UTF-8 only: json.loads would guess UTF-16 or UTF-32 from the first bytes.
        raw = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except UnicodeDecodeError as exc:
        raise ContractError("line", f"not valid UTF-8 ({exc.reason})") from None
    except ValueError as exc:  # also a number longer than int() accepts
        raise ContractError("line", f"not valid JSON ({exc})") from None
    except RecursionError:  # the parser recurses per level; an event nests two levels deep
        raise ContractError("line", "nested too deeply to be an event") from None
    if not isinstance(raw, dict):
        raise ContractError("line", f"expected a JSON object, got {type(raw).__name__}")
    return from_dict(raw)


def from_dict(raw: Mapping[str, Any]) -> Event:
    """Build a validated Event from a decoded JSON object."""
    unknown = set(raw) - set(COLUMNS)
    if unknown:
        raise ContractError(sorted(unknown)[0], "unknown field")
    version = raw.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or type(version) is not int:
        raise ContractError(
            "schema_version", f"unsupported version {version!r}; this reader knows {SCHEMA_VERSION}"
        )
    for required in ("kind", "emitted_at", "instance", "dag_id", "run_id"):
        if raw.get(required) is None:
            raise ContractError(required, "missing")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _TIMESTAMPS or name == "emitted_at":
            kwargs[name] = None if value is None else _parse_ts(name, value)
        elif name == "event_id":
            kwargs[name] = _parse_uuid(value)
        elif value is not None or name in ("duration_s", "metric_value"):
            kwargs[name] = value
    # A claimed id is kept: producers derive it (event_id_for); readers do not re-derive it.
    return Event(**kwargs)


def _validate(e: Event) -> None:
    for name in _TEXTS:  # types first: a kind or state that is a list is not hashable
        value = getattr(e, name)
        if not isinstance(value, str):
            raise ContractError(name, f"expected a string, got {type(value).__name__}")
        if len(value) > MAX_TEXT:
            raise ContractError(name, f"longer than {MAX_TEXT} characters")
        _check_utf8(name, value)
    if e.kind not in KINDS:
        raise ContractError("kind", f"unknown kind {e.kind!r}; expected one of {sorted(KINDS)}")
    if e.schema_version != SCHEMA_VERSION:
        raise ContractError("schema_version", f"expected {SCHEMA_VERSION}, got {e.schema_version!r}")
    if not isinstance(e.error_message, str):
        raise ContractError("error_message", "expected a string")
    if len(e.error_message) > MAX_ERROR_MESSAGE:
        raise ContractError("error_message", f"longer than {MAX_ERROR_MESSAGE} characters")
    _check_utf8("error_message", e.error_message)
    for name in ("instance", "dag_id", "run_id"):
        if not getattr(e, name):
            raise ContractError(name, "must not be empty")
    for name, low, high in (("map_index", -1, 2**31 - 1), ("try_number", 0, 2**16 - 1),
                            ("max_tries", -1, 2**31 - 1)):
        value = getattr(e, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ContractError(name, f"expected an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise ContractError(name, f"{value} is outside {low}..{high}")
    for name in ("emitted_at", *_TIMESTAMPS):
        value = getattr(e, name)
        if value is None and name != "emitted_at":
            continue
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise ContractError(name, "expected a timezone-aware datetime")
        _check_time(name, value)
    if e.emitted_at == _EPOCH:
        raise ContractError("emitted_at", "1970-01-01 00:00:00 is what the warehouse reads a missing time as")
    for name in ("duration_s", "metric_value"):
        value = getattr(e, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise ContractError(name, f"expected a finite number, got {str(value)[:40]}")
    if e.duration_s is not None and e.duration_s < 0:
        raise ContractError("duration_s", f"must not be negative, got {e.duration_s}")
    _validate_attrs(e.attrs)
    _validate_kind_fields(e)


def _validate_attrs(attrs: object) -> None:
    if not isinstance(attrs, Mapping):
        raise ContractError("attrs", "expected an object of string values")
    if len(attrs) > MAX_ATTRS:
        raise ContractError("attrs", f"more than {MAX_ATTRS} entries")
    for key, value in attrs.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ContractError("attrs", f"entry {key!r} must map a string to a string")
        if len(key) > MAX_TEXT or len(value) > MAX_TEXT:
            raise ContractError("attrs", f"entry {key[:40]!r} longer than {MAX_TEXT} characters")
        _check_utf8("attrs", key)
        _check_utf8("attrs", value)


def _validate_kind_fields(e: Event) -> None:
    if e.kind == DAG_RUN:
        if e.state not in DAG_RUN_STATES:
            raise ContractError("state", f"{e.state!r} is not a DAG-run state {sorted(DAG_RUN_STATES)}")
        if e.task_id:
            raise ContractError("task_id", "must be empty for a dag_run event")
        return
    if not e.task_id:
        raise ContractError("task_id", f"must not be empty for a {e.kind} event")
    if e.try_number < 1 and e.kind != TASK_RECONCILED:  # a reconciled task may never have run
        raise ContractError("try_number", f"must be at least 1 for a {e.kind} event")
    if e.kind == TASK_INSTANCE and e.state not in TASK_STATES:
        raise ContractError("state", f"{e.state!r} is not a task state {sorted(TASK_STATES)}")
    if e.kind == TASK_RECONCILED and e.state not in RECONCILED_STATES:
        raise ContractError("state", f"{e.state!r} is not a reconcilable state {sorted(RECONCILED_STATES)}")
    if e.kind == TASK_METRIC:
        if not e.metric_name:
            raise ContractError("metric_name", "must not be empty for a task_metric event")
        if e.metric_value is None:
            raise ContractError("metric_value", "must be set for a task_metric event")


def _check_utf8(name: str, value: str) -> None:
    # A lone surrogate (from a surrogate-escaped file name, or "\\udc00" in JSON) has no UTF-8 form.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ContractError(name, "holds a lone surrogate, which UTF-8 cannot encode") from None


def _check_time(name: str, value: datetime) -> None:
    try:
        within = EARLIEST <= value < LATEST
    except OverflowError:  # a time near year 1 or 9999 whose offset takes it past the calendar
        within = False
    if not within:
        raise ContractError(name, f"{value.isoformat()[:40]} is outside {EARLIEST:%Y-%m-%d}..{LATEST:%Y-%m-%d} "
                                  "(what the warehouse's time columns hold)")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _format_ts(value: datetime) -> str:
    # ClickHouse's DateTime64 parser reads this form with no special settings.
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _ts_or_empty(value: datetime | None) -> str:
    return "" if value is None else _format_ts(value)


def _parse_ts(name: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise ContractError(name, f"expected a timestamp string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ContractError(name, f"not a timestamp: {value[:40]!r}") from None
    if parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    _check_time(name, parsed)
    return parsed.astimezone(timezone.utc)


def _parse_uuid(value: object) -> str:
    if not isinstance(value, str):
        raise ContractError("event_id", "expected a UUID string")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise ContractError("event_id", f"not a UUID: {value[:40]!r}") from None
    if parsed.int == 0:
        raise ContractError("event_id", "the nil UUID is not an event id")
    return str(parsed)


def replace(event: Event, **changes: Any) -> Event:
    """A copy with fields changed and the event id derived anew."""
    return dataclasses.replace(event, event_id="", **changes)
