#!/usr/bin/env python3
"""A coverage-guided fuzz target (atheris) over the ingester's screen, decode and insert path.

Each input becomes one finished spool file, ingested by a real ``Ingester`` into a real
ClickHouse (the embedded server unless ``BATCHOBS_FUZZ_CLICKHOUSE`` names one).  After
every input the invariant of the ingester is checked:

* lines read = lines landed + dead letters (the metrics ``events_read``,
  ``events_inserted``, ``dead_letters``), and that is every line of the file;
* the lines landed are exactly the lines the contract accepts (listener/contract.py plus
  the spool's byte rules), and ``events`` holds exactly their distinct event ids;
* the dead letters are exactly at the positions of the other lines, each with a reason,
  and ``dead_letters`` holds as many rows as the metric counts.

An input is read two ways (its first byte chooses): as the spool file's bytes themselves
(libFuzzer's byte mutations of real lines), or as a plan of lines drawn from a
``FuzzedDataProvider``: good events, every JSON type in every column, deep nesting, huge
and non-finite numbers, invalid UTF-8, BOMs, CR, NUL, lines at and past the size limit, a
last line cut short.

tests/test_ingest_fuzz.py runs it for a bounded time and replays ``tests/fuzz_corpus/``
(inputs found by longer runs) as regular tests.  A longer run by hand (it starts its own
embedded server), keeping new inputs in the corpus, then shrinking the corpus:

    .venv/bin/python tests/fuzz_ingest.py -max_total_time=900 /tmp/found tests/fuzz_corpus
    # libFuzzer's merge runs the script itself (its first argument): the venv's python first on PATH
    PATH=$PWD/.venv/bin:$PATH tests/fuzz_ingest.py -merge=1 /tmp/min tests/fuzz_corpus /tmp/found
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import atheris

if __name__ == "__main__":  # fuzzing: coverage of the ingester and the contract guides the mutations
    with atheris.instrument_imports(include=["ingest", "listener.contract"]):
        import ingest.service  # noqa: F401 - imported to be instrumented, used below
        import listener.contract  # noqa: F401 - imported to be instrumented, used below

from ingest.screen import BOM
from ingest.service import IngestConfig, Ingester
from listener.contract import COLUMNS, decode, encode
from listener.spool import file_name, host_token
from listener.testing import history
from warehouse.connection import ClickHouseSettings
from warehouse.migrate import apply

MAX_LINE = 4096  # the ingester's line limit here: small enough to reach, large enough for deep nesting to be decoded
GOOD = [json.loads(encode(e)) for e in history(1)]
FIELDS = [*COLUMNS, "surprise"]
_names = itertools.count()

# Literals json.dumps cannot write, put into a line in place of a string value.
NUMBERS = [b"1e309", b"-1e309", b"NaN", b"Infinity", b"-Infinity", b"18446744073709551616",
           b"-9223372036854775809", b"1" + b"0" * 400, b"1e-400", b"-0", b"1.0", b"1E2", b"0x10", b"01", b"+1",
           b".5", b"1.", b"4294967296", b"65536", b"2147483648", b"-2147483649"]
BYTES = [b"\x00", b"\r", b"\n", b"\xff", BOM, b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\\", b'"', b"\t",
         b"\x1f", b"\\u0000", b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b" ", b"}", b"{", b","]
NESTS = [(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")]


class Quiet:
    """A logger that says nothing: the fuzz reports through its own assertions."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


# -- inputs ------------------------------------------------------------------------
def spool_bytes(data: bytes) -> tuple[bytes, int]:
    """The spool file an input stands for, and the ingester's batch size (rows) for it."""
    if not data:
        return b"", 1
    # Batches of 1 or 3 rows mix the fast path and bisection in one input; whole-file batches are quicker.
    rows = (1, 3, 10_000, 10_000)[(data[0] >> 1) % 4]
    if data[0] % 2 == 0:
        return data[1:], rows
    fdp = atheris.FuzzedDataProvider(data[1:])
    lines = [_line(fdp) for _ in range(fdp.ConsumeIntInRange(1, 12))]
    body = b"".join(lines)
    if fdp.ConsumeBool() and body:
        body = body[: -fdp.ConsumeIntInRange(1, min(len(body), 64))]  # the writer died mid-line
    return body, rows


