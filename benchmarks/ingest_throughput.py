"""Ingester throughput, freshness and memory, on the embedded warehouse.

1. Throughput: a backlog of N events in spool files (written by benchmarks/spool_writer.py)
   to committed rows by ``batchobs ingest --once`` (a process, start to exit), beside
   ClickHouse loading the same bytes itself in one statement (benchmarks/native_load.py:
   ``INSERT INTO events SELECT * FROM file(..., JSONEachRow, <contract columns>)``, same
   engine, table, constraints and JSON settings, in a chDB process of its own because the
   embedded server refuses ``file()``).  Each on a freshly created table.  ``--repeat``
   runs all three loads again, each time in the same order.  Also the drain by a running
   ``batchobs ingest`` (the outage case): the backlog's files renamed into its spool
   directory at once, timed until its /metrics count every event inserted; like the
   native load's INSERT, this leaves out the process's start.
2. Freshness: events written at a steady 1k/s while ``batchobs ingest`` runs;
   a poller sees each event become queryable: freshness = seen - emitted_at.
3. Memory: the ingester's peak RSS (VmHWM); the engine is another process.
4. Where the time goes: CPU seconds of the server and of the ingester.
5. The engine's ceiling at the batch size the drain reaches: the same bodies cut in
   advance and posted ``--inserts-in-flight`` at a time, with the ingester's insert
   settings, by a client that does nothing else.

The project's modules are compiled to bytecode first (as a wheel install does; this
machine sets PYTHONDONTWRITEBYTECODE), so the ingester's start is not a compile.

Usage: python benchmarks/ingest_throughput.py [--events 300000] [--fresh-seconds 30] [--repeat 1]
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
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchobs.loopback import free_port, wait_http  # noqa: E402
from benchmarks._processes import cpu_s, ingester_env, peak_rss_mb  # noqa: E402
from benchmarks._report import percentile, save  # noqa: E402
from ingest.config import BatchLimits, IngestConfig  # noqa: E402
from ingest.writer import EVENT_SETTINGS, INSERT_SETTINGS  # noqa: E402
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


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ingester(settings: ClickHouseSettings, home: Path, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one ingester process."""
    env = ingester_env(settings, home)
    started = time.perf_counter()
    proc = subprocess.Popen([BATCHOBS, "ingest", *args], env=env, stderr=open(home / "ingest.log", "ab"))  # noqa: SIM115 - lives with the process
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid))
        time.sleep(0.05)
    return time.perf_counter() - started, peak


def inserted(metrics_url: str) -> float:
    """``batchobs_ingest_events_inserted_total`` from a running ingester's /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        for row in answer.read().decode().splitlines():
            if row.startswith("batchobs_ingest_events_inserted_total "):
                return float(row.split()[1])
    return 0.0


def service_drain(settings: ClickHouseSettings, home: Path, backlog: list[Path], events: int,
                  options: list[str]) -> tuple[float, float, float]:
    """(seconds, peak RSS MB, CPU seconds) of a running ingester draining a backlog that
    appears at once: the files are renamed into its spool directory when it is ready, and
    the clock stops when its /metrics count every event inserted (committed).  The
    drain after an outage, without the process's start (as the native load is timed
    without chDB's import)."""
    shutil.rmtree(home, ignore_errors=True)
    staged, spool = home / "staged", home / "spool"
    staged.mkdir(parents=True)
    spool.mkdir()
    for file in backlog:
        shutil.copyfile(file, staged / file.name)
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen([BATCHOBS, "ingest", "--metrics-port", str(port), "--retention", "keep", *options],
                            env=ingester_env(settings, home), stderr=open(home / "ingest.log", "ab"))  # noqa: SIM115
    try:
        wait_http(metrics)
        time.sleep(0.5)  # settled: connected, migrations checked, polling an empty spool
        cpu, started = cpu_s(proc.pid), time.perf_counter()
        for file in sorted(staged.iterdir()):
            file.rename(spool / file.name)
        while inserted(metrics) < events:
            if proc.poll() is not None:
                raise RuntimeError(f"the ingester exited ({proc.returncode}): see {home / 'ingest.log'}")
            time.sleep(0.01)
        seconds, cpu = time.perf_counter() - started, cpu_s(proc.pid) - cpu
        return seconds, peak_rss_mb(proc.pid), cpu
    finally:
        proc.terminate()
        proc.wait(60)


