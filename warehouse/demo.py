"""The main job, on the embedded default: the whole path, from DAG runs to audit SQL.

1. the embedded warehouse starts (or ``BATCHOBS_CLICKHOUSE_URL`` is used) and is migrated;
2. where Debian's prometheus and prometheus-pushgateway are installed, both start on loopback;
3. ``examples/batchobs_example.py`` runs several times in a real Airflow (``dag.test()``)
   with the listener on: events to the spool, gauges to the Pushgateway;
4. the ingester drains the spool into ClickHouse;
5. dbt builds and tests the models (``dbt/``);
6. a per-run audit table and the daily failure-rate rollup are printed from the marts,
   and the fleet gauges from Prometheus.

SIGINT or SIGTERM stops it at any step: every process it started (warehouse,
Pushgateway, Prometheus, the Airflow runner and its children) is stopped and its
temporary directory removed on the way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import embedded
from .bundled import bundled_dir
from .connection import DATABASE, ClickHouseSettings, home_dir
from .errors import Interrupted
from .migrate import apply, retention_days_from_env
from .transform import marts_database, run_dbt

__all__ = ["ROLLUP_SQL", "RUNS_SQL", "prometheus_config", "run", "run_dag_test"]

EXAMPLE = bundled_dir("examples") / "batchobs_example.py"
# prometheus.yml and the rules (prometheus/rules/*.yml) the demo's Prometheus loads
PROMETHEUS_DIR = bundled_dir("prometheus")

# The demo's two reports, read from the dbt marts (dbt/models/marts).
RUNS_SQL = """
SELECT run_id, task_id, map_index, tries, final_state, first_try_succeeded,
       round(total_duration_s, 2) AS duration_s, final_error_type AS error
FROM {marts:Identifier}.fct_task_runs
WHERE dag_id = {dag_id:String}
ORDER BY run_id, task_id, map_index
"""

ROLLUP_SQL = """
SELECT run_date, task_id, runs, failures, round(failure_rate, 3) AS failure_rate,
       round(first_try_success_rate, 3) AS first_try_success_rate, round(retry_rate, 3) AS retry_rate,
       round(duration_p50_s, 2) AS p50_s, round(duration_p95_s, 2) AS p95_s
FROM {marts:Identifier}.agg_task_failure_rate_daily
WHERE dag_id = {dag_id:String}
ORDER BY run_date, failure_rate DESC, task_id
"""

OUTCOMES = """\
  batchobs_example fails on purpose: each run shows every outcome batchobs records.
    succeed   succeeds on its first try
    flaky     fails its first try, succeeds on the retry (a flaky task, a retry in the rollup)
    broken    fails both tries: the task ends failed, so every run ends failed (alert BatchobsTaskFailed)
    shard     mapped over 3 items: one row per map index in the run history
    skipped   skips itself (AirflowSkipException)
    measured  records custom metrics (rows_processed, null_ratio) with listener.record_metric"""

DASHBOARDS = """\
[bold]grafana[/] dashboards in grafana/dashboards (Fleet, History, Run detail, Pipeline health), data sources and
  provider in grafana/provisioning. To see them, provision them into a Grafana (>= 11.6, with the
  grafana-clickhouse-datasource plugin) pointed at your Prometheus and ClickHouse: README, "Grafana"."""

RUNNER = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("dagfile", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
from airflow.sdk import DAG
dag = next(v for v in vars(module).values() if isinstance(v, DAG))
states = []
for i in range(int(sys.argv[2])):
    states.append(str(getattr(dag.test().state, "value", "")))
    print(f"PROGRESS {i + 1}", flush=True)
print("RESULT " + json.dumps({"states": states}), flush=True)
"""