def _line(fdp: Any) -> bytes:
    event = dict(GOOD[fdp.ConsumeIntInRange(0, len(GOOD) - 1)])
    choice = fdp.ConsumeIntInRange(0, 7)
    if choice == 1:  # any JSON value in any column (or an unknown one)
        event[fdp.PickValueInList(FIELDS)] = _value(fdp, 3)
    elif choice == 2:
        event.pop(fdp.PickValueInList(FIELDS), None)
    elif choice == 3:  # a literal json.dumps cannot write, in any column
        return _dumps(event).replace(_swap(event, fdp), fdp.PickValueInList(NUMBERS))
    elif choice == 4:  # bytes spliced into a good line
        raw = _dumps(event)
        at = fdp.ConsumeIntInRange(0, len(raw) - 1)
        cut = fdp.ConsumeIntInRange(0, 3)
        return raw[:at] + fdp.PickValueInList(BYTES) + raw[at + cut:]
    elif choice == 5:  # deep nesting, as the line or in a column
        depth = fdp.ConsumeIntInRange(1, 3000)
        opener, closer = fdp.PickValueInList(NESTS)
        nest = opener * depth + b"1" + closer * depth
        if fdp.ConsumeBool():
            return nest + b"\n"
        return _dumps(event).replace(_swap(event, fdp), nest)
    elif choice == 6:  # at, just under and just past the line limit (counted in bytes, not characters)
        event["error_message"] = ""
        pad = fdp.PickValueInList(["x", "\u00e9", "\U0001f600"])
        want = MAX_LINE + fdp.ConsumeIntInRange(-2, 2)
        while len(_dumps(event)) - 1 < want:
            event["error_message"] += pad
        return _dumps(event)
    elif choice == 7:  # bytes as they come
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256)) + b"\n"
    return _dumps(event)


