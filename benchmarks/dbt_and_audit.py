"""dbt build time and audit query latency, on the embedded warehouse.

1. Full ``dbt build`` (models, schema tests, unit tests) on --events events.
2. Incremental ``dbt build`` after --more events: new runs, late events for old runs,
   and replays of stored events (same event ids).
3. Each ``batchobs audit`` question's latency on --audit-events events (after a full
   build at that size): p50/p95 of --repeat runs from the marts, and from raw events.

Events are synthetic.history's three-run shape (a retry-then-success, a failure, a
mapped and a skipped task in every run; a custom metric from each successful load),
copied in SQL across 1,000 DAGs and back in time, with ``ingested_at`` one second after
``emitted_at``: a backlog that arrived over time, as in production (incremental models
look at what arrived since their last build).

Usage: python benchmarks/dbt_and_audit.py [--events 1000000] [--more 10000] [--audit-events 10000000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchobs.audit import QUESTIONS, ask  # noqa: E402
from batchobs.transform import run_dbt  # noqa: E402
from benchmarks._report import percentile, save  # noqa: E402
from listener.contract import COLUMNS, TASK_INSTANCE, TASK_METRIC, Event, encode, replace  # noqa: E402
from listener.testing import history  # noqa: E402
from warehouse import embedded  # noqa: E402
from warehouse.connection import ClickHouseSettings  # noqa: E402
from warehouse.migrate import apply  # noqa: E402

DAGS = 1000
TEMPLATE_RUNS = 3  # synthetic.history(3) and its metrics: 55 events over 3 days
SHIFTED = ("emitted_at", "logical_date", "start_date", "end_date")


def load(client: Any, events: int, start: datetime, first_copy: int = 0,
         ingested_now: bool = False) -> tuple[int, int]:
    """Insert about ``events`` events: copies of the template, DAG by DAG, day by day.

    Copy ``c`` is DAG ``c % DAGS``, shifted by ``c // DAGS`` template spans; returns
    (events inserted, copies made).
    """
    client.command("CREATE TABLE IF NOT EXISTS bench_template AS events ENGINE = Memory")
    if not client.query("SELECT count() FROM bench_template").result_rows[0][0]:
        template = b"".join(encode(e) for e in with_metrics(history(TEMPLATE_RUNS, dag_id="t", start=start)))
        client.raw_insert("bench_template", insert_block=template, fmt="JSONEachRow")
    per_copy = int(client.query("SELECT count() FROM bench_template").result_rows[0][0])
    copies = max(1, events // per_copy)
    columns = [c for c in COLUMNS if c != "event_id"]
    select = ", ".join(
        f"{c} + toIntervalDay(round * {TEMPLATE_RUNS})" if c in SHIFTED
        else "concat('dag_', leftPad(toString(copy % {dags:UInt32}), 4, '0'))" if c == "dag_id"
        else "concat(run_id, '_', toString(copy))" if c == "run_id"
        else c
        for c in columns)
    # a backlog that arrived over time: each event ingested a second after it was emitted
    ingested = "" if ingested_now else f", emitted_at + toIntervalDay(round * {TEMPLATE_RUNS}) + toIntervalSecond(1)"
    step = 20_000
    for first in range(first_copy, first_copy + copies, step):
        client.command(
            f"INSERT INTO events (event_id, {', '.join(columns)}{', ingested_at' if ingested else ''}) "
            f"SELECT generateUUIDv4(copy), {select}{ingested} FROM bench_template "
            "CROSS JOIN (SELECT number AS copy, intDiv(number, {dags:UInt32}) AS round "
            "FROM numbers({first:UInt64}, {n:UInt64})) AS copies",
            parameters={"dags": DAGS, "first": first, "n": min(step, first_copy + copies - first)})
    return copies * per_copy, copies


def with_metrics(events: Iterable[Event]) -> Iterator[Event]:
    """The events, and a custom metric from each run's ``load`` task as it succeeds."""
    for event in events:
        yield event
        if event.kind == TASK_INSTANCE and event.task_id == "load" and event.state == "success":
            yield replace(event, kind=TASK_METRIC, state="", previous_state="", metric_name="rows_loaded",
                          metric_value=1234.0, metric_unit="rows", attrs={"table": "orders"})


TEMPLATE_EVENTS = sum(1 for _ in with_metrics(history(TEMPLATE_RUNS)))


