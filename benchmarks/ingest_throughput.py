"""Ingester throughput, freshness and memory, on the embedded warehouse.

1. Throughput: N events in spool files (written by benchmarks/spool_writer.py) to
   committed rows by ``batchobs ingest --once``, beside ClickHouse loading the same
   bytes itself (``INSERT INTO events SELECT * FROM file(..., JSONEachRow, <contract
   columns>)``: same engine, table, constraints and JSON settings).  Each on a freshly created table.
2. Freshness: events written at a steady 1k/s while ``batchobs ingest`` runs;
   a poller sees each event become queryable: freshness = seen - emitted_at.
3. Memory: the ingester's peak RSS (VmHWM) in run 1; the engine is another process.
4. Where the time goes: CPU seconds of the server and of the ingester in run 1.
5. The engine's ceiling at the batch size: the same bodies cut in advance and posted
   ``--inserts-in-flight`` at a time by a client that does nothing else.

Usage: python benchmarks/ingest_throughput.py [--events 300000] [--fresh-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import percentile, save  # noqa: E402
from ingest.writer import EVENT_SETTINGS  # noqa: E402
from listener.contract import COLUMNS  # noqa: E402
from warehouse import embedded  # noqa: E402
from warehouse.connection import ClickHouseSettings  # noqa: E402
from warehouse.migrate import apply, migrations  # noqa: E402

BATCHOBS = str(Path(sys.executable).with_name("batchobs"))


def write_spool(spool: Path, count: int, rate: float = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "spool_writer.py"), str(spool), str(count),
                             "--rate", str(rate), "--max-bytes", str(64 << 20)])


def fresh_table(client: object, ddl: list[str]) -> None:
    client.command("DROP TABLE IF EXISTS events SYNC")  # type: ignore[attr-defined]
    for statement in ddl:
        client.command(statement)  # type: ignore[attr-defined]


def peak_rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ingester(settings: ClickHouseSettings, home: Path, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one ingester process."""
    env = dict(os.environ, BATCHOBS_HOME=str(home), BATCHOBS_CLICKHOUSE_URL=settings.url)
    started = time.perf_counter()
    proc = subprocess.Popen([BATCHOBS, "ingest", *args], env=env, stderr=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, peak_rss_mb(proc.pid))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    return time.perf_counter() - started, peak