def _value(fdp: Any, depth: int) -> Any:
    kind = fdp.ConsumeIntInRange(0, 8 if depth > 0 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 10))
    if kind == 3:
        return fdp.ConsumeFloat()  # also inf and nan, which json.dumps writes as Infinity, NaN
    if kind == 4:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40))  # lone surrogates too
    if kind == 5:  # something like a timestamp, in or out of every range
        year = fdp.ConsumeIntInRange(0, 10000)
        return (f"{year:04d}-{fdp.ConsumeIntInRange(0, 13):02d}-{fdp.ConsumeIntInRange(0, 32):02d}"
                f"{fdp.PickValueInList([' ', 'T', ''])}{fdp.ConsumeIntInRange(0, 25):02d}:00:00"
                f"{fdp.PickValueInList(['', '.000001', '.9999999', 'Z', '+05:00', '-23:59'])}")
    if kind == 6:
        return [_value(fdp, depth - 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 7:
        return {fdp.ConsumeUnicode(4): _value(fdp, depth - 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}
    return {fdp.ConsumeUnicodeNoSurrogates(8): fdp.ConsumeUnicodeNoSurrogates(8)
            for _ in range(fdp.ConsumeIntInRange(0, 70))}  # attrs-like, up to past MAX_ATTRS


def _swap(event: dict[str, Any], fdp: Any) -> bytes:
    """Set a column to a marker string; returns the marker as it is written."""
    event[fdp.PickValueInList(FIELDS)] = "\x01swap\x01"
    return b'"\\u0001swap\\u0001"'


def _dumps(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


# -- the oracle --------------------------------------------------------------------
def event_id_if_good(raw: bytes) -> str | None:
    """The event id of a line the contract accepts (with the spool's byte rules), else None."""
    body = raw[:-1]
    if (not raw.endswith(b"\n") or len(body) > MAX_LINE or body.endswith(b"\r") or body.startswith(BOM)
            or b"\x00" in body or not body.strip()):
        return None
    try:
        event = decode(body)
        encode(event)  # a lone surrogate decodes but cannot be stored
    except Exception:  # noqa: BLE001 - whatever the contract raises, the line is not an event
        return None
    return event.event_id


def split_lf(content: bytes) -> list[tuple[int, bytes]]:
    out, position = [], 0
    while position < len(content):
        end = content.find(b"\n", position)
        raw = content[position:] if end < 0 else content[position : end + 1]
        out.append((position, raw))
        position += len(raw)
    return out


# -- one input ---------------------------------------------------------------------
class Target:
    """Ingests inputs into one database (emptied before each) and checks the invariant."""

    def __init__(self, settings: ClickHouseSettings, scratch: Path | None = None) -> None:
        self.client = settings.client(autogenerate_session_id=False)
        self.scratch = scratch or Path(tempfile.mkdtemp(prefix="batchobs-fuzz-"))

    def __call__(self, data: bytes) -> None:
        content, rows = spool_bytes(data)
        self.client.command("TRUNCATE TABLE events")
        self.client.command("TRUNCATE TABLE dead_letters")
        work = self.scratch / str(next(_names))
        spool = work / "spool"
        spool.mkdir(parents=True)
        # a new name each time: its ranges, hence its dedup tokens, are new to the table; no
        # writer holds it, so it is finished
        name = file_name(host_token(socket.gethostname()), os.getpid(), time.time_ns(), 1)
        (spool / name).write_bytes(content)
        try:
            self.check(content, rows, spool, work / "state")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def check(self, content: bytes, rows: int, spool: Path, state: Path) -> None:
        config = IngestConfig(spool_dir=spool, state_dir=state, max_rows=rows, max_line_bytes=MAX_LINE,
                              max_latency_s=0.01)
        ingester = Ingester(config, self.client, log=Quiet())
        ingester.run(once=True)
        lines = split_lf(content)
        good = {position: event_id_if_good(raw) for position, raw in lines}
        metrics = ingester.metrics
        read, inserted = metrics.events_read._value.get(), metrics.events_inserted._value.get()
        dead = metrics.dead_letters._value.get()
        ids = {str(r[0]) for r in self.client.query("SELECT DISTINCT event_id FROM events").result_rows}
        dead_at = {int(r[0]): r[1] for r in self.client.query("SELECT position, reason FROM dead_letters").result_rows}
        assert len(lines) == read, ("lines read", len(lines), read)
        assert read == inserted + dead, ("read = landed + dead letters", read, inserted, dead)
        # Rows, not distinct ids: a line repeated lands twice (and ReplacingMergeTree may merge the two at any time).
        assert sum(1 for i in good.values() if i) == inserted, ("events_inserted = good lines", good, inserted)
        assert dead == len(dead_at), ("dead_letters = rows in dead_letters", dead, len(dead_at))
        assert {i for i in good.values() if i} == ids, ("landed ids = the contract's", good, ids)
        assert {p for p, i in good.items() if i is None} == set(dead_at), ("dead letters where", good, dead_at)
        assert all(dead_at.values()), dead_at


# -- set-up ------------------------------------------------------------------------
ENV = "BATCHOBS_FUZZ_CLICKHOUSE"  # JSON of the connection settings, database included (created and migrated)


def prepare(admin: Any, name: str) -> None:
    """Create and migrate the fuzz database.  Its retention TTL is removed: what is fuzzed
    is what the ingester lands, not the table's retention of old or future dates."""
    apply(admin, name, retention_days=400)
    admin.command(f"ALTER TABLE {name}.events REMOVE TTL")


def main() -> int:
    """Fuzz against ``$BATCHOBS_FUZZ_CLICKHOUSE``; without it, start an embedded server and
    fuzz in a child process (libFuzzer ends its process when done: the server must outlive it)."""
    given = os.environ.get(ENV)
    if given:
        target = Target(ClickHouseSettings(**json.loads(given)))
        atheris.Setup(sys.argv, target)
        atheris.Fuzz()
        return 0
    from warehouse import embedded

    with tempfile.TemporaryDirectory(prefix="batchobs-fuzz-warehouse-") as data:
        server = embedded.start(Path(data))
        try:
            base = ClickHouseSettings.from_url(server.url + "/default")
            name = f"fuzz_{uuid.uuid4().hex[:10]}"
            prepare(base.client(), name)
            env = dict(os.environ, **{ENV: json.dumps(dataclasses.asdict(base.with_database(name)))})
            return subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env, check=False).returncode
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
