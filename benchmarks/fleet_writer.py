"""The fleet simulation's writers: an Airflow fleet's event stream, planned and replayed.

``plan()`` lays out DAG runs over a simulated window: task runs at a steady rate plus a
share of an hour's DAG runs started at the top of the hour, each run a chain of tasks on
random worker hosts (a try fails and is retried now and then; some runs fail), the DAG-run
events and the scheduler's reconciled records on the scheduler host, custom metrics from
some tasks.  Each host's part of the plan goes to one writer process.

``Clock`` maps simulated seconds to real ones, segment by segment: at scale 1 a segment
runs at the fleet's real rate; at scale k the same plan is replayed k times faster (k times
the event rate; task durations shrink with it, which the pipeline does not see).

A writer process (``python benchmarks/fleet_writer.py PLAN SPOOL_DIR HOST CLOCK``) is one
host's listener: at each planned moment it builds the event's fields as the listener's
hooks do (``listener.adapter`` over task-instance and DAG-run objects) and writes them with
the listener's own ``EventWriter`` and ``Spool``.  It says "ready" once imported, takes the
start time (epoch seconds) on stdin, and at the end prints its figures per clock segment:
events, CPU seconds spent in the listener's code, how late it fell behind plan.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from bisect import bisect_right
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from listener import adapter, contract
from listener.events import EventWriter
from listener.spool import Spool

SCHEDULER = "scheduler-1"
INSTANCE = "fleet"
TASKS_PER_RUN = (5, 15)  # uniform: 10 on average
MEDIAN_TASK_S, TASK_SIGMA, MAX_TASK_S = 20.0, 0.8, 600.0  # lognormal task duration (simulated seconds)
RETRIED, FAILED, WITH_METRIC = 0.05, 0.02, 0.2  # shares of task runs
OPERATORS = ("PythonOperator", "BashOperator", "KubernetesPodOperator", "SQLExecuteQueryOperator")


def workers(hosts: int) -> list[str]:
    return [f"worker-{i:02d}" for i in range(1, hosts + 1)]


class Clock:
    """Simulated seconds to real ones: ``segments`` is [[simulated start, scale], ...] from 0."""

    def __init__(self, segments: list[list[float]], t0: float = 0.0) -> None:
        self.t0, self.segments, self.real_starts = t0, segments, [0.0]
        self.sim_starts = [start for start, _ in segments]
        for (start, scale), (end, _) in pairwise(segments):
            self.real_starts.append(self.real_starts[-1] + (end - start) / scale)

    def segment(self, sim: float) -> int:
        return max(0, bisect_right(self.sim_starts, sim) - 1)

    def real(self, sim: float) -> float:
        """Epoch seconds of simulated second ``sim``."""
        i = self.segment(sim)
        start, scale = self.segments[i]
        return self.t0 + self.real_starts[i] + (sim - start) / scale


def plan(task_runs_per_hour: float, hosts: int, sim_s: float, top_s: float, burst_share: float,
         burst_s: float, seed: int = 20261123) -> dict[str, list[list[Any]]]:
    """Per host, its events in time order: [t (simulated s), kind, state, previous_state,
    dag_id, run_id, task_id, try_number, max_tries, start (s) or None, end (s) or None, metric]."""
    rng = random.Random(seed)
    mean_tasks = sum(TASKS_PER_RUN) / 2
    runs_per_hour = task_runs_per_hour / mean_tasks
    lead = 900.0  # runs started before the window are already under way when it opens
    steady = round(runs_per_hour * (1 - burst_share) * (sim_s + lead) / 3600)
    burst = round(runs_per_hour * burst_share) if 0 <= top_s < sim_s else 0
    names = workers(hosts)
    out: dict[str, list[list[Any]]] = defaultdict(list)

    def add(host: str, t: float, *spec: Any) -> None:
        if 0 <= t < sim_s:
            out[host].append([t, *spec])

    for i in range(steady + burst):
        start = top_s + rng.uniform(0, burst_s) if i < burst else rng.uniform(-lead, sim_s)
        dag_id = f"team_{i % 40:02d}.pipeline_{rng.randrange(2000):04d}"
        run_id = f"scheduled__{i:07d}"
        add(SCHEDULER, start, contract.DAG_RUN, "running", "", dag_id, run_id, "", 0, 0, start, None, None)
        t, finals, failed = start, [], False
        for j in range(rng.randint(*TASKS_PER_RUN)):
            task_id = f"step_{j:02d}"
            if failed:  # the run failed: the rest never ran
                finals.append((task_id, "upstream_failed", 0, None, None))
                continue
            outcome = rng.random()
            tries = 2 if outcome < RETRIED else 1
            for attempt in range(1, tries + 1):
                host = rng.choice(names)
                begin = t + rng.uniform(0.5, 3.0)  # queued, then picked up
                end = begin + min(MAX_TASK_S, rng.lognormvariate(math.log(MEDIAN_TASK_S), TASK_SIGMA))
                last = attempt == tries
                state = ("failed" if RETRIED <= outcome < RETRIED + FAILED else "success") if last \
                    else "up_for_retry"
                add(host, begin, contract.TASK_INSTANCE, "running", "queued", dag_id, run_id, task_id, attempt,
                    tries, begin, None, None)
                if last and rng.random() < WITH_METRIC:
                    add(host, end - 0.2, contract.TASK_METRIC, "running", "", dag_id, run_id, task_id, attempt,
                        tries, begin, None, rng.randrange(1, 1_000_000))
                add(host, end, contract.TASK_INSTANCE, state, "running", dag_id, run_id, task_id, attempt, tries,
                    begin, end, None)
                t = end + (10.0 if not last else 0.0)  # a retry waits its delay
                if last:
                    finals.append((task_id, state, attempt, begin, end))
                    failed = state == "failed"
        done = t + 1.0
        add(SCHEDULER, done, contract.DAG_RUN, "failed" if failed else "success", "", dag_id, run_id, "", 0, 0,
            start, done, None)
        for task_id, state, attempt, begin, end in finals:
            add(SCHEDULER, done, contract.TASK_RECONCILED, state, "", dag_id, run_id, task_id, attempt, attempt,
                begin, end, None)
    for events in out.values():
        events.sort(key=lambda e: e[0])
    return dict(out)


class FleetHost:
    """One host's listener: the adapter's fields, the EventWriter, the Spool."""

    def __init__(self, spool_dir: Path, hostname: str, clock: Clock) -> None:
        self.events = EventWriter(Spool(spool_dir, hostname), INSTANCE, hostname)
        self.clock = clock

    def at(self, sim: float | None) -> datetime | None:
        return None if sim is None else datetime.fromtimestamp(self.clock.real(sim), timezone.utc)

    def write(self, spec: list[Any]) -> None:
        _, kind, state, previous, dag_id, run_id, task_id, try_number, max_tries, start, end, metric = spec
        now = datetime.now(timezone.utc)
        logical = datetime(2026, 11, 23, tzinfo=timezone.utc) + timedelta(hours=int(run_id[-7:]) % 24)
        dag_run = SimpleNamespace(dag_id=dag_id, run_id=run_id, run_type="scheduled", logical_date=logical,
                                  data_interval_start=logical, data_interval_end=logical + timedelta(hours=1),
                                  queued_at=self.at(start), start_date=self.at(start), end_date=self.at(end))
        if kind == contract.DAG_RUN:
            self.events.write(kind, state=state, emitted_at=now, **adapter.dag_run_fields(dag_run, state, now))
            return
        ti = SimpleNamespace(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=-1, try_number=try_number,
                             max_tries=max_tries, queue="default", pool="default_pool", dag_run=dag_run,
                             task=SimpleNamespace(task_type=OPERATORS[int(task_id[-2:]) % len(OPERATORS)]),
                             queued_dttm=self.at(None if start is None else start - 1),
                             start_date=self.at(start), end_date=self.at(end))
        fields = adapter.task_fields(ti, state, previous or None, now)
        if kind == contract.TASK_METRIC:
            fields.update(end_date=None, duration_s=None, previous_state="")
            self.events.write(kind, emitted_at=now, metric_name="rows_processed", metric_value=float(metric),
                              metric_unit="rows", attrs={"table": "orders"}, **fields)
            return
        if kind == contract.TASK_RECONCILED and end is None:
            fields.update(end_date=None, duration_s=None)
        error = ValueError(f"{task_id} try {try_number} failed") if state in ("failed", "up_for_retry") else None
        attrs = {"recorded_by": "scheduler"} if kind == contract.TASK_RECONCILED else {}
        self.events.write(kind, state=state, emitted_at=now, attrs=attrs, **fields, **adapter.error_fields(error))


def main() -> None:
    plan_file, spool_dir, hostname = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    segments = json.loads(sys.argv[4])
    specs = [json.loads(row) for row in Path(plan_file).read_text().splitlines()]
    print("ready", flush=True)
    clock = Clock(segments, float(sys.stdin.readline()))
    host = FleetHost(spool_dir, hostname, clock)
    events, cpu, late = ([0] * len(segments), [0.0] * len(segments), [0.0] * len(segments))
    for spec in specs:
        i = clock.segment(spec[0])
        wait = clock.real(spec[0]) - time.time()
        if wait > 0:
            time.sleep(wait)
        else:
            late[i] = max(late[i], -wait)
        started = time.process_time()
        host.write(spec)
        cpu[i] += time.process_time() - started
        events[i] += 1
    host.events.spool.close()
    print(json.dumps({"host": hostname, "events": events, "listener_cpu_s": cpu, "late_max_s": late}), flush=True)


if __name__ == "__main__":
    main()
