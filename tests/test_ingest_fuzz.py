"""The coverage-guided fuzz target (tests/fuzz_ingest.py): a bounded run, and its corpus replayed.

Both hold the ingester's invariant for any spool input: every line read lands or is a
dead letter at its position, the landed ids are exactly the contract's, the metrics agree
with the tables.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from warehouse.connection import ClickHouseSettings

from . import fuzz_ingest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).with_name("fuzz_corpus")
# Seconds of fuzzing in the normal test run (CI included); longer runs by hand, see tests/fuzz_ingest.py.
FUZZ_SECONDS = int(os.environ.get("BATCHOBS_FUZZ_SECONDS", "30"))


@pytest.fixture(scope="module")
def fuzz_db(clickhouse: ClickHouseSettings, admin: Any) -> Iterator[ClickHouseSettings]:
    name = f"fuzz_{uuid.uuid4().hex[:10]}"
    fuzz_ingest.prepare(admin, name)
    yield clickhouse.with_database(name)
    admin.command(f"DROP DATABASE IF EXISTS {name}")


def test_fuzzing_for_a_bounded_time_breaks_no_invariant(fuzz_db: ClickHouseSettings, tmp_path: Path) -> None:
    """libFuzzer, guided by coverage of the ingester and the contract, mutates the corpus for
    a bounded time: no input raises, hangs or breaks the invariant."""
    found = tmp_path / "found"  # new inputs go here; the kept corpus is only read
    found.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path),
               **{fuzz_ingest.ENV: json.dumps(dataclasses.asdict(fuzz_db))})
    args = [f"-max_total_time={FUZZ_SECONDS}", "-timeout=120", "-rss_limit_mb=4096", "-max_len=16384",
            f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"]
    if os.environ.get("CI"):
        args.append("-seed=20261123")  # a red CI names an input; the same seed explores the same way first
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz_ingest.py"), *args, str(found), str(CORPUS)],
                         env=env, capture_output=True, cwd=ROOT, timeout=FUZZ_SECONDS + 600, check=False)
    report = run.stderr.decode(errors="replace")
    artifacts = sorted(p.name for p in tmp_path.iterdir() if p.name.split("-")[0] in ("crash", "timeout", "oom"))
    assert (0, []) == (run.returncode, artifacts), report[-6000:]
    assert "Done" in report and "stat::number_of_executed_units" in report, report[-2000:]


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir()))
def test_corpus_input_holds_the_invariant(name: str, fuzz_db: ClickHouseSettings, tmp_path: Path) -> None:
    """Each input of the kept corpus (found by fuzzing, or a seed) holds the invariant."""
    fuzz_ingest.Target(fuzz_db, tmp_path)((CORPUS / name).read_bytes())
