"""The ingester against the chosen ClickHouse: contract constraints, bad input, replays, retention."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.service import IngestConfig, Ingester
from listener.contract import encode, replace
from listener.testing import history
from warehouse.connection import ClickHouseSettings

GOOD = [json.loads(encode(e)) for e in history(2)]
TASK = next(e for e in GOOD if e["kind"] == "task_instance" and e["duration_s"])


def history_event() -> Any:
    return next(iter(history(1)))


def ingest_once(db: ClickHouseSettings, spool: Path, state: Path, **kwargs: Any) -> Ingester:
    config = IngestConfig(spool_dir=spool, state_dir=state, **kwargs)
    ingester = Ingester(config, db.client(compress="lz4", autogenerate_session_id=False))
    ingester.run(once=True)
    return ingester


WRITER = """
import sys
from pathlib import Path
from listener.spool import Spool
data = sys.stdin.buffer.read()
import socket
spool = Spool(Path(sys.argv[1]), socket.gethostname())
for line in data.split(b"\\0SEP\\0"):
    spool.append(line)
spool.close()
"""


LIVE_WRITER = """
import socket, sys
from pathlib import Path
from listener.spool import Spool
spool = Spool(Path(sys.argv[1]), socket.gethostname())
for line in Path(sys.argv[2]).read_bytes().splitlines(keepends=True):
    spool.append(line)
