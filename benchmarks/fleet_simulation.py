"""A fleet's event stream, end to end on the embedded warehouse, at the fleet's real rate.

One writer process per host (50 workers and a scheduler by default) replays its part of a
planned fleet (benchmarks/fleet_writer.py: 100,000 task runs per hour, 30% of an hour's DAG
runs started within two minutes of the top of the hour) with the listener's own adapter,
``EventWriter`` and ``Spool``, into one spool directory; the real ingester (``batchobs
ingest``, a process) tails it into the embedded warehouse (``warehouse.embedded.start``).
The plan runs through phases, each a segment of the writers' clock:

1. warm-up (not measured) and steady state, at the real rate;
2. the top of the hour, at the real rate: the burst starts and its DAG runs' task chains
   run on for a few minutes;
3. steps of raised rate (``--steps``: the same plan replayed 3, 10, 30 times faster) to
   find how the pipeline's cost per event and freshness move with the rate;
4. a warehouse outage of ``--outage-minutes`` (10) of the fleet's events: the warehouse is
   stopped and the writers write those minutes' events at ``--outage-scale`` (10) times the
   real pace (nothing is ingested meanwhile, so only the backlog's size matters; the
   ingester's retry backoff sees a shorter outage than a real one);
5. after: the warehouse starts again on the same data, the writers go on at the real rate,
   and the backlog drains.

Measured, per phase: freshness p50/p95/p99 (an event's ``emitted_at`` to the moment a poller,
asking every 0.25 s, first sees its insert's ``ingested_at``); the ingester's lag
(``batchobs_ingest_lag_bytes`` / ``_seconds`` from its /metrics); CPU seconds per 1,000 events
of the listener (its code alone, and whole writer processes), the ingester and the engine
(from /proc, sampled every 0.25 s); peak RSS (VmHWM).  For the outage: the backlog at restart,
the time to the first insert and until every event written before the restart is queryable,
the drain's rate and CPU.  At the end, exactly once: rows == distinct event ids == events
written, or the run fails.  All on one machine: writers, ingester and engine share its cores.

Usage: python benchmarks/fleet_simulation.py [--quick] [--task-runs-per-hour 100000] [--hosts 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from bisect import bisect_left
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchobs.loopback import free_port  # noqa: E402
from benchmarks._processes import cpu_s, ingester_env, peak_rss_mb  # noqa: E402
from benchmarks._report import percentile, save  # noqa: E402
from benchmarks.fleet_writer import Clock, plan  # noqa: E402
from warehouse import embedded  # noqa: E402
from warehouse.connection import ClickHouseSettings  # noqa: E402
from warehouse.migrate import apply  # noqa: E402

BATCHOBS = str(Path(sys.executable).with_name("batchobs"))
METRICS = {"batchobs_ingest_lag_bytes": "lag_bytes", "batchobs_ingest_lag_seconds": "lag_seconds",
           "batchobs_ingest_events_inserted_total": "inserted"}


class Sampler:
    """CPU of every process, the ingester's metrics and peak RSS, every ``every_s``."""

    def __init__(self, ingester: int, writers: list[int], metrics_url: str, every_s: float = 0.25) -> None:
        self.ingester, self.writers, self.metrics_url, self.every_s = ingester, writers, metrics_url, every_s
        self.engines: list[int] = []  # one pid per start of the warehouse
        self.samples: list[dict[str, float]] = []
        self.peak_mb: dict[str, float] = {"ingester": 0.0, "engine": 0.0, "writer": 0.0}
        self._cpu: dict[int, float] = {}  # last CPU seen of each pid (kept after it exits)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def cpu(self, pids: list[int]) -> float:
        for pid in pids:
            with contextlib.suppress(OSError):  # exited: its last figure stands
                self._cpu[pid] = cpu_s(pid)
        return sum(self._cpu.get(pid, 0.0) for pid in pids)

    def metrics(self) -> dict[str, float]:
        found = dict.fromkeys(METRICS.values(), float("nan"))
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as resp:
                for row in resp.read().decode().splitlines():
                    name, _, value = row.partition(" ")
                    if name in METRICS:
                        found[METRICS[name]] = float(value)
        except OSError:
            pass
        return found

    def sample(self) -> None:
        self.samples.append({"t": time.time(), "ingester": self.cpu([self.ingester]),
                             "engine": self.cpu(self.engines), "writers": self.cpu(self.writers),
                             **self.metrics()})
        self.peak_mb["ingester"] = max(self.peak_mb["ingester"], peak_rss_mb(self.ingester))
        self.peak_mb["engine"] = max([self.peak_mb["engine"], *(peak_rss_mb(p) for p in self.engines[-1:])])
        self.peak_mb["writer"] = max([self.peak_mb["writer"], *(peak_rss_mb(p) for p in self.writers)])

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()

    def at(self, t: float) -> dict[str, float]:
        """The first sample at or after ``t`` (the last one if none is)."""
        i = min(bisect_left([s["t"] for s in self.samples], t), len(self.samples) - 1)
        return self.samples[i]

    def between(self, start: float, end: float, name: str) -> list[float]:
        return sorted(s[name] for s in self.samples if start <= s["t"] < end and s[name] == s[name])


