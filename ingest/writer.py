"""Inserting batches: idempotent, retried through outages, bad rows isolated.

* Every insert carries an ``insert_deduplication_token`` derived from the spool
  ranges it holds, so a replay is dropped by ClickHouse.
* Connection failures and server-side trouble are retried with exponential
  backoff and jitter, for as long as it takes: the spool on disk is the buffer and
  nothing more is read meanwhile, so memory stays bounded.
* A data error (ClickHouse cannot parse a row, or a row breaks a constraint) is
  permanent: the batch is bisected until the refused rows stand alone, and those go
  to dead letters with ClickHouse's own message.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from clickhouse_connect.driver.exceptions import DatabaseError

from listener.contract import COLUMNS

from .screen import DeadLetter, Line

__all__ = ["DataError", "Writer", "token_for"]

# ClickHouse codes that mean "this data is wrong", never "try again".
DATA_ERROR_CODES = frozenset({
    6, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 76, 117, 131, 158, 190, 344, 469, 471,
    8, 16,  # THERE_IS_NO_COLUMN, NO_SUCH_COLUMN_IN_TABLE (an unknown field)
    25, 376,  # CANNOT_PARSE_ESCAPE_SEQUENCE, CANNOT_PARSE_UUID
})
_EVENT_COLUMNS = list(COLUMNS)
DEAD_LETTER_COLUMNS = ["received_at", "source", "position", "reason", "raw", "raw_bytes"]
# The contract is strict; ClickHouse's JSON reader is lenient by default (numbers read
# into strings, bools into numbers, ...).  Every leniency is switched off for events.
EVENT_SETTINGS = {
    "date_time_input_format": "basic",  # the contract's own form; anything else was screened
    "input_format_skip_unknown_fields": 0,
    "input_format_json_read_numbers_as_strings": 0,
    "input_format_json_read_bools_as_numbers": 0,
    "input_format_json_read_bools_as_strings": 0,
    "input_format_json_read_objects_as_strings": 0,
    "input_format_json_read_arrays_as_strings": 0,
}


class DataError(Exception):
    """ClickHouse refused the data itself."""


def token_for(parts: Sequence[object]) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


class Writer:
    def __init__(self, client: Any, *, max_backoff_s: float = 30.0, stop: threading.Event | None = None,
                 on_retry: Callable[[Exception, float], None] | None = None) -> None:
        self._client = client
        self._max_backoff = max_backoff_s
        self._stop = stop or threading.Event()
        self._on_retry = on_retry or (lambda exc, wait: None)

    def insert_events(self, body: bytes, token: str) -> None:
        """Insert JSONEachRow rows; raises DataError if ClickHouse refuses the data."""
        # The contract's columns by name: a line that sets another column (ingested_at, which
        # the TTL counts from) is an unknown field, not a row that expires at once.
        self._retrying(lambda: self._client.raw_insert(
            "events", column_names=_EVENT_COLUMNS, insert_block=body, fmt="JSONEachRow",
            settings={**EVENT_SETTINGS, "insert_deduplication_token": token}))

    def insert_rows(self, rows: list[tuple[Line, bytes]], token: str) -> list[DeadLetter]:
        """Insert validated rows; rows ClickHouse still refuses come back as dead letters."""
        if not rows:
            return []
        try:
            self.insert_events(b"".join(row for _, row in rows), token)
            return []
        except DataError as exc:
            if len(rows) == 1:
                return [DeadLetter.of(rows[0][0], f"refused by ClickHouse: {_short(exc)}")]
        half = len(rows) // 2
        return (self.insert_rows(rows[:half], token_for([token, "a"]))
                + self.insert_rows(rows[half:], token_for([token, "b"])))

    def insert_dead_letters(self, letters: list[DeadLetter], token: str) -> None:
        if not letters:
            return
        now = datetime.now(timezone.utc)
        data = [[now, d.source, d.position, d.reason, d.raw, d.raw_bytes] for d in letters]
        self._retrying(lambda: self._client.insert(
            "dead_letters", data, column_names=DEAD_LETTER_COLUMNS,
            settings={"insert_deduplication_token": token}))

    def _retrying(self, action: Callable[[], object]) -> None:
        wait = 0.0
        while True:
            try:
                action()
                return
            except DatabaseError as exc:
                if getattr(exc, "code", None) in DATA_ERROR_CODES or _code_in_text(exc) in DATA_ERROR_CODES:
                    raise DataError(str(exc)) from None
                error: Exception = exc
            except Exception as exc:  # noqa: BLE001 - connection errors of any kind: the warehouse is away
                error = exc
            wait = min(self._max_backoff, max(0.2, wait * 2))
            jittered = wait * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
            self._on_retry(error, jittered)
            if self._stop.wait(jittered):
                # Told to stop while the warehouse is away: the batch stays pending in the
                # checkpoint and is replayed, with the same token, by the next start.
                raise InterruptedError("stopped while the warehouse was unavailable") from error


def _code_in_text(exc: Exception) -> int | None:
    text = str(exc)
    marker = "code: "
    at = text.find(marker)
    if at < 0:
        return None
    digits = ""
    for ch in text[at + len(marker):]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def _short(exc: Exception) -> str:
    text = str(exc)
    at = text.find("DB::Exception:")
    return (text[at + 15:] if at >= 0 else text)[:500].strip()