def engine_ceiling(settings: ClickHouseSettings, data: bytes, batch_rows: int, in_flight: int) -> float:
    """Seconds to insert ``data`` in ``batch_rows``-line bodies, ``in_flight`` at a time,
    from bodies cut in advance: what the engine takes when the client costs nothing."""
    lines = data.splitlines(keepends=True)
    bodies = [b"".join(lines[i : i + batch_rows]) for i in range(0, len(lines), batch_rows)]
    del lines
    clients = queue.SimpleQueue()
    for _ in range(in_flight):
        clients.put(settings.client(autogenerate_session_id=False, compress=False))

    def post(numbered: tuple[int, bytes]) -> None:
        client = clients.get()
        client.raw_insert("events", insert_block=numbered[1], fmt="JSONEachRow",
                          settings={**EVENT_SETTINGS, "insert_deduplication_token": f"ceiling-{numbered[0]}"})
        clients.put(client)

    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(post, enumerate(bodies)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--fresh-seconds", type=float, default=30)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--batch-bytes", type=int, default=8 << 20)
    parser.add_argument("--inserts-in-flight", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    server = embedded.start(tmp / "warehouse")
    report: dict[str, object] = {}
    try:
        base = server.settings("default")
        apply(base.client(), "batchobs", 400)
        settings = base.with_database("batchobs")
        client = settings.client()
        ddl = [s for m in migrations() for s in m.statements() if "events" in s and "dead_letters" not in s]

        # 1. throughput
        spool = tmp / "home" / "spool"
        write_spool(spool, args.events).wait()
        size = sum(f.stat().st_size for f in spool.glob("*.jsonl"))
        together = tmp / "all.jsonl"
        with open(together, "wb") as out:
            for f in sorted(spool.glob("*.jsonl")):
                out.write(f.read_bytes())
        fresh_table(client, ddl)
        server_cpu = cpu_s(server.pid)
        started = time.perf_counter()
        structure = ", ".join(f"{name} {ch_type}" for name, ch_type in COLUMNS.items())
        client.command(f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT * FROM file('{together}', JSONEachRow, "
                       f"'{structure.replace(chr(39), chr(92) + chr(39))}')", settings=EVENT_SETTINGS)
        native = time.perf_counter() - started
        native_server_cpu = cpu_s(server.pid) - server_cpu
        assert client.command("SELECT count() FROM events") == args.events
        fresh_table(client, ddl)
        server_cpu, ingester_cpu = cpu_s(server.pid), children_cpu_s()
        seconds, peak = run_ingester(settings, tmp / "home", "--once", "--retention", "keep",
                                     "--batch-rows", str(args.batch_rows), "--batch-bytes", str(args.batch_bytes),
                                     "--inserts-in-flight", str(args.inserts_in_flight))
        server_cpu, ingester_cpu = cpu_s(server.pid) - server_cpu, children_cpu_s() - ingester_cpu
        assert client.command("SELECT count() FROM events") == args.events, "not every event landed"
        fresh_table(client, ddl)
        ceiling_server_cpu = cpu_s(server.pid)
        ceiling = engine_ceiling(settings, together.read_bytes(), args.batch_rows, args.inserts_in_flight)
        ceiling_server_cpu = cpu_s(server.pid) - ceiling_server_cpu
        assert client.command("SELECT count() FROM events") == args.events
        report["throughput"] = {
            "events": args.events, "spool_mb": round(size / 1e6, 1), "batch_rows": args.batch_rows,
            "batch_bytes": args.batch_bytes,
            "clickhouse_file_s": round(native, 2), "clickhouse_file_events_per_s": round(args.events / native),
            "ingester_s": round(seconds, 2), "ingester_events_per_s": round(args.events / seconds),
            "ratio_ingester_to_native": round(native / seconds, 2),
            # the engine's own limit at this batch size: the same bodies, cut in advance and
            # posted as many at once, by a client that does nothing else
            "engine_ceiling_events_per_s": round(args.events / ceiling),
            "ratio_ingester_to_ceiling": round(ceiling / seconds, 2),
            "ingester_peak_rss_mb": round(peak, 1),
            # where the time goes: CPU seconds of each process (the server's include merges)
            "cpu_s": {"native.server": round(native_server_cpu, 2), "ingest.server": round(server_cpu, 2),
                      "ingest.ingester": round(ingester_cpu, 2), "ceiling.server": round(ceiling_server_cpu, 2)},
        }
        print(json.dumps(report, indent=2), flush=True)

        # 2. freshness at 1k events/s
        fresh_table(client, ddl)
        home2 = tmp / "home2"
        env = dict(os.environ, BATCHOBS_HOME=str(home2), BATCHOBS_CLICKHOUSE_URL=settings.url)
        ingester = subprocess.Popen([BATCHOBS, "ingest", "--metrics-port", "0"], env=env, stderr=subprocess.DEVNULL)
        count = int(args.fresh_seconds * 1000)
        writer = write_spool(home2 / "spool", count, rate=1000)
        lags: list[float] = []
        seen = 0
        last = "1970-01-01 00:00:00.000000"
        deadline = time.monotonic() + args.fresh_seconds + 60
        while seen < count and time.monotonic() < deadline:
            rows = client.query(
                "SELECT emitted_at FROM events WHERE emitted_at > {last:DateTime64(6, 'UTC')} ORDER BY emitted_at",
                parameters={"last": last}).result_rows
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            for (emitted,) in rows:
                lags.append((now - emitted).total_seconds())
            if rows:
                seen += len(rows)
                last = rows[-1][0].strftime("%Y-%m-%d %H:%M:%S.%f")
            time.sleep(0.05)
        writer.wait(60)
        ingester.terminate()
        ingester.wait(60)
        lags.sort()
        report["freshness_at_1k_per_s"] = {
            "events": len(lags), "p50_s": round(statistics.median(lags), 3),
            "p95_s": round(percentile(lags, 0.95), 3), "max_s": round(lags[-1], 3),
        }
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    save("ingest_throughput", report)


if __name__ == "__main__":
    main()