class Poller:
    """When each insert (one ``ingested_at``) first answers a query."""

    def __init__(self, settings: ClickHouseSettings, every_s: float = 0.25) -> None:
        self.settings, self.every_s = settings, every_s
        self.seen: dict[Any, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = None
        since = "1970-01-01 00:00:00.000"
        while not self.stop.wait(self.every_s):
            try:
                client = client or self.settings.client(autogenerate_session_id=False)
                rows = client.query("SELECT DISTINCT ingested_at FROM events WHERE ingested_at > "
                                    "{since:DateTime64(3, 'UTC')}", parameters={"since": since}).result_rows
            except Exception:  # noqa: BLE001 - the warehouse is away (the outage): ask again
                client = None
                continue
            now = time.time()
            for (at,) in rows:
                self.seen.setdefault(at, now)
            if rows:  # inserts commit out of order by up to their duration: look back 30 s
                since = time.strftime("%Y-%m-%d %H:%M:%S.000", time.gmtime(epoch(max(self.seen)) - 30))


def epoch(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def phases_of(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """(name, simulated seconds, scale) of each phase, in order."""
    return [("warm_up", args.warm_up_s, 1), ("steady", args.steady_s, 1), ("top_of_hour", args.top_s, 1),
            *((f"rate_x{k:g}", args.step_s * k, k) for k in args.steps), ("settle", args.settle_s, 1),
            ("outage", args.outage_minutes * 60, args.outage_scale), ("after_restart", args.after_s, 1)]


def start_writers(plans: dict[str, list[list[Any]]], tmp: Path, spool: Path, segments: list[list[float]]
                  ) -> list[subprocess.Popen[str]]:
    procs = []
    for host, events in plans.items():
        plan_file = tmp / "plans" / f"{host}.jsonl"
        plan_file.parent.mkdir(parents=True, exist_ok=True)
        plan_file.write_text("".join(json.dumps(e) + "\n" for e in events))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "fleet_writer.py"), str(plan_file),
                                       str(spool), host, json.dumps(segments)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, cwd=ROOT))
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a writer did not start")
    return procs