sys.stdin.read()
"""


def write_lines(spool: Path, lines: list[bytes]) -> None:
    """Append raw lines as the listener does, from a process that then exits (so the file is finished)."""
    subprocess.run([sys.executable, "-c", WRITER, str(spool)], input=b"\0SEP\0".join(lines), check=True,
                   cwd=Path(__file__).parents[1])


def stored(db: ClickHouseSettings) -> tuple[set[str], dict[int, str]]:
    client = db.client()
    ids = {str(r[0]) for r in client.query("SELECT event_id FROM events FINAL").result_rows}
    dead = {int(p): r for p, r in client.query("SELECT position, reason FROM dead_letters FINAL").result_rows}
    return ids, dead


def line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


# (what is wrong, the line) - each breaks exactly one rule of the contract.
BAD_LINES = {
    "unknown kind": line({**TASK, "kind": "task"}),
    "task state": line({**TASK, "state": "queued"}),
    "empty run_id": line({**TASK, "run_id": ""}),
    "try 0": line({**TASK, "try_number": 0}),
    "map_index -2": line({**TASK, "map_index": -2}),
    "long error": line({**TASK, "error_message": "x" * 5000}),
    "negative duration": line({**TASK, "duration_s": -1.0}),
    "attrs value not a string": line({**TASK, "attrs": {"k": 1}}),
    "quoted number": line({**TASK, "try_number": "1"}),
    "overflowing number": line({**TASK, "try_number": 70000}),
    "nil event id": line({**TASK, "event_id": "00000000-0000-0000-0000-000000000000"}),
    "malformed event id": line({**TASK, "event_id": "zzzzzzzz-b04d-5188-86f3-4ebe04fa419a"}),
    "number for text": line({**TASK, "operator": 5}),
    "object for text": line({**TASK, "queue": {"a": "b"}}),
    "lone surrogate": line({**TASK, "error_message": "\udc00"}),  # json.dumps escapes it
    "missing emitted_at": line({k: v for k, v in TASK.items() if k != "emitted_at"}),
    "unknown field": line({**TASK, "surprise": 1}),
    "field name in another case": line({("Operator" if k == "operator" else k): v for k, v in TASK.items()}),
    "not json": b"{not json\n",
    "invalid utf-8": b'{"kind":"\xff\xfe"}\n',
    "bom": b"\xef\xbb\xbf" + line(TASK),
    "crlf": line(TASK)[:-1] + b"\r\n",
    "nul byte": line(TASK).replace(b'"running"', b'"run\x00ning"').replace(b'"success"', b'"succ\x00ess"'),
    "dag run with task": line({**next(e for e in GOOD if e["kind"] == "dag_run"), "task_id": "t"}),
}


class TestContractInTheWarehouse:
    @pytest.mark.parametrize("case", sorted(BAD_LINES))
    def test_each_rule_break_is_a_dead_letter(self, case: str, database: ClickHouseSettings, tmp_path: Path) -> None:
        """A line breaking one contract rule goes to dead_letters; the good lines around it land."""
        good = [line(e) for e in GOOD[:5]]
        bad = BAD_LINES[case]
        write_lines(tmp_path / "spool", [*good[:2], bad, *good[2:]])
        ingest_once(database, tmp_path / "spool", tmp_path / "state")
        ids, dead = stored(database)
        assert {e["event_id"] for e in GOOD[:5]} == ids
        assert [len(good[0]) + len(good[1])] == list(dead)
        assert dead[len(good[0]) + len(good[1])]

    def test_lines_the_screen_leaves_to_the_contract_land_as_the_contract_reads_them(
            self, database: ClickHouseSettings, tmp_path: Path) -> None:
        """Good lines the screen leaves to ClickHouse or the contract (an escaped surrogate
        pair, a null text field) land with the values the contract reads from them."""
        emoji, plain = GOOD[1], GOOD[2]
        lines = [json.dumps({**emoji, "error_message": "\U0001f600 boom"}).encode() + b"\n",  # "\ud83d\ude00"
                 line({**plain, "operator": None})]
        assert b"\\ud83d\\ude00" in lines[0]
        write_lines(tmp_path / "spool", lines)
        ingest_once(database, tmp_path / "spool", tmp_path / "state")
        ids, dead = stored(database)
        assert {emoji["event_id"], plain["event_id"]} == ids and not dead
        got = dict(database.client().query("SELECT event_id, concat(error_message, '|', operator) FROM events FINAL"
                                           ).result_rows)
        assert "\U0001f600 boom|" + emoji["operator"] == got[uuid.UUID(emoji["event_id"])]
        assert plain["error_message"] + "|" == got[uuid.UUID(plain["event_id"])]


def test_only_lf_ends_a_line() -> None:
    """A CR inside a line does not split it (bytes.splitlines would)."""
    from ingest.screen import lines_of

    assert [(10, b"a\rb\n"), (14, b"c")] == [(ln.position, ln.raw) for ln in lines_of("f", 10, b"a\rb\nc")]


def test_screen_sends_only_what_the_contract_would_take() -> None:
    """The fast path's screen: clean lines pass; each kind of bad byte or shape does not."""
    from ingest.screen import BOM, looks_clean

    good = [encode(e) for e in history(1)]
    clean = b"".join(good)
    assert looks_clean(clean, 4096)
    in_a_string = encode(replace(history_event(), error_message="\ufeffwith a BOM inside"))
    assert looks_clean(clean + in_a_string, 4096)  # a BOM inside a string is just a character
    longest = max(len(g) - 1 for g in good)
    assert looks_clean(clean, longest) and not looks_clean(clean, longest - 1)
    task = next(g for g in good if b'"try_number":1,' in g)
    for bad in (task[:-1] + b"\r\n", BOM + task, b"\n", task[:-1] + task,
                task.replace(b'"dag_id":"', b'"dag_id":"\x00'), task.replace(b'"dag_id":"', b'"dag_id":"\xff'),
                task.replace(b'"try_number":1,', b'"try_number":"1",'),
                task.replace(b'"dag_id":', b'\n"dag_id":'),  # one object over two lines
                # two objects on one line, one over two: as many objects as lines
                task[:-1] + task + task.replace(b'"dag_id":', b'\n"dag_id":')):
        assert bad != task and not looks_clean(clean + bad + clean, 4096), bad
        assert not looks_clean(clean + bad + clean, 4096, (clean + bad + clean).count(b"\n")), bad
    assert not looks_clean(clean + task[:-1], 4096)  # no newline at the end


def test_a_dead_letter_is_always_storable() -> None:
    """A reason quoting an exception with lone surrogates is escaped: a dead letter no client
    could send would be retried forever."""
    from ingest.screen import DeadLetter

    letter = DeadLetter("f", 0, "could not be decoded: ValueError: \udcff", b"", 0)
    assert "could not be decoded: ValueError: \\udcff" == letter.reason
    letter.reason.encode("utf-8")


@pytest.mark.parametrize("n", [1, 2, 7, 19, 20, 21, 50])
def test_a_chunk_is_cut_after_exactly_n_lines(n: int) -> None:
    from ingest.spoolfiles import Chunk, SpoolFile

    lines = [b"x" * (1 + (i * 37) % 300) + b"\n" for i in range(20)]  # uneven lengths
    chunk = Chunk(SpoolFile(Path("f"), "w", 1), 100, 100 + len(b"".join(lines)), b"".join(lines))
    cut = chunk.first_lines(n)
    assert cut.data == b"".join(lines[:n]) and cut.end == 100 + len(cut.data) and cut.lines == min(n, 20)


