"""The spool on a failing disk: a write that fails never leaves part of a line, and the next event lands intact.

Real file systems produce the failures: a file size limit (RLIMIT_FSIZE, in a child
process so the limit binds nothing else) gives real short writes and EFBIG, and a
64 KiB tmpfs (mounted when the tests run as root) gives real short writes and ENOSPC.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.spool import Spool

ROOT = Path(__file__).parents[1]


def numbered(i: int, pad: int = 300) -> bytes:
    return json.dumps({"n": i, "pad": "x" * pad}).encode() + b"\n"


def spooled(directory: Path) -> list[int]:
    """The numbers of the lines in the spool, in order; fails on any line that is not whole."""
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        for raw in path.read_bytes().splitlines(keepends=True):
            assert raw.endswith(b"\n"), f"part of a line left in {path.name}: {raw[:60]!r}"
            out.append(json.loads(raw)["n"])
    return out


SIZE_LIMITED = """
import json, resource, signal, sys
from pathlib import Path
from listener.spool import Spool
from tests.test_listener_spool_failures import numbered

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
spool = Spool(Path(sys.argv[1]), "host")
spool.append(numbered(0))
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), hard))
kept, failed = [0], []
for i in range(1, 8):
    try:
        spool.append(numbered(i))
        kept.append(i)
    except OSError as exc:
        failed.append(str(exc))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # the space comes back
spool.append(numbered(99))
spool.close()
print(json.dumps({"kept": kept + [99], "failed": failed}))
"""


class TestShortWrites:
    def test_size_limit_cuts_the_line_back(self, tmp_path: Path) -> None:
        """A short write past a file size limit leaves the file at its last whole line; the next event lands intact."""
        line = len(numbered(0))
        limit = 3 * line + line // 2  # the fourth line is written in part
        proc = subprocess.run([sys.executable, "-c", SIZE_LIMITED, str(tmp_path), str(limit)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert 0 == proc.returncode, proc.stderr
        result = json.loads(proc.stdout)
        assert [0, 1, 2, 99] == result["kept"]
        assert "short write" in result["failed"][0] and 5 == len(result["failed"])
        assert result["kept"] == spooled(tmp_path)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (needs root; skipped otherwise: the size-limit test covers short writes without it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


class TestFullDisk:
    def test_full_disk_leaves_whole_lines(self, tiny_disk: Path) -> None:
        """Filling a real disk fails writes (short, then ENOSPC) without leaving part of a line; when
        space returns the next event lands intact."""
        ballast = tiny_disk / "ballast"
        ballast.write_bytes(b"\0" * 16384)
        spool = Spool(tiny_disk / "spool", "host")
        kept, errors = [], []
        for i in range(1000):
            try:
                spool.append(numbered(i, pad=1000))
                kept.append(i)
            except OSError as exc:
                errors.append(exc)
                if len(errors) == 3:
                    break
        assert 3 == len(errors) and 30 < len(kept)
        ballast.unlink()
        spool.append(numbered(9999, pad=1000))
        spool.close()
        assert [*kept, 9999] == spooled(tiny_disk / "spool")


class TestSpoolRecovers:
    def test_after_a_failed_open_the_next_event_lands(self, tmp_path: Path) -> None:
        """A spool directory that cannot be used for a while (a file in its place) fails those events only:
        the spool never keeps writing to, or closing, a descriptor it already closed."""
        directory = tmp_path / "spool"
        spool = Spool(directory, "host", max_bytes=4096)
        spool.append(numbered(0))
        directory.rename(tmp_path / "aside")
        directory.write_bytes(b"")  # a file where the directory was: the next file cannot be created
        with pytest.raises(OSError):
            spool.append(numbered(1, pad=4000))  # too big for the open file: needs the next one
        unrelated = (tmp_path / "unrelated").open("wb")  # may be given the closed descriptor's number
        directory.unlink()
        (tmp_path / "aside").rename(directory)
        spool.append(numbered(2, pad=4000))
        spool.close()
        unrelated.write(b"still mine")
        unrelated.close()
        assert b"still mine" == (tmp_path / "unrelated").read_bytes()
        assert [0, 2] == spooled(directory)