def span_days(events: int) -> int:
    """Days the copies of ``events`` events cover (a template span per round of DAGs)."""
    return (events // (TEMPLATE_EVENTS * DAGS) + 1) * TEMPLATE_RUNS


def span_start(events: int) -> datetime:
    """A start date such that every copy lies in the past."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=span_days(events) + 7)


def timed_dbt(settings: ClickHouseSettings, home: Path, *args: str) -> dict[str, float]:
    """Wall seconds of the dbt command, and the part dbt reports for its nodes (after its
    own start: imports, manifest, connection)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOBS_DBT")}
    env["BATCHOBS_HOME"] = str(home)
    started = time.perf_counter()
    done = run_dbt(list(args), settings, env=env, capture=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stdout[-5000:] + done.stderr[-2000:])
    nodes = re.search(r"Finished running .* in .*?([0-9.]+) seconds", done.stdout)
    return {"wall_s": round(elapsed, 2), "nodes_s": float(nodes.group(1)) if nodes else float("nan")}


def add_increment(client: Any, more: int, start: datetime, copies: int) -> dict[str, int]:
    """``more`` events: ~80% new runs, 10% late events for old runs, 10% replays."""
    late, replays = more // 10, more // 10
    new, _ = load(client, more - late - replays, start, first_copy=copies, ingested_now=True)
    client.command(  # late: a reconciled record for the first try of old runs' tasks
        "INSERT INTO events SELECT generateUUIDv4(rowNumberInAllBlocks()), 'task_reconciled', "
        f"{', '.join(c for c in COLUMNS if c not in ('event_id', 'kind'))}, now64(3) "
        "FROM events WHERE kind = 'task_instance' AND state = 'success' AND try_number = 1 "
        "ORDER BY emitted_at LIMIT {n:UInt64}", parameters={"n": late})
    client.command(  # replays: stored events again, same ids, a later ingested_at
        f"INSERT INTO events SELECT {', '.join(COLUMNS)}, now64(3) FROM events "
        "ORDER BY emitted_at LIMIT {n:UInt64} OFFSET 1000", parameters={"n": replays})
    return {"new": new, "late": late, "replayed": replays}


def latencies(client: Any, marts: str, repeat: int, start: datetime, days: int) -> dict[str, Any]:
    middle = start + timedelta(days=days // 2)
    run = client.query("SELECT run_id FROM events WHERE dag_id = 'dag_0500' AND kind = 'dag_run' "
                       "AND emitted_at >= {m:DateTime64(6)} ORDER BY emitted_at LIMIT 1",
                       parameters={"m": middle.replace(tzinfo=None)}).result_rows[0][0]
    window = {"since": middle.date().isoformat(), "until": (middle + timedelta(days=7)).date().isoformat()}
    params = {"runs": {"dag_id": "dag_0500", **window}, "timeline": {"dag_id": "dag_0500", "run_id": run},
              "failures": window, "flaky": window, "slowest": window,
              "metrics": {"dag_id": "dag_0500", "run_id": run}}
    out: dict[str, Any] = {}
    for source, reps in (("marts", repeat), ("events", max(3, repeat // 10))):
        for name in QUESTIONS:
            times, rows = [], 0
            for _ in range(reps):
                started = time.perf_counter()
                rows = len(ask(client, name, params[name], marts, source).rows)
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            out[f"{source}.{name}"] = {"p50_ms": round(statistics.median(times), 1),
                                       "p95_ms": round(percentile(times, 0.95), 1), "rows": rows}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--more", type=int, default=10_000)
    parser.add_argument("--audit-events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--only", choices=("build", "audit"), help="one part only")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dbt-"))
    server = embedded.start(tmp / "warehouse")
    report: dict[str, Any] = {"dags": DAGS}
    started = time.perf_counter()  # dbt's start alone: imports, no project, no connection
    subprocess.run([str(Path(sys.executable).with_name("dbt")), "--version"], capture_output=True, check=True)
    report["dbt_version_s"] = round(time.perf_counter() - started, 2)
    try:
        base = server.settings("default")
        for name, size in (("build", args.events), ("audit", args.audit_events)):
            if args.only and name != args.only:
                continue
            apply(base.client(), name, 400)
            settings = base.with_database(name)
            client = settings.client()
            start = span_start(size)
            started = time.perf_counter()
            loaded, copies = load(client, size, start)
            report[f"{name}.events"] = loaded
            report[f"{name}.load_s"] = round(time.perf_counter() - started, 1)
            timed_dbt(settings, tmp, "parse")  # dbt's own parse cache, as on any second run
            report[f"{name}.full_build_s"] = timed_dbt(settings, tmp, "build")
            if name == "build":
                report["build.increment"] = add_increment(client, args.more, start, copies)
                report["build.incremental_build_s"] = timed_dbt(settings, tmp, "build")
                report["build.incremental_run_s"] = timed_dbt(settings, tmp, "run")
            else:
                report["audit.latency"] = latencies(client, name, args.repeat, start, span_days(size))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    save("dbt_and_audit", report)


if __name__ == "__main__":
    main()
