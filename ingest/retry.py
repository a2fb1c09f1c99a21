"""Warehouse errors by kind, and the one retry policy for connecting and inserting.

* **transient** (connection refused, timeout, a 5xx without a data error): retried
  with exponential backoff and jitter, for as long as it takes;
* **rejected** (authentication, unknown database or table, missing migrations,
  permissions): retrying cannot fix it, a person must.  Raised at once as
  :class:`WarehouseRejected` (one line naming the fix) when the caller gives up on
  those (``ingest --once``); otherwise retried slowly, saying why every time;
* **data** (ClickHouse refused the rows themselves): raised at once as
  :class:`DataError`, for the caller to bisect into dead letters;
* **partition limit** (one insert spans more partitions than the engine takes):
  raised at once as :class:`PartitionLimit`, for the caller to cut the insert.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError
from tenacity import RetryCallState, Retrying, wait_random_exponential
from urllib3.exceptions import HTTPError

from listener.tables import DEAD_LETTERS, EVENTS, SCHEMA_MIGRATIONS

from .errors import IngestError, WarehouseRejected

__all__ = ["DataError", "PartitionLimit", "Retry", "Target", "WarehouseUnavailable", "classify", "retry_kind"]

T = TypeVar("T")

# ClickHouse codes that mean "this data is wrong", never "try again".
DATA_ERROR_CODES = frozenset({
    6, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 76, 117, 131, 158, 190, 344, 469, 471,
    8, 16,  # THERE_IS_NO_COLUMN, NO_SUCH_COLUMN_IN_TABLE (an unknown field)
    25, 376,  # CANNOT_PARSE_ESCAPE_SEQUENCE, CANNOT_PARSE_UUID
})
TOO_MANY_PARTS = 252  # also "too many partitions for single INSERT block"
# UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED
AUTHENTICATION = frozenset({192, 193, 194, 516})
UNKNOWN_DATABASE = 81
UNKNOWN_TABLE = 60
ACCESS_DENIED = frozenset({497, 291})  # ACCESS_DENIED, DATABASE_ACCESS_DENIED
READONLY = 164
MIGRATE = "run `batchobs warehouse migrate`"
# What a client, its connection or the network raise.  Anything else (a TypeError, an
# AttributeError) is a fault of the code: it is raised as it is, never retried as an outage.
_WAKE_EVERY_S = 0.1  # how often a wait for an outage looks whether another call got through
WAREHOUSE_FAILURES = (ClickHouseError, OSError, http.client.HTTPException, HTTPError)


class DataError(Exception):
    """ClickHouse refused the data itself."""


class PartitionLimit(Exception):
    """One insert spans more partitions than the engine accepts in one block."""


class WarehouseUnavailable(IngestError):
    """The warehouse did not answer, or failed for a reason that may pass (retried).

    ``unreachable``: no ClickHouse answered at all (refused, timed out, reset), as opposed to
    a server that answered with an error that may pass (overloaded, a replica away).
    """

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class Target:
    """Where the ingester writes, as it may be printed (no password)."""

    url: str
    user: str
    database: str

    @classmethod
    def of(cls, settings: Any) -> Target:
        """From warehouse settings (``url`` masked, ``username``, ``database``)."""
        return cls(str(settings.url), str(settings.username), str(settings.database))

    @classmethod
    def of_client(cls, client: Any) -> Target:
        return cls(str(getattr(client, "url", "ClickHouse")), "(the configured user)",
                   str(getattr(client, "database", "") or "(the configured database)"))


def code_of(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    at = text.find("code: ")
    if at < 0:
        at = text.find("Code: ")
    if at < 0:
        return None
    digits = ""
    for ch in text[at + 6:]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def classify(exc: Exception, target: Target) -> Exception:
    """The exception to act on for ``exc`` (raised by clickhouse-connect)."""
    if isinstance(exc, (IngestError, DataError, PartitionLimit)):
        return exc  # already classified (a check of ours)
    if not isinstance(exc, DatabaseError):
        return WarehouseUnavailable(f"{type(exc).__name__}: {str(exc)[:300]}", unreachable=True)
    code = code_of(exc)
    text = str(exc)
    if code in DATA_ERROR_CODES:
        return DataError(text)
    if code == TOO_MANY_PARTS and "partitions" in text:
        return PartitionLimit(text)
    rejected = rejection(code, text, target)
    if rejected is not None:
        return rejected
    return WarehouseUnavailable(text[:300], unreachable=code is None)  # no ClickHouse code: no answer


def rejection(code: int | None, text: str, target: Target) -> WarehouseRejected | None:
    """The one-line fix for an error no retry can cure; None for any other error."""
    where = f"ClickHouse at {target.url}"
    if code in AUTHENTICATION:
        return WarehouseRejected(
            f"{where} refused the password for user {target.user!r} (code {code}): set the right user and "
            "password in BATCHOBS_CLICKHOUSE_URL (http://USER:PASSWORD@HOST:PORT/DATABASE)", code)
    if code == UNKNOWN_DATABASE:
        return WarehouseRejected(
            f"{where} has no database {target.database!r}: {MIGRATE} (or name the right database in "
            "BATCHOBS_CLICKHOUSE_URL)", code)
    if code == UNKNOWN_TABLE:
        return WarehouseRejected(f"database {target.database!r} at {target.url} has no {_table_in(text)} "
                                 f"table: {MIGRATE}", code)
    if code in ACCESS_DENIED:
        return WarehouseRejected(
            f"{where} denied user {target.user!r} access (code {code}): grant it INSERT on "
            f"{target.database}.{EVENTS} and {target.database}.{DEAD_LETTERS} and SELECT on "
            f"{target.database}.{SCHEMA_MIGRATIONS}, or use a user that has them", code)
    if code == READONLY:
        return WarehouseRejected(f"user {target.user!r} is read-only at {target.url}: give the ingester a user "
                                 "that may INSERT (BATCHOBS_CLICKHOUSE_URL)", code)
    return None


def _table_in(text: str) -> str:
    """The table an UNKNOWN_TABLE message names (``Table db.events does not exist``)."""
    marker = "Table "
    at = text.find(marker)
    if at < 0:
        return "required"
    name = text[at + len(marker):].split(" ", 1)[0].rsplit(".", 1)[-1]
    return name if name.isidentifier() else "required"


class Retry:
    """Run a warehouse call until it succeeds, by the kind of each failure.

    ``on_retry(error, wait_s)`` is told of every failure that is retried (an
    :class:`WarehouseUnavailable` or a :class:`WarehouseRejected`).  ``stop`` ends the
    waiting with :class:`InterruptedError`.  With ``give_up_rejected`` a rejection is
    raised instead of retried.

    One instance serves every insert in flight.  When a call gets through, the calls
    waiting out an outage try again at once rather than sleeping out their backoff (up to
    ``max_backoff_s``): after an outage the backlog starts draining with the first answer.
    With ``probe`` (a cheap call such as clickhouse-connect's ``ping``: True when the server
    answers), a wait for a warehouse that did not answer at all asks it every
    ``probe_every_s`` and ends when it answers; a server that answered with an error keeps
    its backoff (probing would hammer one that is overloaded).
    """

    def __init__(self, target: Target, stop: threading.Event, on_retry: Callable[[IngestError, float], None],
                 *, max_backoff_s: float = 30.0, rejected_every_s: float = 30.0,
                 give_up_rejected: bool = False, probe: Callable[[], bool] | None = None,
                 probe_every_s: float = 1.0) -> None:
        self.target = target
        self.give_up_rejected = give_up_rejected
        self._stop = stop
        self._on_retry = on_retry
        self._rejected_every = rejected_every_s
        self._backoff = wait_random_exponential(multiplier=0.2, max=max_backoff_s, min=0.05)
        self._answers = 0  # calls that got through: a change wakes the waits for an outage
        self._probe = probe
        self._probe_every = probe_every_s
        self._waiting = threading.local()  # this thread's wait: for an outage (True) or a refusal

    def __call__(self, action: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=self._retried,
            wait=self._wait, sleep=self._sleep, before_sleep=self._tell, reraise=True,
        )
        return cast(T, retrying(self._attempt, action))  # tenacity's __call__ is untyped

    def _attempt(self, action: Callable[[], T]) -> T:
        try:
            result = action()
        except (*WAREHOUSE_FAILURES, IngestError, DataError, PartitionLimit) as exc:
            raise classify(exc, self.target) from None
        self._answers += 1
        return result

    def _retried(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, WarehouseRejected):
            return not self.give_up_rejected
        return isinstance(error, WarehouseUnavailable)

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        refused = isinstance(error, WarehouseRejected)
        self._waiting.outage = not refused
        self._waiting.probe = isinstance(error, WarehouseUnavailable) and error.unreachable
        if refused:
            return self._rejected_every  # a person must act: ask again slowly
        return float(self._backoff(state))

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``; for an outage, only until another call gets through."""
        answers, deadline = self._answers, time.monotonic() + seconds
        probe_at = time.monotonic() + self._probe_every
        while not self._stop.wait(min(_WAKE_EVERY_S, max(0.0, deadline - time.monotonic()))):
            now = time.monotonic()
            if now >= deadline or (self._waiting.outage and self._answers != answers):
                return
            if self._probe is not None and self._waiting.probe and now >= probe_at:
                probe_at = now + self._probe_every
                if self._probe():
                    self._answers += 1  # the others waiting go too
                    return
        raise InterruptedError("stopped while the warehouse was unavailable")

    def _tell(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        if isinstance(error, IngestError):
            self._on_retry(error, wait)


def retry_kind(error: IngestError) -> str:
    """The ``kind`` label of the retries metric."""
    return "rejected" if isinstance(error, WarehouseRejected) else "unavailable"
