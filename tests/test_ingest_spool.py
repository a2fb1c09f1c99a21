"""The spool directory read defensively: odd entries skipped and reported once, files that
change under the reader detected, reported and read again from what is there."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.lock import LOCK_NAME
from ingest.service import IngestConfig, Ingester
from listener.contract import encode
from listener.spool import creating_name, file_name, host_token
from listener.testing import history
from warehouse.connection import ClickHouseSettings

from .test_ingest import stored, write_lines

ROOT = Path(__file__).resolve().parents[1]
HOST = host_token(socket.gethostname())
EVENTS = [encode(e) for e in history(10)]  # 176 events: every slice below is full


class Recorder:
    """A logger that keeps what it is told (the ingester's log is structlog-shaped)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.records.append((level, event, fields))

    def warnings(self, event: str) -> list[dict[str, Any]]:
        return [fields for level, name, fields in self.records if level == "warning" and name == event]


def ingester(db: ClickHouseSettings, spool: Path, state: Path, **kwargs: Any) -> tuple[Ingester, Recorder]:
    log = Recorder()
    config = IngestConfig(spool_dir=spool, state_dir=state, **kwargs)
    return Ingester(config, db.client(autogenerate_session_id=False), log=log), log


def ids_of(lines: list[bytes]) -> set[str]:
    return {json.loads(raw)["event_id"] for raw in lines}


def skipped(ing: Ingester, why: str) -> float:
    return float(ing.metrics.spool_entries_skipped.labels(why)._value.get())


class TestOddEntries:
    def test_odd_entries_are_skipped_once_each_and_good_files_land(self, database: ClickHouseSettings,
                                                                   tmp_path: Path) -> None:
        """Another name, a directory, a symlink to a file elsewhere, a symlink loop and a FIFO
        named like spool files: none is followed or read, each is reported once (however many
        polls) and counted; the good file beside them lands."""
        spool = tmp_path / "spool"
        spool.mkdir()
        elsewhere = tmp_path / "elsewhere.jsonl"  # events that are not the spool's
        elsewhere.write_bytes(b"".join(EVENTS[100:110]) + b"root:x:0:0:root:/root:/bin/bash\n")
        (spool / f"{HOST}-1-1-000001.jsonl").mkdir()
        (spool / f"{HOST}-1-2-000001.jsonl").symlink_to(elsewhere)
        (spool / f"{HOST}-1-3-000001.jsonl").symlink_to(spool / f"{HOST}-1-3-000001.jsonl")  # a loop
        os.mkfifo(spool / f"{HOST}-1-4-000001.jsonl")  # opening it would block
        (spool / "events.jsonl").write_bytes(b"".join(EVENTS[110:120]))  # not the listener's name
        undecodable = os.fsdecode(b"h\xff-1-5-000001.jsonl")  # the listener's shape, not UTF-8
        (spool / undecodable).write_bytes(b"".join(EVENTS[120:130]))
        write_lines(spool, EVENTS[:50])
        ing, log = ingester(database, spool, tmp_path / "state")
        ing.run(once=True)
        ing.run(once=True)  # polls again: no second warning
        ids, dead = stored(database)
        assert ids_of(EVENTS[:50]) == ids and {} == dead
        warned = sorted(w["entry"] for w in log.warnings("spool directory entry skipped"))
        assert sorted(["events.jsonl", undecodable, *(f"{HOST}-1-{n}-000001.jsonl" for n in range(1, 5))]) == warned
        assert (2.0, 4.0) == (skipped(ing, "name"), skipped(ing, "type"))
        assert (spool / f"{HOST}-1-2-000001.jsonl").is_symlink() and elsewhere.exists()  # nothing retired

    def test_an_unreadable_file_is_skipped_and_does_not_block_the_others(self, database: ClickHouseSettings,
                                                                         tmp_path: Path) -> None:
        """A spool file the ingester may not read is reported once and counted; the file after
        it lands (the ingester runs without the power to read any file, as a real service user)."""
        spool = tmp_path / "spool"
        write_lines(spool, EVENTS[:30])
        unreadable = spool / f"{HOST}-1-1-000001.jsonl"  # sorts before the good file
        unreadable.write_bytes(b"".join(EVENTS[30:40]))
        unreadable.chmod(0)
        state = tmp_path / "state"
        report = run_as_service_user(database, spool, state)
        ids, dead = stored(database)
        assert ids_of(EVENTS[:30]) == ids and {} == dead
        assert [unreadable.name] == report["warned"]
        assert 1.0 == report["unreadable"]
        assert unreadable.exists()


class TestFilesBeingCreated:
    def test_temporary_files_of_dead_writers_go_quietly(self, database: ClickHouseSettings, tmp_path: Path) -> None:
        """A writer's temporary file (listener/spool.py) is never read or warned about; one its
        writer died with (empty, or a second name of a spool file) is removed, one being
        created (locked) is left; the spool file behind a second name lands and is retired."""
        spool = tmp_path / "spool"
        write_lines(spool, EVENTS[:20])
        (written,) = spool.iterdir()
        os.link(written, spool / creating_name(written.name))  # died between linking and unlinking
        (spool / creating_name(file_name(HOST, 1, 1, 1))).write_bytes(b"")  # died before linking
        being_created = spool / creating_name(file_name(HOST, 2, 2, 1))
        being_created.write_bytes(b"")
        with open(being_created, "rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            ing, log = ingester(database, spool, tmp_path / "state")
            ing.run(once=True)
            assert [being_created.name] == [p.name for p in spool.iterdir() if p.name != LOCK_NAME]
        ids, dead = stored(database)
        assert ids_of(EVENTS[:20]) == ids and {} == dead
        assert [] == log.warnings("spool directory entry skipped")


SERVICE = """
import json, os, sys
from pathlib import Path
from ingest.lock import LOCK_NAME
from ingest.service import IngestConfig, Ingester
from warehouse.connection import ClickHouseSettings
warned = []
class Log:
    def __getattr__(self, level):
        def record(event, **fields):
            if level == "warning" and event == "spool directory entry skipped":
                warned.append(fields["entry"])
        return record
settings = ClickHouseSettings(**json.loads(os.environ["TEST_CLICKHOUSE"]))
ing = Ingester(IngestConfig(spool_dir=Path(sys.argv[1]), state_dir=Path(sys.argv[2])),
               settings.client(autogenerate_session_id=False), log=Log())
ing.run(once=True)
ing.run(once=True)
print(json.dumps({"warned": warned, "unreadable": ing.metrics.spool_entries_skipped.labels("unreadable")._value.get()}))
"""


def run_as_service_user(db: ClickHouseSettings, spool: Path, state: Path) -> dict[str, Any]:
    """Ingest (twice) in a child process that file modes bind: as root, one without the
    capabilities that override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux): no way to make a file unreadable")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    env = dict(os.environ, TEST_CLICKHOUSE=json.dumps(dataclasses.asdict(db)))
    done = subprocess.run([*prefix, sys.executable, "-c", SERVICE, str(spool), str(state)], env=env, cwd=ROOT,
                          capture_output=True, timeout=120, check=False)
    assert 0 == done.returncode, done.stderr.decode()[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


class TestFilesChangingUnderTheReader:
    NAME = file_name(HOST, 1, 1, 1)

    @pytest.fixture
    def hold(self) -> Iterator[Callable[[Path], int]]:
        """Lock a spool file as its live writer does (listener/spool.py); closing the returned
        descriptor is the writer going."""
        held: list[int] = []

        def lock(path: Path) -> int:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            fcntl.flock(fd, fcntl.LOCK_EX)
            held.append(fd)
            return fd

        yield lock
        for fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)

    def test_a_finished_file_replaced_by_a_shorter_one_is_read_not_deleted(
            self, database: ClickHouseSettings, tmp_path: Path, hold: Callable[[Path], int]) -> None:
        """A file read to its end is replaced (new inode) by a shorter file of the same name,
        then finished: the new file's events land (after a restart), the change is a dead
        letter, a warning and a metric, and only then is the file retired."""
        spool, state = tmp_path / "spool", tmp_path / "state"
        spool.mkdir()
        path = spool / self.NAME
        path.write_bytes(b"".join(EVENTS[:40]))
        writer = hold(path)
        first, _ = ingester(database, spool, state)
        first.run(once=True)
        assert path.exists()  # its writer holds it: not finished, not retired
        replacement = tmp_path / "replacement"
        replacement.write_bytes(b"".join(EVENTS[40:57]))  # 17 events, fewer bytes than were read
        os.replace(replacement, path)
        os.close(writer)  # the writer has gone: finished
        second, log = ingester(database, spool, state)
        second.run(once=True)
        ids, dead = stored(database)
        assert ids_of(EVENTS[:57]) == ids
        read_to = len(b"".join(EVENTS[:40]))
        assert [read_to] == list(dead) and f"bytes {read_to}..{read_to} lost" in dead[read_to]
        assert dead[read_to].startswith("spool file replaced")
        assert [("replaced", read_to)] == [(w["how"], w["read_to"]) for w in
                                           log.warnings("spool file changed under the reader; reading it again "
                                                        "from the start")]
        assert 1.0 == second.metrics.spool_files_changed.labels("replaced")._value.get()
        assert not path.exists()  # read to its end, finished: retired

    def test_housekeeping_never_retires_a_file_other_than_the_one_read(
            self, database: ClickHouseSettings, tmp_path: Path, hold: Callable[[Path], int]) -> None:
        """Retiring runs between reads (while idle); a file replaced or shrunk since the last
        read, now finished, is left for the next read, whatever its size."""
        spool, state = tmp_path / "spool", tmp_path / "state"
        spool.mkdir()
        path = spool / self.NAME
        path.write_bytes(b"".join(EVENTS[:40]))
        writer = hold(path)
        ing, _ = ingester(database, spool, state)
        ing.run(once=True)
        assert path.exists()
        os.close(writer)  # finished from now on
        replacement = tmp_path / "replacement"
        replacement.write_bytes(b"".join(EVENTS[40:57]))
        os.replace(replacement, path)
        ing._retire()  # the housekeeping step of an idle poll, before the next read
        assert path.exists()
        with open(path, "r+b") as handle:  # the same file shrunk: also kept
            handle.truncate(len(EVENTS[40]))
        ing.checkpoint.identities[path.name] = (path.stat().st_dev, path.stat().st_ino)
        ing._retire()
        assert path.exists()

    def test_an_active_file_truncated_is_read_again_from_its_start(
            self, database: ClickHouseSettings, tmp_path: Path, hold: Callable[[Path], int]) -> None:
        """An active file is truncated below the read position and its writer goes on
        appending: what it appended lands, the truncation is a dead letter and a metric."""
        spool, state = tmp_path / "spool", tmp_path / "state"
        spool.mkdir()
        path = spool / self.NAME
        path.write_bytes(b"".join(EVENTS[:40]))
        hold(path)  # an active file
        ing, log = ingester(database, spool, state)
        ing.run(once=True)
        with open(path, "r+b") as handle:  # truncated in place (same inode), then appended to
            handle.truncate(0)
        with open(path, "ab") as handle:
            handle.write(b"".join(EVENTS[40:60]))
        assert path.stat().st_size < len(b"".join(EVENTS[:40]))
        ing.run(once=True)
        ids, dead = stored(database)
        assert ids_of(EVENTS[:60]) == ids
        read_to = len(b"".join(EVENTS[:40]))
        assert [read_to] == list(dead) and dead[read_to].startswith("spool file truncated")
        assert 1.0 == ing.metrics.spool_files_changed.labels("truncated")._value.get()
        assert 1 == len(log.warnings("spool file changed under the reader; reading it again from the start"))
        metrics = ing.metrics  # the loss is not a line: lines read = landed + dead letters still
        assert (60, 60, 0) == (metrics.events_read._value.get(), metrics.events_inserted._value.get(),
                               metrics.dead_letters._value.get())

    def test_a_file_truncated_and_written_past_the_read_position_is_read_again(
            self, database: ClickHouseSettings, tmp_path: Path, hold: Callable[[Path], int]) -> None:
        """An active file is truncated and written again past the read position before the
        reader looks: no line ends where reading stopped, so the change is seen; every new
        line lands, with one dead letter for the change and none for a half line."""
        spool, state = tmp_path / "spool", tmp_path / "state"
        spool.mkdir()
        path = spool / self.NAME
        path.write_bytes(b"".join(EVENTS[:40]))
        hold(path)  # an active file
        ing, _ = ingester(database, spool, state)
        ing.run(once=True)
        read_to = len(b"".join(EVENTS[:40]))
        rewritten = b"".join(EVENTS[40:100])
        assert len(rewritten) > read_to and rewritten[read_to - 1 : read_to] != b"\n"
        with open(path, "r+b") as handle:
            handle.truncate(0)
            handle.write(rewritten)
        ing.run(once=True)
        ids, dead = stored(database)
        assert ids_of(EVENTS[:100]) == ids
        assert [read_to] == list(dead) and dead[read_to].startswith("spool file truncated and written again")
        assert 1.0 == ing.metrics.spool_files_changed.labels("rewritten")._value.get()

    def test_a_rewrite_with_a_line_ending_at_the_read_position_is_still_seen(
            self, database: ClickHouseSettings, tmp_path: Path, hold: Callable[[Path], int]) -> None:
        """Rewritten so that a newline happens to end where reading stopped: the last bytes
        read are not there, so the change is still seen and the new file is read from 0."""
        spool, state = tmp_path / "spool", tmp_path / "state"
        spool.mkdir()
        path = spool / self.NAME
        path.write_bytes(b"".join(EVENTS[:40]))
        hold(path)  # an active file
        ing, _ = ingester(database, spool, state)
        ing.run(once=True)
        read_to = len(b"".join(EVENTS[:40]))
        head = b"".join(EVENTS[40:70])
        filler = b"#" * (read_to - len(head) - 1) + b"\n"  # a bad line ending exactly at read_to
        with open(path, "r+b") as handle:
            handle.truncate(0)
            handle.write(head + filler + b"".join(EVENTS[70:100]))
        ing.run(once=True)
        ids, dead = stored(database)
        assert ids_of(EVENTS[:100]) == ids
        assert [len(head), read_to] == sorted(dead) and dead[read_to].startswith("spool file truncated and written")
