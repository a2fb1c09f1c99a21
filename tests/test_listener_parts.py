"""The listener's parts on their own: config, scrubbing, spool, pusher (against a real Pushgateway)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from listener.config import ConfigError, ListenerConfig
from listener.contract import MAX_ERROR_MESSAGE
from listener.gauges import GroupKey, task_gauges
from listener.pusher import GaugePusher
from listener.scrub import scrub
from listener.spool import Spool, SpoolName, file_name, host_token, parse_name, writer_gone

from . import servers


class TestConfig:
    def test_defaults_work_on_a_laptop(self, tmp_path: Path) -> None:
        """With nothing set: events on, gauges on but not pushing, spool under BATCHOBS_HOME."""
        config = ListenerConfig.from_env({"BATCHOBS_HOME": str(tmp_path)})
        assert (True, False, tmp_path / "spool", 1.0) == (
            config.events_enabled, config.pushing, config.spool_dir, config.exit_wait_s)

    @pytest.mark.parametrize(("name", "value"), [("BATCHOBS_EVENTS", "maybe"), ("BATCHOBS_SPOOL_FSYNC", "sometimes"),
                                                 ("BATCHOBS_PUSH_TIMEOUT_S", "fast"), ("BATCHOBS_MAX_GROUPS", "0")])
    def test_bad_values_name_the_variable(self, name: str, value: str) -> None:
        """A bad value is refused with the variable's name."""
        with pytest.raises(ConfigError, match=name):
            ListenerConfig.from_env({name: value})


class TestScrub:
    @pytest.mark.parametrize(
        ("text", "secret"),
        [
            ("could not connect to postgresql://etl:s3cret@db:5432/x", "s3cret"),
            ("auth failed password=s3cret user=bob", "s3cret"),
            ('{"api_key": "s3cret", "x": 1}', "s3cret"),
            ("Authorization: Bearer abc.def.s3cret", "s3cret"),
            ("token: s3cret", "s3cret"),
        ],
    )
    def test_secrets_are_masked(self, text: str, secret: str) -> None:
        """URIs with passwords, key=value secrets and bearer tokens are masked."""
        cleaned = scrub(text)
        assert secret not in cleaned and "***" in cleaned

    def test_ordinary_text_is_kept(self) -> None:
        """Text without secrets passes unchanged."""
        assert "division by zero in step 3" == scrub("division by zero in step 3")

    @given(st.text(max_size=10_000))
    def test_always_within_the_bound(self, text: str) -> None:
        """Any message is cut to the contract's bound."""
        assert len(scrub(text)) <= MAX_ERROR_MESSAGE


