"""Insert throughput through the embedded server vs. a direct chDB insert.

The same events (from listener.testing, encoded by the contract) are inserted
into a migrated ``events`` table:

* direct: chDB in this process, no HTTP: ``send_insert`` of the same bytes (fast,
  but chDB 26.9 loses rows silently when the table refuses them) and
  ``INSERT ... FROM INFILE`` (what the server does, errors raised);
* http: clickhouse-connect against ``batchobs warehouse serve`` (another process),
  pre-serialized JSONEachRow and Arrow bodies (``raw_insert``), uncompressed and lz4,
  and rows built in Python (``insert``).

Usage: python benchmarks/insert_throughput.py [--events 300000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import save  # noqa: E402
from listener.contract import COLUMNS, encode  # noqa: E402
from listener.testing import history  # noqa: E402
from warehouse import embedded  # noqa: E402
from warehouse.migrate import apply, migrations  # noqa: E402


def timed(fn: Callable[[], object], reset: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs, each on an emptied table."""
    times = []
    for _ in range(repeat):
        reset()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    # A fleet: many DAGs, 30 daily runs each (two monthly partitions), like a real month.
    events = []
    dag = 0
    while len(events) < args.events:
        events.extend(history(30, dag_id=f"dag_{dag:04d}"))
        dag += 1
    del events[args.events:]
    body = b"".join(encode(e) for e in events)
    n = len(events)
    print(f"{n} events, {len(body) / 1e6:.1f} MB as JSONEachRow", flush=True)

    import chdb

    tmp = Path(tempfile.mkdtemp(prefix="bench-insert-"))
    direct = chdb.connect(str(tmp / "direct"))
    direct.query("CREATE DATABASE batchobs")
    direct.query("USE batchobs")
    for migration in migrations():
        for statement in migration.statements():
            direct.query(statement)
    ins = direct.send_insert("INSERT INTO batchobs.events", "JSONEachRow")
    ins.append(body)
    ins.finish()
    arrow = bytes(direct.query("SELECT * EXCEPT ingested_at FROM batchobs.events", "Arrow").bytes())
    columns = ", ".join(COLUMNS)

    def direct_insert(fmt: str, data: bytes) -> Callable[[], object]:
        def run() -> object:
            inserter = direct.send_insert(f"INSERT INTO batchobs.events ({columns})", fmt)
            inserter.append(data)
            return inserter.finish()
        return run

    # The table deduplicates identical blocks (insert_deduplication_token / the
    # deduplication window), and TRUNCATE keeps that log: every repeat starts
    # from a freshly created table, or repeats would time no-ops.
    create_events = migrations()[0].statements()[0]

    def reset_direct() -> None:
        direct.query("DROP TABLE IF EXISTS batchobs.events SYNC")
        direct.query(create_events)

    def direct_infile(fmt: str, data: bytes) -> Callable[[], object]:
        path = tmp / f"direct.{fmt}"
        path.write_bytes(data)
        return lambda: direct.query(
            f"INSERT INTO batchobs.events ({columns}) FROM INFILE '{path}' FORMAT {fmt}")

    results: dict[str, float] = {}
    results["direct send_insert JSONEachRow"] = timed(direct_insert("JSONEachRow", body), reset_direct, args.repeat)
    results["direct send_insert Arrow"] = timed(direct_insert("Arrow", arrow), reset_direct, args.repeat)
    results["direct FROM INFILE JSONEachRow"] = timed(direct_infile("JSONEachRow", body), reset_direct, args.repeat)
    results["direct FROM INFILE Arrow"] = timed(direct_infile("Arrow", arrow), reset_direct, args.repeat)
    direct.close()

    server = embedded.start(tmp / "served")
    try:
        settings = server.settings("batchobs")
        apply(settings.with_database("default").client(), "batchobs", 400)
        plain = settings.client(compress=False)
        lz4 = settings.client(compress="lz4")
        def reset_http() -> None:
            plain.command("DROP TABLE IF EXISTS events SYNC")
            plain.command(create_events)

        cols = list(COLUMNS)
        results["http JSONEachRow"] = timed(
            lambda: plain.raw_insert("events", cols, insert_block=body, fmt="JSONEachRow"), reset_http, args.repeat)
        results["http JSONEachRow lz4"] = timed(
            lambda: lz4.raw_insert("events", cols, insert_block=body, fmt="JSONEachRow"), reset_http, args.repeat)
        results["http Arrow"] = timed(
            lambda: plain.raw_insert("events", cols, insert_block=arrow, fmt="Arrow"), reset_http, args.repeat)
        rows = [[getattr(e, c) for c in cols] for e in events]
        results["http rows built in Python"] = timed(
            lambda: plain.insert("events", rows, column_names=cols), reset_http, 1)
        arrived = plain.command("SELECT count() FROM events")
        assert arrived == n, f"{arrived} of {n} rows arrived"
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    report = {name: {"seconds": round(s, 3), "rows_per_s": round(n / s)} for name, s in results.items()}
    for fmt in ("JSONEachRow", "Arrow"):
        for how in ("send_insert", "FROM INFILE"):
            report[f"ratio http/direct {how} {fmt}"] = round(
                results[f"direct {how} {fmt}"] / results[f"http {fmt}"], 2)
    save("insert_throughput", {"events": n, **report})


if __name__ == "__main__":
    main()