def airflow_env(home: Path, spool: Path, dags_folder: Path, **extra: str) -> dict[str, str]:
    """An environment for an Airflow of our own (SQLite under ``home``) with the listener on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHOBS_", "AIRFLOW"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder), BATCHOBS_SPOOL_DIR=str(spool))
    env.setdefault("BATCHOBS_INSTANCE", "demo")
    env.update(extra)
    return env


def run_dag_test(dag_file: Path, env: dict[str, str], runs: int = 1, timeout_s: float = 900,
                 on_progress: Any = None) -> dict[str, Any]:
    """Run a DAG ``runs`` times with ``dag.test()`` in a fresh process (the listener loads there)."""
    env = dict(env, AIRFLOW__CORE__DAGS_FOLDER=str(dag_file.parent))  # dag.test() serializes from there
    # Its own process group, so that a stop takes Airflow's children with it.
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(dag_file), str(runs)], env=env,  # noqa: S603
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=env["AIRFLOW_HOME"],
                            start_new_session=True)
    result: dict[str, Any] = {}
    assert proc.stdout is not None
    output = []
    try:
        for text in proc.stdout:
            output.append(text)
            if text.startswith("PROGRESS ") and on_progress:
                on_progress(int(text.split()[1]))
            elif text.startswith("RESULT "):
                result = json.loads(text[7:])
        stderr = proc.stderr.read() if proc.stderr else ""
        returncode = proc.wait(timeout_s)
    finally:
        _stop_group(proc)
    if returncode != 0 or not result:
        raise RuntimeError(f"dag.test() failed: {''.join(output)[-2000:]}{stderr[-2000:]}")
    result.update(stdout="".join(output), stderr=stderr)
    return result


def run(runs: int = 3) -> int:
    console = Console() if sys.stdout.isatty() else Console(width=160)  # logs keep whole columns
    home = home_dir()
    with ExitStack() as stack:
        stack.enter_context(_stopped_by_signals())  # entered first: it is left last, after every cleanup
        settings = stack.enter_context(_warehouse(console, home))
        with console.status("migrating"):
            applied = apply(settings.with_database("default").client(), settings.database, retention_days_from_env())
        console.print(f"[bold]warehouse[/] {settings.url} ({len(applied)} migrations applied)")
        gateway, prometheus = stack.enter_context(_prometheus(console))

        airflow_home, spool = home / "airflow", home / "spool"
        if not (airflow_home / "airflow.db").exists():
            with console.status("creating the Airflow metadata DB (first run only)"):
                subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],  # noqa: S603
                               env=airflow_env(airflow_home, spool, EXAMPLE.parent), check=True,
                               capture_output=True)
        env = airflow_env(airflow_home, spool, EXAMPLE.parent,
                          **({"BATCHOBS_PUSHGATEWAY_URL": gateway} if gateway else {}))
        with console.status(f"running {EXAMPLE.name} {runs} times in Airflow (dag.test)") as status:
            result = run_dag_test(EXAMPLE, env, runs,
                                  on_progress=lambda i: status.update(f"DAG runs done: {i} of {runs}"))
        console.print(f"[bold]airflow[/] {runs} runs of batchobs_example: {', '.join(result['states'])}")
        console.print(OUTCOMES, highlight=False)

        from ingest.service import IngestConfig, Ingester

        with console.status("ingesting the spool"):
            ingester = Ingester(IngestConfig(spool_dir=spool, state_dir=home / "ingest"),
                                settings.client(autogenerate_session_id=False), log=_quiet_log())
            ingester.run(once=True)
        inserted = int(ingester.metrics.events_inserted._value.get())
        dead = int(ingester.metrics.dead_letters._value.get())
        console.print(f"[bold]ingest[/] {inserted} events inserted, {dead} dead letters")

        with console.status("building the dbt models (dbt build: models, schema and unit tests)"):
            built = run_dbt(["build", "--quiet"], settings, capture=True)
        if built.returncode != 0:
            console.print(built.stdout[-4000:], built.stderr[-2000:], markup=False)
            console.print("[bold red]dbt build failed[/]")
            return 1
        console.print("[bold]dbt[/] models built and tested (`batchobs dbt build`)")

        client = settings.client()
        params = {"dag_id": "batchobs_example", "marts": marts_database(settings)}
        _print(console, "Per-run audit: one row per task instance (fct_task_runs)",
               client.query(RUNS_SQL, parameters=params))
        _print(console, "Failure-rate rollup by day and task (agg_task_failure_rate_daily)",
               client.query(ROLLUP_SQL, parameters=params))
        console.print("More questions: `batchobs audit --help` (runs, timeline, failures, flaky, slowest, metrics)")
        if prometheus:
            _print_fleet(console, prometheus)
            _print_alerts(console, prometheus)
        else:
            console.print("[bold]fleet gauges[/] off: install Debian's prometheus and prometheus-pushgateway "
                          "(`make test` does) and run again, or point BATCHOBS_PUSHGATEWAY_URL at yours")
        console.print(DASHBOARDS, highlight=False)
    return 0


@contextmanager
def _warehouse(console: Console, home: Path) -> Iterator[ClickHouseSettings]:
    url = os.environ.get("BATCHOBS_CLICKHOUSE_URL")
    if url:
        yield ClickHouseSettings.from_url(url)
        return
    data_dir = home / "demo-warehouse"
    with console.status(f"starting the embedded warehouse on {data_dir}"):
        server = embedded.start(data_dir)
    try:
        yield server.settings(DATABASE)
    finally:
        server.stop()


@contextmanager
def _prometheus(console: Console) -> Iterator[tuple[str, str]]:
    """A Pushgateway and a Prometheus scraping it, on loopback, if installed."""
    gateway_bin, prom_bin = shutil.which("prometheus-pushgateway"), shutil.which("prometheus")
    if not (gateway_bin and prom_bin):
        yield "", ""
        return
    work = Path(tempfile.mkdtemp(prefix="batchobs-demo-prom-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        gw_port, prom_port = _free_port(), _free_port()
        gateway = f"http://127.0.0.1:{gw_port}"
        (work / "prometheus.yml").write_text(prometheus_config(f"127.0.0.1:{gw_port}"))
        # a state file of its own: without one Debian's package default (machine-wide) is loaded and overwritten
        procs.append(subprocess.Popen([gateway_bin, f"--web.listen-address=127.0.0.1:{gw_port}",  # noqa: S603
                                       f"--persistence.file={work / 'pushgateway.dat'}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([prom_bin, f"--config.file={work / 'prometheus.yml'}",  # noqa: S603
                                       f"--storage.tsdb.path={work / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        console.print(f"[bold]fleet[/] Pushgateway {gateway}, Prometheus http://127.0.0.1:{prom_port} "
                      f"(rules from {PROMETHEUS_DIR / 'rules'})")
        yield gateway, f"http://127.0.0.1:{prom_port}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            _reap(proc)
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted``, which unwinds through every cleanup."""
    def stop(signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # one stop is enough: let the cleanup finish
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _reap(proc: subprocess.Popen[Any], timeout_s: float = 10) -> None:
    """Wait for a process told to stop; kill it if it does not within ``timeout_s``."""
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a process started in its own session, and every process in its group."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    proc.wait()


def prometheus_config(gateway: str, ingester: str = "", statsd_exporter: str = "") -> str:
    """``prometheus/prometheus.yml`` for loopback: the Pushgateway at ``host:port`` (and the
    ingester's /metrics and statsd-exporter at theirs, if given) scraped every second, the rules
    loaded from ``prometheus/rules`` by absolute path; a job with no address given is left out."""
    import yaml  # type: ignore[import-untyped]  # dbt-core brings PyYAML; its stubs are not a dependency

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / pattern) for pattern in config["rule_files"]]
    targets = {"pushgateway": gateway, "batchobs-ingester": ingester, "statsd-exporter": statsd_exporter}
    config["scrape_configs"] = [
        dict(job, static_configs=[{"targets": [targets[job["job_name"]]]}])
        for job in config["scrape_configs"] if targets.get(job["job_name"])
    ]
    return str(yaml.safe_dump(config, sort_keys=False))