def freshness_of(lags: list[float]) -> dict[str, float]:
    lags = sorted(lags)
    if not lags:
        return {}
    return {"p50_s": round(percentile(lags, 0.5), 2), "p95_s": round(percentile(lags, 0.95), 2),
            "p99_s": round(percentile(lags, 0.99), 2), "max_s": round(lags[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task-runs-per-hour", type=float, default=100_000)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--burst-share", type=float, default=0.3, help="share of an hour's DAG runs started at the top")
    parser.add_argument("--burst-minutes", type=float, default=2)
    parser.add_argument("--warm-up-s", type=float, default=30)
    parser.add_argument("--steady-s", type=float, default=90, help="real rate, before the top of the hour")
    parser.add_argument("--top-s", type=float, default=300, help="real rate, from the top of the hour")
    parser.add_argument("--steps", type=lambda s: [float(k) for k in s.split(",") if k], default=[3, 10, 30],
                        help="raised rates, as multiples of the real rate (comma-separated)")
    parser.add_argument("--step-s", type=float, default=40, help="real seconds of each raised rate")
    parser.add_argument("--settle-s", type=float, default=20, help="real rate, before the outage")
    parser.add_argument("--outage-minutes", type=float, default=10, help="the fleet's minutes without a warehouse")
    parser.add_argument("--outage-scale", type=float, default=10, help="how much faster the outage's events come")
    parser.add_argument("--after-s", type=float, default=120, help="real rate, after the warehouse is back")
    parser.add_argument("--idle-s", type=float, default=10, help="the baseline, before any event")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about three minutes")
    args = parser.parse_args()
    if args.quick:
        args.warm_up_s, args.steady_s, args.top_s, args.steps, args.step_s = 10, 20, 40, [10], 15
        args.settle_s, args.outage_minutes, args.after_s = 10, 2, 30
    phases = phases_of(args)
    segments, sim = [], 0.0
    for _, length, scale in phases:
        segments.append([sim, scale])
        sim += length
    top = args.warm_up_s + args.steady_s

    subprocess.run([sys.executable, "-m", "compileall", "-q", "listener", "ingest", "warehouse"], cwd=ROOT,
                   check=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""))
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    spool, data = tmp / "spool", tmp / "warehouse"
    port = free_port()
    server = embedded.start(data, port=port)
    procs: list[subprocess.Popen[Any]] = []
    try:
        base = server.settings("default")
        apply(base.client(), "batchobs", 400)
        settings = base.with_database("batchobs")
        plans = plan(args.task_runs_per_hour, args.hosts, sim, top, args.burst_share, args.burst_minutes * 60)
        writers = start_writers(plans, tmp, spool, segments)
        procs += writers
        metrics_port = free_port()
        ingester = subprocess.Popen(
            [BATCHOBS, "ingest", "--metrics-port", str(metrics_port)],
            env=ingester_env(settings, tmp / "home", BATCHOBS_SPOOL_DIR=str(spool)),
            stderr=open(tmp / "ingest.log", "ab"), cwd=ROOT)  # noqa: SIM115 - lives with the process
        procs.append(ingester)
        sampler = Sampler(ingester.pid, [w.pid for w in writers], f"http://127.0.0.1:{metrics_port}/metrics")
        sampler.engines.append(server.pid)
        poller = Poller(settings)
        time.sleep(3)  # the ingester connects
        sampler.thread.start()
        poller.thread.start()
        time.sleep(1)
        idle_from = sampler.at(time.time())
        time.sleep(args.idle_s)  # what the engine and the ingester spend with no events (the poller asking)
        idle_to = sampler.at(time.time())
        idle_cpu_per_s = {k: round((idle_to[k] - idle_from[k]) / max(1e-6, idle_to["t"] - idle_from["t"]), 4)
                          for k in ("ingester", "engine")}
        t0 = time.time() + 0.5
        clock = Clock(segments, t0)
        bounds = [clock.real(start) for start, _ in segments] + [clock.real(sim)]
        for w in writers:
            assert w.stdin is not None
            w.stdin.write(f"{t0}\n")
            w.stdin.flush()

        out_i = [name for name, *_ in phases].index("outage")
        time.sleep(max(0.0, bounds[out_i] - time.time()))
        server.stop()
        stopped = time.time()
        time.sleep(max(0.0, bounds[out_i + 1] - time.time()))
        restarting = time.time()
        server = embedded.start(data, port=port)
        restarted = time.time()
        sampler.engines.append(server.pid)
        engine_start_cpu_s = cpu_s(server.pid)
        at_restart = {"ingester": sampler.cpu([ingester.pid]), "engine": sampler.cpu(sampler.engines)}
        reports = []
        for w in writers:
            out, _ = w.communicate(timeout=max(60.0, bounds[-1] - time.time() + 120))
            reports.append(json.loads(out.strip().splitlines()[-1]))
        written = sum(sum(r["events"]) for r in reports)
        client = settings.client()
        deadline = time.time() + 300
        while client.command("SELECT count() FROM events") < written and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(2 * poller.every_s + 0.5)  # the poller sees the last insert
        sampler.stop.set()
        poller.stop.set()
        sampler.thread.join()
        poller.thread.join()
        ingester.send_signal(signal.SIGTERM)
        ingester.wait(60)

        rows, distinct = client.query("SELECT count(), uniqExact(event_id) FROM events").result_rows[0]
        events = client.query("SELECT toUnixTimestamp64Micro(emitted_at) / 1e6, ingested_at, "
                              "kind = 'task_instance' AND state IN ('success', 'failed') FROM events").result_rows
        seen = poller.seen
        landed = [(emitted, seen[at], terminal) for emitted, at, terminal in events if at in seen]
        landed.sort()
        emitted_at = [e for e, _, _ in landed]

        def window(start: float, end: float) -> list[tuple[float, float, bool]]:
            return landed[bisect_left(emitted_at, start):bisect_left(emitted_at, end)]

        report_phases: dict[str, Any] = {}
        for i, (name, _, scale) in enumerate(phases):
            start, end = bounds[i], bounds[i + 1]
            if name == "outage":
                end = restarted  # the restart's own seconds belong to the outage
            elif name == "after_restart":
                start = restarted
            # the settle phase's last seconds wait for the outage: not freshness
            inside = window(start, end - 3 if name == "settle" else end)
            count = sum(r["events"][i] for r in reports)
            before, after = sampler.at(start), sampler.at(end)

            def per_1k(key: str, before: dict[str, float] = before, after: dict[str, float] = after,
                       count: int = count) -> float:
                return round(1000 * (after[key] - before[key]) / max(1, count), 3)

            lag_b, lag_s = sampler.between(start, end, "lag_bytes"), sampler.between(start, end, "lag_seconds")
            entry: dict[str, Any] = {
                "real_s": round(end - start, 1), "rate_x": scale, "events": count,
                "events_per_s": round(count / (end - start), 1),
                "task_runs_per_hour": round(sum(1 for *_, t in inside if t) * 3600 / (end - start)),
                "writers_late_max_s": round(max(r["late_max_s"][i] for r in reports), 2),
                "freshness": freshness_of([seen_at - e for e, seen_at, _ in inside]),
                "cpu_s_per_1k_events": {
                    "listener_code": round(1000 * sum(r["listener_cpu_s"][i] for r in reports) / max(1, count), 3),
                    "writer_processes": per_1k("writers"), "ingester": per_1k("ingester"),
                    "engine": per_1k("engine")},
                "lag_bytes": {"p95": percentile(lag_b, 0.95), "max": lag_b[-1]} if lag_b else {},
                "lag_seconds_max": lag_s[-1] if lag_s else None,
            }
            report_phases[name] = entry

        backlog = [(e, s) for e, s, _ in landed if e < restarted and s > restarted]
        first_landed = min((s for s in seen.values() if s > restarted), default=restarted)
        drained_at = max((s for _, s in backlog), default=restarted)
        drain_events = sum(1 for _, s, _ in landed if first_landed <= s <= drained_at)
        # Each insert in flight when the warehouse went away waits out its own retry backoff:
        # the drain proper flows after the last pause of over 2 s between landings.
        landings = sorted({s for s in seen.values() if restarted < s <= drained_at})
        resumed_at = next((b for a, b in zip(landings[-2::-1], landings[::-1], strict=False) if b - a > 2),
                          first_landed)
        flow_events = sum(1 for _, s, _ in landed if resumed_at < s <= drained_at)
        flow_s = max(1e-6, drained_at - resumed_at)
        at_drained = sampler.at(drained_at)
        drain_cpu = {k: round(1000 * (at_drained[k] - at_restart[k]) / max(1, drain_events), 3)
                     for k in ("ingester", "engine")}
        inserted = [(round(s["t"] - restarted, 1), s["inserted"]) for s in sampler.samples
                    if restarted <= s["t"] <= drained_at + 1 and s["inserted"] == s["inserted"]]
        terminal = sum(1 for *_, t in events if t)
        report: dict[str, Any] = {
            "settings": {k: v for k, v in vars(args).items()},
            "fleet": {"hosts": args.hosts, "writer_processes": len(writers), "events": written,
                      "task_runs": terminal, "events_per_task_run": round(written / max(1, terminal), 2)},
            "exactly_once": {"written": written, "rows": int(rows), "distinct_ids": int(distinct),
                             "ingester_reported_inserted": sampler.samples[-1]["inserted"] if sampler.samples else None,
                             "ok": written == rows == distinct},
            "idle_cpu_s_per_s": idle_cpu_per_s,
            "phases": report_phases,
            "outage": {
                "warehouse_down_s": round(restarting - stopped, 1), "restart_s": round(restarted - restarting, 1),
                "backlog_events": len(backlog),
                "first_insert_after_restart_s": round(first_landed - restarted, 2),
                "drained_after_restart_s": round(drained_at - restarted, 2),
                "drain_resumed_after_restart_s": round(resumed_at - restarted, 2),
                "drain_events": drain_events, "drain_flow_events_per_s": round(flow_events / flow_s),
                "drain_cpu_s_per_1k_events": drain_cpu,
                "inserted_after_restart": inserted[::max(1, len(inserted) // 40)],
                "engine_start_cpu_s": engine_start_cpu_s,
                "lag_bytes_max": max(sampler.between(stopped, drained_at + 1, "lag_bytes"), default=None),
            },
            "peak_rss_mb": {k: round(v, 1) for k, v in sampler.peak_mb.items()},
            "events_not_seen_by_poller": len(events) - len(landed),
            "load_average_at_end": os.getloadavg(),
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    save("fleet_simulation", report)
    if not report["exactly_once"]["ok"]:
        raise SystemExit(f"exactly once FAILED: {report['exactly_once']}")


if __name__ == "__main__":
    main()
