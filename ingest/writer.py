"""Inserting batches: idempotent, retried through outages, bad rows isolated.

* Every insert carries an ``insert_deduplication_token`` derived from the spool
  ranges it holds, so a replay is dropped by ClickHouse.
* Failures are handled by kind (ingest/retry.py): an outage is retried with backoff
  for as long as it takes (the spool on disk is the buffer and nothing more is read
  meanwhile, so memory stays bounded); a refusal no retry can cure (a wrong password,
  a missing table) names its fix.
* A data error (ClickHouse cannot parse a row, or a row breaks a constraint) is
  permanent: the batch is bisected until the refused rows stand alone, and those go
  to dead letters with ClickHouse's own message.  An insert that spans more
  partitions than the engine takes in one block is cut in halves the same way,
  until every part fits.
* What is counted as inserted is what ClickHouse reports written, not what was sent.
* On a cluster (``events`` is a ``Distributed`` table, found in ``system.tables``) every insert
  is a foreground one (``distributed_foreground_insert``): it returns once each shard's
  replicated table has the rows, so a refusal (a constraint) reaches this writer and is cut
  down as above, and the batch's token travels with the rows to each shard, whose replicas
  share what they have seen through Keeper.  The sharding key sends the same rows of a
  replayed batch to the same shard under the same token, so the replay is dropped there.
  ClickHouse's summary then also counts the Distributed table's own write, so the rows
  acknowledged are counted instead (a dropped replay counts as inserted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from listener.contract import COLUMNS
from listener.tables import DEAD_LETTERS, EVENTS, WRITTEN

from .retry import DataError, PartitionLimit, Retry
from .screen import DeadLetter, Line

__all__ = ["DataError", "PartitionLimit", "Writer", "token_for"]

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
# Through a Distributed table: wait for the shards (else a refusal would only reach the server's log).
DISTRIBUTED_SETTINGS = {"distributed_foreground_insert": 1}

# How the engine takes an insert (not what it accepts), measured on the embedded warehouse
# (benchmarks/README.md): the ingester already runs inserts_in_flight inserts at once, so
# each body is parsed by one thread (parsing one body on several costs ~20% more CPU);
# and an inserted block is not collapsed by its sorting key on the way in (~10% of the
# engine's CPU): ReplacingMergeTree collapses repeated event_ids at merge, and every
# reader that counts events uses FINAL or counts distinct ids.
INSERT_SETTINGS = {"input_format_parallel_parsing": 0, "optimize_on_insert": 0}


def token_for(parts: Sequence[object]) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


class Writer:
    def __init__(self, client: Any, retry: Retry) -> None:
        self._client = client
        self.retry = retry
        self._distributed: bool | None = None  # learnt from the warehouse on the first insert

    @property
    def distributed(self) -> bool:
        """Whether the tables written are Distributed ones (a cluster), as system.tables says."""
        if self._distributed is None:  # two first inserts in flight may both ask: same answer
            rows = self.retry(lambda: self._client.query(
                "SELECT name, engine FROM system.tables WHERE database = currentDatabase() "
                "AND has({names:Array(String)}, name)", parameters={"names": list(WRITTEN)}).result_rows)
            self._distributed = any(engine == "Distributed" for _, engine in rows)
        return self._distributed

    def _settings(self, token: str, **settings: Any) -> dict[str, Any]:
        return {**settings, **(DISTRIBUTED_SETTINGS if self.distributed else {}), "insert_deduplication_token": token}

    def insert_events(self, body: bytes | bytearray, token: str, rows: int) -> int:
        """Insert ``rows`` JSONEachRow rows; the number ClickHouse reports written.

        Raises DataError if ClickHouse refuses the data, PartitionLimit if the rows span
        more partitions than one insert may.
        """
        settings = self._settings(token, **EVENT_SETTINGS, **INSERT_SETTINGS)
        # A memoryview, not bytes: clickhouse-connect would copy bytes to put the INSERT in
        # front of them; a buffer goes out as it is, the statement in the URL.
        summary = self.retry(lambda: self._client.raw_insert(
            EVENTS, column_names=_EVENT_COLUMNS, insert_block=memoryview(body), fmt="JSONEachRow", settings=settings))
        reported = getattr(summary, "summary", None)
        if isinstance(reported, dict) and "written_rows" in reported and not self.distributed:
            return int(reported["written_rows"])
        return rows  # no summary, or one that counts the Distributed table too: what was acknowledged

    def insert_rows(self, rows: list[tuple[Line, bytes]], token: str) -> tuple[int, list[DeadLetter]]:
        """Insert validated rows: (rows written, rows ClickHouse still refuses as dead letters)."""
        if not rows:
            return 0, []
        try:
            return self.insert_events(b"".join(row for _, row in rows), token, len(rows)), []
        except DataError as exc:
            if len(rows) == 1:
                return 0, [DeadLetter.of(rows[0][0], f"refused by ClickHouse: {_short(exc)}")]
        except PartitionLimit as exc:
            if len(rows) == 1:  # one row is one partition: only a limit below 1 refuses it
                return 0, [DeadLetter.of(rows[0][0], f"refused by ClickHouse: {_short(exc)}")]
        half = len(rows) // 2
        first = self.insert_rows(rows[:half], token_for([token, "a"]))
        second = self.insert_rows(rows[half:], token_for([token, "b"]))
        return first[0] + second[0], first[1] + second[1]

    def insert_dead_letters(self, letters: list[DeadLetter], token: str) -> None:
        if not letters:
            return
        now = datetime.now(timezone.utc)
        data = [[now, d.source, d.position, d.reason, d.raw, d.raw_bytes] for d in letters]
        settings = self._settings(token)
        self.retry(lambda: self._client.insert(DEAD_LETTERS, data, column_names=DEAD_LETTER_COLUMNS,
                                               settings=settings))


def _short(exc: Exception) -> str:
    text = str(exc)
    at = text.find("DB::Exception:")
    return (text[at + 15:] if at >= 0 else text)[:500].strip()