class TestBatches:
    def test_clean_batch_lands_and_spool_file_is_retired(self, database: ClickHouseSettings, tmp_path: Path) -> None:
        """Good events land once; a finished, fully read spool file is deleted."""
        write_lines(tmp_path / "spool", [encode(e) for e in history(20)])
        ingester = ingest_once(database, tmp_path / "spool", tmp_path / "state", max_rows=50)
        assert len(list(history(20))) == database.client().command("SELECT count() FROM events")
        assert [] == list((tmp_path / "spool").glob("*.jsonl"))
        assert ingester.metrics.batches._value.get() >= 7  # 353 rows in batches of 50

    def test_replay_of_pending_batches_adds_nothing(self, database: ClickHouseSettings, tmp_path: Path) -> None:
        """Batches inserted but not committed (a crash with two in flight) are replayed with
        their tokens, in order: no duplicate rows, and reading goes on after them."""
        lines = [encode(e) for e in history(5)]
        write_lines(tmp_path / "spool", lines)
        first = ingest_once(database, tmp_path / "spool", tmp_path / "state", retention="keep", max_rows=20)
        checkpoint = json.loads((tmp_path / "state" / "checkpoint.json").read_text())
        assert checkpoint["pending"] == []
        name = next(iter(checkpoint["offsets"]))
        at_20, at_40 = len(b"".join(lines[:20])), len(b"".join(lines[:40]))
        # as if the process died after both inserts and before either commit
        pending = {"offsets": {}, "pending": [[[name, 0, at_20, ""]], [[name, at_20, at_40, ""]]]}
        (tmp_path / "state" / "checkpoint.json").write_text(json.dumps(pending))
        again = ingest_once(database, tmp_path / "spool", tmp_path / "state", retention="keep", max_rows=20)
        n = len(lines)
        assert (n, n) == database.client().query("SELECT count(), uniqExact(event_id) FROM events").result_rows[0]
        assert first.metrics.events_inserted._value.get() == n
        assert again.metrics.events_read._value.get() == n  # the two replayed, then the rest again
        state = json.loads((tmp_path / "state" / "checkpoint.json").read_text())
        assert ({name: len(b"".join(lines))}, []) == (state["offsets"], state["pending"])

    def test_a_file_finished_while_idle_is_retired(self, database: ClickHouseSettings, tmp_path: Path) -> None:
        """The ingester has read a live writer's file to its end and is idle; when the writer
        exits, the file is finished and is removed without any new batch."""
        spool = tmp_path / "spool"
        lines = tmp_path / "lines.jsonl"
        lines.write_bytes(b"".join(encode(e) for e in history(1)))
        writer = subprocess.Popen(  # appends the lines, then stays alive until its stdin closes
            [sys.executable, "-c", LIVE_WRITER, str(spool), str(lines)], stdin=subprocess.PIPE,
            cwd=Path(__file__).parents[1])
        assert writer.stdin is not None
        config = IngestConfig(spool_dir=spool, state_dir=tmp_path / "state", max_latency_s=0.1)
        ingester = Ingester(config, database.client(autogenerate_session_id=False))
        runner = threading.Thread(target=ingester.run)
        runner.start()
        try:
            n = len(list(history(1)))
            deadline = time.monotonic() + 30
            while database.client().command("SELECT count() FROM events") < n and time.monotonic() < deadline:
                time.sleep(0.05)
            assert database.client().command("SELECT count() FROM events") == n
            assert len(list(spool.glob("*.jsonl"))) == 1  # its writer is alive: not finished
            writer.stdin.close()
            writer.wait(10)
            while list(spool.glob("*.jsonl")) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [] == list(spool.glob("*.jsonl"))
        finally:
            ingester.stop.set()
            runner.join(10)
            writer.kill()

    def test_truncated_tail_and_oversized_line(self, database: ClickHouseSettings, tmp_path: Path) -> None:
        """A dead writer's half line and a line over the limit are dead letters; the rest lands."""
        spool = tmp_path / "spool"
        good = [encode(e) for e in history(1)]
        big = line({**TASK, "error_message": "y" * 3000})
        write_lines(spool, [good[0], big, good[1]])
        with open(next(spool.glob("*.jsonl")), "ab") as handle:
            handle.write(good[2][:40])  # the writer died mid-line (its pid is gone)
        ingest_once(database, spool, tmp_path / "state", max_line_bytes=2048)
        ids, dead = stored(database)
        assert {json.loads(good[0])["event_id"], json.loads(good[1])["event_id"]} == ids
        reasons = sorted(dead.values())
        assert 2 == len(reasons)
        assert any("longer than 2048" in r for r in reasons) and any("truncated" in r for r in reasons)

    def test_a_fragment_and_an_oversized_line_count_as_lines_read(self, database: ClickHouseSettings,
                                                                   tmp_path: Path) -> None:
        """Every line is counted once where it ends: lines read = events inserted + dead letters."""
        spool = tmp_path / "spool"
        good = [encode(e) for e in history(1)]
        write_lines(spool, [good[0], line({**TASK, "error_message": "y" * 3000}), good[1]])
        with open(next(spool.glob("*.jsonl")), "ab") as handle:
            handle.write(good[2][:40])
        metrics = ingest_once(database, spool, tmp_path / "state", max_line_bytes=2048).metrics
        assert (4, 2, 2) == (metrics.events_read._value.get(), metrics.events_inserted._value.get(),
                             metrics.dead_letters._value.get())