class TestSpool:
    def test_whole_lines_and_rotation(self, tmp_path: Path) -> None:
        """Lines are appended whole; a full file rotates to the next sequence."""
        spool = Spool(tmp_path, "host", max_bytes=4096)
        line = b'{"x":"' + b"a" * 90 + b'"}\n'
        for _ in range(100):
            spool.append(line)
        spool.close()
        files = sorted(tmp_path.glob("*.jsonl"))
        assert len(files) >= 3
        assert all(f.stat().st_size <= 4096 for f in files)
        assert [line] * 100 == [ln for f in files for ln in f.read_bytes().splitlines(keepends=True)]

    def test_concurrent_writers_never_interleave(self, tmp_path: Path) -> None:
        """Threads appending at once never mix bytes of two lines."""
        spool = Spool(tmp_path, "host")
        lines = [f'{{"t":{t},"i":{i},"pad":"{"x" * 200}"}}\n'.encode() for t in range(4) for i in range(500)]

        def work(t: int) -> None:
            for i in range(500):
                spool.append(lines[t * 500 + i])

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        spool.close()
        written = [ln for f in sorted(tmp_path.glob("*.jsonl")) for ln in f.read_bytes().splitlines(keepends=True)]
        assert sorted(lines) == sorted(written)

    def test_a_file_is_locked_while_its_writer_may_append(self, tmp_path: Path) -> None:
        """The open file is locked; a file rotated away from, and every file once the spool
        is closed, is not (finished); no temporary file is left."""
        spool = Spool(tmp_path, "host", max_bytes=4096)
        line = b'{"x":"' + b"a" * 90 + b'"}\n'
        for _ in range(60):
            spool.append(line)
        files = sorted(tmp_path.iterdir())
        assert len(files) >= 2 and spool.path == files[-1]
        assert [True] * (len(files) - 1) + [False] == [gone(f) for f in files]
        spool.close()
        assert [True] * len(files) == [gone(f) for f in files]

    def test_a_file_appears_under_its_name_already_locked(self, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """When a new file is linked in under its name, its writer already holds the lock (a
        reader never sees it unlocked while it may grow)."""
        seen: list[bool] = []
        link = os.link

        def watched(source: str | Path, target: str | Path) -> None:
            seen.append(gone(Path(source)))
            link(source, target)

        monkeypatch.setattr(os, "link", watched)
        spool = Spool(tmp_path, "host", max_bytes=4096)
        for _ in range(3):
            spool.append(b"{}\n" * 1500)  # one file each
        spool.close()
        assert [False, False, False] == seen
        assert 3 == len(list(tmp_path.iterdir()))

    def test_a_name_never_taken_twice(self, tmp_path: Path) -> None:
        """A file already under the next name (another writer's) is left alone; the writer
        takes the name after it."""
        spool = Spool(tmp_path, "host")
        spool.append(b'{"n":1}\n')
        assert spool.path is not None
        parts = parse_name(spool.path.name)
        assert parts is not None
        taken = tmp_path / file_name(parts.host, parts.pid, parts.start, parts.seq + 1)
        taken.write_bytes(b'{"other":1}\n')
        spool.close()
        spool.append(b'{"n":2}\n')
        spool.close()
        assert b'{"other":1}\n' == taken.read_bytes()
        assert parts._replace(seq=parts.seq + 2) == parse_name(spool.path.name)

    def test_forked_child_drops_the_parents_lock(self, tmp_path: Path) -> None:
        """A forked child closes its copy of the parent's descriptor: once the parent closes
        its file, the file is finished though the child lives on."""
        spool = Spool(tmp_path, "host")
        spool.append(b'{"who":"parent"}\n')
        read, write = os.pipe()
        started_r, started_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: says it runs (the fork hook has run), lives until the parent has looked
            os.close(write)
            os.write(started_w, b"x")
            os.read(read, 1)
            os._exit(0)
        os.close(read)
        os.close(started_w)
        try:
            assert b"x" == os.read(started_r, 1)
            assert spool.path is not None and not gone(spool.path)
            spool.close()
            assert gone(spool.path)
        finally:
            os.close(write)
            os.close(started_r)
            os.waitpid(pid, 0)

    def test_forked_child_writes_its_own_file(self, tmp_path: Path) -> None:
        """After fork, the child appends to a file of its own pid, never the parent's."""
        spool = Spool(tmp_path, "host")
        spool.append(b'{"who":"parent"}\n')
        pid = os.fork()
        if pid == 0:  # child
            spool.append(b'{"who":"child"}\n')
            os._exit(0)
        os.waitpid(pid, 0)
        spool.close()
        files = {f.name.split("-")[1]: f.read_bytes() for f in tmp_path.glob("*.jsonl")}
        assert {str(os.getpid()): b'{"who":"parent"}\n', str(pid): b'{"who":"child"}\n'} == files


def gone(path: Path) -> bool:
    """The reader's question: has the file's writer gone?"""
    fd = os.open(path, os.O_RDONLY)
    try:
        return writer_gone(fd)
    finally:
        os.close(fd)


class TestSpoolNames:
    @given(st.text(max_size=60), st.integers(1, 2**22), st.integers(0, 2**62), st.integers(1, 10**7))
    def test_a_name_parses_back_to_its_parts(self, host: str, pid: int, start: int, seq: int) -> None:
        """Whatever the host name, the name the writer makes parses back to its parts."""
        token = host_token(host)
        assert SpoolName(token, pid, start, seq) == parse_name(file_name(token, pid, start, seq))

    @pytest.mark.parametrize("name", ["events.jsonl", ".batchobs-ingest.lock", ".creating.h-1-2-000003.jsonl",
                                      "h-1-2-000003.jsonl.tmp", "h-x-2-000003.jsonl", "a-b-1-2-000003.jsonl"])
    def test_other_names_are_not_spool_files(self, name: str) -> None:
        """Only the writer's own shape parses."""
        assert parse_name(name) is None


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Process]:
    process = servers.start_pushgateway(tmp_path_factory.mktemp("gw"))
    yield process
    process.stop()