def engine_ceiling(settings: ClickHouseSettings, data: bytes, batch_rows: int, in_flight: int,
                   insert_settings: dict[str, int]) -> float:
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
                          settings={**EVENT_SETTINGS, **insert_settings,
                                    "insert_deduplication_token": f"ceiling-{numbered[0]}"})
        clients.put(client)

    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(post, enumerate(bodies)))
    return time.perf_counter() - started


def native_load(data_dir: Path, source: Path, ddl: list[str], events: int) -> tuple[float, float]:
    """(seconds, CPU seconds) of ClickHouse loading ``source`` itself in one statement
    (benchmarks/native_load.py: the same engine in a process of its own)."""
    shutil.rmtree(data_dir, ignore_errors=True)
    ddl_file = data_dir.with_suffix(".ddl.json")
    ddl_file.write_text(json.dumps(ddl))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "native_load.py"), str(data_dir), str(source),
                          str(ddl_file)], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["rows"] == events, f"the native load stored {result['rows']} rows, not {events}"
    shutil.rmtree(data_dir, ignore_errors=True)
    return float(result["seconds"]), float(result["cpu_s"])


def throughput(args: argparse.Namespace, settings: ClickHouseSettings, server_pid: int, ddl: list[str],
               tmp: Path, together: Path) -> dict[str, object]:
    """One run of the three loads of the backlog: native, ingester, engine ceiling."""
    client = settings.client()
    native, native_server_cpu = native_load(tmp / "native", together, ddl, args.events)
    fresh_table(client, ddl)
    home = tmp / "home"
    shutil.rmtree(home / "ingest", ignore_errors=True)  # the checkpoint: read the backlog again
    server_cpu, ingester_cpu = cpu_s(server_pid), children_cpu_s()
    options = ["--batch-rows", str(args.batch_rows), "--batch-bytes", str(args.batch_bytes),
               "--backlog-batch-bytes", str(args.backlog_batch_bytes),
               "--inserts-in-flight", str(args.inserts_in_flight)]
    seconds, peak = run_ingester(settings, home, "--once", "--retention", "keep", *options)
    server_cpu, ingester_cpu = cpu_s(server_pid) - server_cpu, children_cpu_s() - ingester_cpu
    assert client.command("SELECT count() FROM events") == args.events, "not every event landed"
    fresh_table(client, ddl)
    drain_server_cpu = cpu_s(server_pid)
    drain, drain_peak, drain_cpu = service_drain(settings, tmp / "drain", sorted((home / "spool").glob("*.jsonl")),
                                                 args.events, options)
    drain_server_cpu = cpu_s(server_pid) - drain_server_cpu
    assert client.command("SELECT count() FROM events") == args.events, "not every event landed"
    fresh_table(client, ddl)
    # the largest batch of the drain (IngestConfig.batch_limits), in rows
    grown = IngestConfig(tmp, tmp, max_rows=args.batch_rows, max_bytes=args.batch_bytes,
                         backlog_batch_bytes=args.backlog_batch_bytes,
                         inserts_in_flight=args.inserts_in_flight).batch_limits(1 << 62, BatchLimits(0, 1 << 62)).rows
    ceiling_server_cpu = cpu_s(server_pid)
    ceiling = engine_ceiling(settings, together.read_bytes(), grown, args.inserts_in_flight, INSERT_SETTINGS)
    ceiling_server_cpu = cpu_s(server_pid) - ceiling_server_cpu
    assert client.command("SELECT count() FROM events") == args.events
    return {
        "clickhouse_file_s": round(native, 2), "clickhouse_file_events_per_s": round(args.events / native),
        "ingester_s": round(seconds, 2), "ingester_events_per_s": round(args.events / seconds),
        "ratio_ingester_to_native": round(native / seconds, 2),
        # a running ingester draining the backlog (the outage case): no process start in the time
        "service_drain_s": round(drain, 2), "service_drain_events_per_s": round(args.events / drain),
        "ratio_service_drain_to_native": round(native / drain, 2),
        "ratio_service_drain_to_ceiling": round(ceiling / drain, 2),
        # the engine's own limit at the drain's largest batch: the same bodies, cut in
        # advance and posted as many at once, by a client that does nothing else
        "ceiling_batch_rows": grown, "engine_ceiling_events_per_s": round(args.events / ceiling),
        "ratio_ingester_to_ceiling": round(ceiling / seconds, 2),
        "ingester_peak_rss_mb": round(peak, 1),
        # where the time goes: CPU seconds of each process (the server's include merges)
        "cpu_s": {"native.engine": round(native_server_cpu, 2), "ingest.server": round(server_cpu, 2),
                  "ingest.ingester": round(ingester_cpu, 2), "drain.server": round(drain_server_cpu, 2),
                  "drain.ingester": round(drain_cpu, 2), "ceiling.server": round(ceiling_server_cpu, 2)},
        "service_drain_peak_rss_mb": round(drain_peak, 1),
    }