def _print_fleet(console: Console, prometheus: str) -> None:
    query = 'task_status{instance="demo"}'
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20  # the first scrape of a new target takes a few seconds
    with console.status("waiting for Prometheus to scrape the Pushgateway"):
        while time.monotonic() < deadline and len(rows) < 6:
            url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our loopback Prometheus
                    rows = json.load(resp)["data"]["result"]
            except OSError:
                rows = []
            time.sleep(0.5)
    table = Table(title="Fleet state: task_status in Prometheus (1 success, -1 failed, 2 skipped)")
    for name in ("dag_id", "task_id", "task_status"):
        table.add_column(name)
    for row in sorted(rows, key=lambda r: r["metric"].get("task_id", "")):
        table.add_row(row["metric"].get("dag_id", ""), row["metric"].get("task_id", ""), row["value"][1])
    console.print(table)


def _print_alerts(console: Console, prometheus: str) -> None:
    """The batchobs alerts Prometheus fires on this data (prometheus/rules/batchobs.yml)."""
    alerts: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15  # rules are evaluated every second here
    with console.status("waiting for Prometheus to evaluate the alert rules"):
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{prometheus}/api/v1/alerts", timeout=5) as resp:  # noqa: S310 - loopback
                    alerts = [a for a in json.load(resp)["data"]["alerts"] if a["state"] == "firing"]
            except OSError:
                alerts = []
            if {"BatchobsTaskFailed", "BatchobsDagRunFailed"} <= {a["labels"]["alertname"] for a in alerts}:
                break
            time.sleep(0.5)
    table = Table(title="Alerts firing in Prometheus (prometheus/rules/batchobs.yml)")
    for name in ("alert", "severity", "summary"):
        table.add_column(name)
    for alert in sorted(alerts, key=lambda a: (a["labels"]["alertname"], a["annotations"].get("summary", ""))):
        table.add_row(alert["labels"]["alertname"], alert["labels"].get("severity", ""),
                      alert["annotations"].get("summary", ""))
    console.print(table)
    console.print("The example's `broken` task and its failed runs fire on purpose; in production these go to "
                  "Alertmanager (README: Grafana).", highlight=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quiet_log() -> Any:
    import structlog

    return structlog.wrap_logger(structlog.PrintLogger(open(os.devnull, "w")),
                                 processors=[structlog.processors.JSONRenderer()],
                                 wrapper_class=structlog.BoundLogger, context_class=dict)


def _print(console: Console, title: str, result: Any) -> None:
    table = Table(title=title)
    for name in result.column_names:
        table.add_column(name)
    for row in result.result_rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