class TestPusher:
    def test_pushes_and_coalesces(self, gateway: servers.Process) -> None:
        """Many states of one group end as the newest one on the gateway."""
        pusher = GaugePusher(gateway.url, timeout_s=2)
        key = GroupKey.task("airflow", "dag_a", "task_a", "unit")
        for try_number in range(1, 51):
            pusher.submit(key, task_gauges("running", try_number, -1, None, None))
        pusher.submit(key, task_gauges("success", 51, -1, 1.5, 1_700_000_000.0))
        assert pusher.flush(10)
        pusher.shutdown(1)
        assert pusher.pushed <= 51  # coalesced: not one push per state
        metrics = servers.get_json(gateway.url + "/api/v1/metrics")["data"]
        group = next(g for g in metrics if g["labels"].get("task_id") == "task_a")
        assert "1" == group["task_status"]["metrics"][0]["value"]
        assert "51" == group["task_last_try_number"]["metrics"][0]["value"]

    def test_group_budget(self, gateway: servers.Process) -> None:
        """Past the budget, pushes for new groups are refused and counted; known groups still push."""
        pusher = GaugePusher(gateway.url, max_groups=3)
        keys = [GroupKey.task("airflow", "dag_b", f"t{i}", "unit") for i in range(5)]
        accepted = [pusher.submit(k, task_gauges("success", 1, -1, 1.0, 1.0)) for k in keys]
        assert [True, True, True, False, False] == accepted
        assert pusher.submit(keys[0], task_gauges("failed", 2, -1, 1.0, 1.0))
        assert pusher.flush(10)
        pusher.shutdown(1)
        assert 2 == pusher.refused

    def test_submit_never_waits_for_a_stuck_push(self) -> None:
        """While the worker is stuck in a push to a silent gateway, submit still returns."""
        with servers.black_hole() as hole:
            pusher = GaugePusher(hole, timeout_s=30)
            pusher.submit(GroupKey.task("airflow", "d", "t0", "unit"), task_gauges("running", 1, -1, None, None))
            deadline = time.monotonic() + 10  # hang guard, not a measurement
            while pusher._in_flight == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert 1 == pusher._in_flight  # the worker is blocked on the network now
            for i in range(100):
                assert pusher.submit(GroupKey.task("airflow", "d", f"t{i % 5}", "unit"),
                                     task_gauges("running", 1, -1, None, None))
            assert 1 == pusher._in_flight and 0 == pusher.pushed
            pusher.shutdown(0.2)
        assert 6 == pusher.abandoned  # five pending groups (t0 queued again) and the one in flight

    @pytest.mark.parametrize("outage", ["refusing", "not answering"])
    def test_shutdown_gives_up_and_counts_abandoned(self, outage: str) -> None:
        """With the gateway down, shutdown returns after its bounded wait; what is left is counted."""
        with servers.black_hole() as hole:
            url = servers.refusing_url() if outage == "refusing" else hole
            pusher = GaugePusher(url, timeout_s=30)
            for i in range(20):
                key = GroupKey.task("airflow", "d", f"t{i % 5}", "unit")
                pusher.submit(key, task_gauges("running", 1, -1, None, None))
            done = threading.Event()
            threading.Thread(target=lambda: (pusher.shutdown(0.5), done.set()), daemon=True).start()
            assert done.wait(20), "shutdown hung"  # hang guard; the wait itself is measured in benchmarks/
        assert pusher.abandoned >= 1 and 0 == pusher.pushed