def freshness(settings: ClickHouseSettings, ddl: list[str], home: Path, seconds: float) -> dict[str, object]:
    """Events written at 1k/s while the ingester runs as a service: written -> queryable."""
    client = settings.client()
    fresh_table(client, ddl)
    env = ingester_env(settings, home)
    home.mkdir(parents=True, exist_ok=True)
    ingester = subprocess.Popen([BATCHOBS, "ingest", "--metrics-port", "0"], env=env,
                                stderr=open(home / "ingest.log", "ab"))  # noqa: SIM115 - lives with the process
    count = int(seconds * 1000)
    writer = write_spool(home / "spool", count, rate=1000)
    lags: list[float] = []
    seen = 0
    last = "1970-01-01 00:00:00.000000"
    deadline = time.monotonic() + seconds + 60
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
    peak = peak_rss_mb(ingester.pid)
    ingester.terminate()
    ingester.wait(60)
    lags.sort()
    return {"events": len(lags), "p50_s": round(statistics.median(lags), 3),
            "p95_s": round(percentile(lags, 0.95), 3), "max_s": round(lags[-1], 3),
            "ingester_peak_rss_mb": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--fresh-seconds", type=float, default=30)
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs (each with its native and ceiling)")
    parser.add_argument("--batch-rows", type=int, default=IngestConfig.max_rows)
    parser.add_argument("--batch-bytes", type=int, default=IngestConfig.max_bytes)
    parser.add_argument("--backlog-batch-bytes", type=int, default=IngestConfig.backlog_batch_bytes)
    parser.add_argument("--inserts-in-flight", type=int, default=IngestConfig.inserts_in_flight)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", "listener", "ingest", "warehouse"], cwd=ROOT,
                   check=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""))
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    server = embedded.start(tmp / "warehouse")
    report: dict[str, object] = {"settings": {
        "batch_rows": args.batch_rows, "batch_bytes": args.batch_bytes,
        "backlog_batch_bytes": args.backlog_batch_bytes, "inserts_in_flight": args.inserts_in_flight}}
    try:
        base = server.settings("default")
        apply(base.client(), "batchobs", 400)
        settings = base.with_database("batchobs")
        ddl = [s for m in migrations() for s in m.statements() if "events" in s and "dead_letters" not in s]
        spool = tmp / "home" / "spool"
        write_spool(spool, args.events).wait()
        together = tmp / "all.jsonl"
        with open(together, "wb") as out:
            for f in sorted(spool.glob("*.jsonl")):
                out.write(f.read_bytes())
        report["backlog"] = {"events": args.events, "spool_mb": round(together.stat().st_size / 1e6, 1)}
        runs = []
        for _ in range(args.repeat):
            runs.append(throughput(args, settings, server.pid, ddl, tmp, together))
            print(json.dumps(runs[-1]), flush=True)
        report["throughput"] = runs
        if args.fresh_seconds > 0:
            report["freshness_at_1k_per_s"] = freshness(settings, ddl, tmp / "home2", args.fresh_seconds)
    finally:
        server.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    save("ingest_throughput", report)


if __name__ == "__main__":
    main()