class TestPoisonLines:
    def test_a_line_the_decoder_cannot_survive_is_a_dead_letter_and_the_rest_goes_on(
            self, database: ClickHouseSettings, tmp_path: Path) -> None:
        """100,000 '[' then 100,000 ']' (RecursionError in json) between good lines, in a chunk
        the screen refuses: a dead letter naming the error at its position; every other line
        lands; lines read = rows landed + dead letters, and events_inserted = rows landed."""
        good = [encode(e) for e in history(1)]
        poison = b"[" * 100_000 + b"]" * 100_000 + b"\n"
        lines = [*good[:7], poison, *good[7:]]
        write_lines(tmp_path / "spool", lines)
        ingester = ingest_once(database, tmp_path / "spool", tmp_path / "state")
        ids, dead = stored(database)
        at = len(b"".join(good[:7]))
        assert {json.loads(g)["event_id"] for g in good} == ids
        assert [at] == list(dead) and dead[at]
        metrics = ingester.metrics
        assert len(lines) == metrics.events_read._value.get() == len(ids) + len(dead)
        assert len(ids) == metrics.events_inserted._value.get()
        assert 1 == metrics.dead_letters._value.get()


good_events = st.sampled_from(GOOD)
mutations = st.one_of(
    st.binary(min_size=1, max_size=200).map(lambda b: b.replace(b"\n", b" ") + b"\n"),
    st.sampled_from(sorted(BAD_LINES.values())),
    st.tuples(good_events, st.sampled_from(sorted(TASK)), st.one_of(
        st.integers(-10**20, 10**20), st.floats(allow_nan=True), st.text(max_size=20),
        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.booleans())).map(lambda t: line({**t[0], t[1]: t[2]})),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.booleans(), good_events, mutations), min_size=1, max_size=30))
def test_fuzz_every_good_line_lands_every_bad_one_is_dead_lettered(
        plan: list[tuple[bool, dict[str, Any], bytes]], clickhouse: ClickHouseSettings, admin: Any,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hypothesis mixes good events with generated bad lines: nothing is lost, nothing bad lands."""
    import uuid

    from warehouse.migrate import apply

    name = f"fuzz_{uuid.uuid4().hex[:10]}"
    apply(admin, name, retention_days=400)
    db = clickhouse.with_database(name)
    tmp = tmp_path_factory.mktemp("fuzz")
    lines, expected_good, positions = [], set(), []
    offset = 0
    from listener.contract import ContractError, decode

    for use_good, event, bad in plan:
        raw = line(event) if use_good else bad
        try:
            valid = raw.endswith(b"\n") and b"\r" not in raw and b"\x00" not in raw and \
                not raw.startswith(b"\xef\xbb\xbf") and encode(decode(raw[:-1])) is not None
        except (ContractError, UnicodeEncodeError):  # a lone surrogate decodes but cannot be stored
            valid = False
        if valid:
            expected_good.add(str(decode(raw[:-1]).event_id))
        else:
            positions.append(offset)
        lines.append(raw)
        offset += len(raw)
    try:
        write_lines(tmp / "spool", lines)
        ingest_once(db, tmp / "spool", tmp / "state")
        ids, dead = stored(db)
        assert expected_good == ids
        assert sorted(positions) == sorted(dead)
        assert all(dead.values())
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")
