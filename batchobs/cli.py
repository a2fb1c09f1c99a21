"""The ``batchobs`` command line.

Every failure ends in one line on stderr, ``batchobs: <problem>; <fix>``, and an exit
code; ``--debug`` (or ``BATCHOBS_DEBUG=1``) adds the traceback.  Exit codes: 0 done;
1 failed; 2 bad usage; 3 the warehouse server could not start; 128 + the signal's
number when stopped by SIGINT (130) or SIGTERM (143) before the work was done (a
service stopped by SIGTERM exits 0); 141 when stdout was closed early (``| head``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.config import MIN_BUFFER_BYTES, RETENTIONS, IngestConfig
from ingest.errors import IngestError
from warehouse import commands
from warehouse.errors import WarehouseError
from warehouse.options import PORT, seconds, whole

if TYPE_CHECKING:
    from ingest.service import Ingester
    from warehouse.layout import Layout

    from .audit import Question

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "main"]

EXIT_FAILED, EXIT_USAGE = 1, 2
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool cut off by `| head`




def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchobs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a failure (also BATCHOBS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    wh = sub.add_parser("warehouse", help="the ClickHouse warehouse").add_subparsers(
        dest="action", required=True
    )
    commands.add_serve_arguments(wh.add_parser("serve", help=commands.SERVE_HELP))
    commands.add_stop_arguments(wh.add_parser("stop", help=commands.STOP_HELP))
    migrate = wh.add_parser("migrate", help="create the database and apply pending migrations (idempotent)",
                            description="On a cluster (BATCHOBS_CLICKHOUSE_CLUSTER) every table is created ON CLUSTER, "
                            "replicated, behind a Distributed table of the same name.")
    migrate.add_argument("--dry-run", action="store_true",
                         help="print the statements it would run, in order, and run none (asks the warehouse, "
                         "read-only, what is applied; a stopped embedded warehouse is not started)")

    ingest = sub.add_parser("ingest", help="tail the spool into ClickHouse (exactly-once effect)")
    ingest.add_argument("--once", action="store_true", help="drain what is there, then exit")
    ingest.add_argument("--spool-dir", type=Path, help="default $BATCHOBS_SPOOL_DIR or $BATCHOBS_HOME/spool")
    ingest.add_argument("--state-dir", type=Path, help="checkpoint and archive (default $BATCHOBS_HOME/ingest)")
    ingest.add_argument("--batch-rows", type=whole(1), default=IngestConfig.max_rows)
    ingest.add_argument("--batch-bytes", type=whole(MIN_BUFFER_BYTES), default=IngestConfig.max_bytes)
    ingest.add_argument("--backlog-batch-bytes", type=whole(MIN_BUFFER_BYTES),
                        default=IngestConfig.backlog_batch_bytes,
                        help="while a backlog drains, batches grow up to this (rows in proportion); "
                             "at most about --inserts-in-flight + 2 batches are held in memory")
    ingest.add_argument("--max-latency", type=seconds, default=IngestConfig.max_latency_s,
                        help="seconds a line may wait for its batch")
    ingest.add_argument("--max-line-bytes", type=whole(MIN_BUFFER_BYTES), default=IngestConfig.max_line_bytes)
    ingest.add_argument("--inserts-in-flight", type=whole(1), default=IngestConfig.inserts_in_flight,
                        help="batches being inserted at once (committed in order)")
    ingest.add_argument("--retention", choices=RETENTIONS, default=IngestConfig.retention,
                        help="what to do with fully ingested spool files")
    ingest.add_argument("--metrics-port", type=PORT, default=None,
                        help="serve /metrics on 127.0.0.1:PORT (default 9465; none with --once; 0: none)")
    ingest.add_argument("--metrics-host", default="127.0.0.1")

    dbt = sub.add_parser("dbt", help="run dbt on the project in dbt/ against the configured warehouse",
                         description="Everything after `dbt` goes to dbt, e.g. `batchobs dbt build`.")
    dbt.add_argument("dbt_args", nargs=argparse.REMAINDER, help="dbt's own arguments (default: build)")

    audit = sub.add_parser("audit", help="run-level audit questions (from the dbt marts, else raw events)")
    questions = audit.add_subparsers(dest="question", required=True)
    for question in _audit_questions().values():
        ask = questions.add_parser(question.name, help=question.help, description=question.help)
        for param in question.params:
            default = "" if param.default in (None, "") else f" (default {param.default})"
            ask.add_argument("--" + param.name.replace("_", "-"), dest=param.name, help=param.help + default,
                             required=param.required)
        ask.add_argument("--format", choices=("table", "json", "csv"), default="table")
        ask.add_argument("--source", choices=("auto", "marts", "events"), default="auto",
                         help="auto: the dbt marts when built, else raw events")

    gateway = sub.add_parser("gateway", help="the Pushgateway the listener pushes to").add_subparsers(
        dest="action", required=True)
    prune = gateway.add_parser(
        "prune", help="remove groups of DAGs/tasks gone from Airflow, or not pushed for N days (dry run "
        "unless --apply)", description="Which ids exist: --dags-folder (parsed with Airflow's DagBag) or "
        '--known-tasks FILE ({"dag_id": ["task_id", ...]}); and/or --max-age-days.')
    prune.add_argument("--gateway", default=os.environ.get("BATCHOBS_PUSHGATEWAY_URL", ""),
                       help="Pushgateway URL (default $BATCHOBS_PUSHGATEWAY_URL)")
    prune.add_argument("--instance", help="the listener's BATCHOBS_INSTANCE (default: the same setting here)")
    prune.add_argument("--job", help="the listener's BATCHOBS_JOB (default: the same setting here)")
    prune.add_argument("--dags-folder", type=Path, help="the DAGs that exist: Airflow's DAGs folder")
    prune.add_argument("--known-tasks", type=Path, help='the DAGs that exist: JSON {"dag_id": ["task_id", ...]}')
    prune.add_argument("--max-age-days", type=float, help="also prune groups not pushed for this many days")
    prune.add_argument("--apply", action="store_true", help="delete (default: only list what would go)")

    demo = sub.add_parser("demo", help="the main job on the embedded default: warehouse, events, audit")
    demo.add_argument("--runs", default=3, type=whole(1), help="runs of the sample DAG in Airflow")
    return parser


# What each extra of pyproject.toml brings that the commands import (tests/test_wheel.py
# checks this against pyproject.toml), and which extras each command needs.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "ingest": ("clickhouse_connect", "msgspec", "lz4", "zstandard", "rich"),
    "embedded": ("chdb", "lz4", "zstandard"),
    "dbt": ("dbt.cli.main", "dbt.adapters.clickhouse"),
    "all": ("airflow", "rich"),
}
_COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "warehouse serve": ("embedded",),
    "warehouse migrate": ("ingest",),
    "ingest": ("ingest",),
    "dbt": ("dbt",),
    "audit": ("ingest",),
    "demo": ("all",),
}


def _missing_extra(command: str, env: Mapping[str, str] = os.environ) -> str | None:
    """One line naming the extra to install when ``command`` cannot import what it needs."""
    needed = list(_COMMAND_EXTRAS.get(command, ()))
    local = command in ("warehouse serve", "warehouse stop", "gateway prune", "demo")
    if not local and not env.get("BATCHOBS_CLICKHOUSE_URL", "").strip():
        needed.append("embedded")  # no warehouse configured: the command starts the embedded one
    for extra in needed:
        for module in EXTRA_MODULES[extra]:
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:  # its parent package is missing
                found = False
            if not found:
                return (f"batchobs {command}: needs the '{extra}' extra ({module} is not installed): "
                        f"pip install 'batchobs[{extra}]'")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is mapped to one line on stderr and an exit code here."""
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("BATCHOBS_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    logging.basicConfig(level=os.environ.get("BATCHOBS_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    missing = _missing_extra(" ".join(filter(None, (args.command, getattr(args, "action", None)))))
    if missing:
        print(missing, file=sys.stderr)
        return EXIT_USAGE
    if not debug:  # the drivers log each failure with its traceback; the one line below says it
        # (a filter on the handler: clickhouse_connect sets urllib3's level when imported)
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: not record.name.startswith(("urllib3", "clickhouse_connect")))
    try:
        code = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        # Whoever read stdout (`| head`) has all it wanted; Python's own flush at exit
        # would fail again on the same pipe, so point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    except KeyboardInterrupt as exc:  # SIGINT, or a signal turned into Interrupted
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"batchobs: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except Exception as exc:  # noqa: BLE001 - the one place failures become a line and a code
        if debug:
            traceback.print_exc()
        code, problem = _failure(exc)
        print(f"batchobs: {_one_line(problem)}", file=sys.stderr)
        return code
    return code


def _run(args: argparse.Namespace) -> int:
    if args.command == "warehouse" and args.action == "serve":
        return commands.serve(args)
    if args.command == "warehouse" and args.action == "stop":
        return commands.stop(args)
    if args.command == "warehouse" and args.action == "migrate":
        return _migrate(args.dry_run)
    if args.command == "ingest":
        return _ingest(args)
    if args.command == "dbt":
        return _dbt(args.dbt_args or ["build"])
    if args.command == "audit":
        return _audit(args)
    if args.command == "gateway":
        return _gateway_prune(args)
    if args.command == "demo":
        from .demo import run

        return run(runs=args.runs)
    return 2


def _failure(exc: Exception) -> tuple[int, str]:
    """The exit code and the line for a failure: what went wrong and what to do."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    from .audit import AuditError

    if isinstance(exc, AuditError):
        return EXIT_USAGE, f"{exc}; see `batchobs audit --help`"
    if isinstance(exc, (WarehouseError, IngestError)):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, OperationalError) and not getattr(exc, "code", None):  # no answer at all
        return EXIT_FAILED, _unreachable(str(exc))
    if isinstance(exc, DatabaseError):  # the server answered with an error
        return EXIT_FAILED, _refused(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return EXIT_FAILED, f"{exc.strerror or exc}{where}; check the path, its permissions and free space"
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {exc}; run again with --debug and report the traceback"


def _unreachable(message: str) -> str:
    url = re.search(r"\((https?://[^()\s]+)\)\s*$", message)
    where = re.sub(r"//[^@/]*@", "//", url.group(1)) if url else "the configured address"  # no credentials
    errno = re.search(r"\[Errno -?\d+\] ([^\"')]+)", message)
    reason = "no answer in time" if "timed out" in message else errno.group(1) if errno else "no answer"
    return (f"the warehouse at {where} cannot be reached ({reason}); check that it is running and that "
            "BATCHOBS_CLICKHOUSE_URL points at it (time limits: BATCHOBS_CLICKHOUSE_CONNECT_TIMEOUT_S, "
            "BATCHOBS_CLICKHOUSE_QUERY_TIMEOUT_S)")


# ClickHouse error codes a person can fix, and the fix.
_FIXES = {
    516: "check the user and password in BATCHOBS_CLICKHOUSE_URL",  # AUTHENTICATION_FAILED
    81: "run `batchobs warehouse migrate`",  # UNKNOWN_DATABASE
    60: "run `batchobs warehouse migrate` (and `batchobs dbt build` for the marts)",  # UNKNOWN_TABLE
    497: "grant the user what batchobs needs, or use another user",  # ACCESS_DENIED
    159: "raise BATCHOBS_CLICKHOUSE_QUERY_TIMEOUT_S or narrow the question",  # TIMEOUT_EXCEEDED
}


def _refused(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    detail = re.search(r"DB::Exception: (.*?)(?: \(version [^)]*\))?(?:\. \(|$)", str(exc), re.S)
    said = detail.group(1) if detail else str(exc)
    fix = _FIXES.get(code or 0, "see the warehouse's log; run again with --debug for the full error")
    return f"the warehouse refused the request (code {code}): {said[:300]}; {fix}"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:1000]


def _gateway_prune(args: argparse.Namespace) -> int:
    from listener.config import ListenerConfig

    from .gateway import GatewayError, known_from_dags_folder, known_from_file, prune

    listener = ListenerConfig.from_env()  # the same defaults the listener pushes with
    try:
        if not args.gateway:
            raise GatewayError("no Pushgateway: pass --gateway URL or set BATCHOBS_PUSHGATEWAY_URL")
        if args.dags_folder and args.known_tasks:
            raise GatewayError("give either --dags-folder or --known-tasks, not both")
        known = (known_from_dags_folder(args.dags_folder) if args.dags_folder
                 else known_from_file(args.known_tasks) if args.known_tasks else None)
        pruned = prune(args.gateway, job=args.job or listener.job, instance=args.instance or listener.instance,
                       known=known, max_age_days=args.max_age_days, apply=args.apply)
    except GatewayError as exc:
        print(f"batchobs gateway prune: {exc}", file=sys.stderr)
        return 2
    for item in pruned:
        print(f"{'deleted' if item.deleted else 'would delete'}: {item.group.describe()} ({item.reason})")
    if not args.apply:
        print(f"{len(pruned)} group(s) to prune; dry run: nothing deleted (pass --apply to delete)")
    return 0


def _audit_questions() -> dict[str, Question]:
    from .audit import QUESTIONS

    return QUESTIONS


def _dbt(dbt_args: list[str]) -> int:
    from warehouse.connection import resolve

    from .transform import PROJECT_DIR, run_dbt

    if not (PROJECT_DIR / "dbt_project.yml").is_file():
        print(f"batchobs dbt: no dbt project at {PROJECT_DIR}: reinstall batchobs from its wheel or sdist",
              file=sys.stderr)
        return 2
    return run_dbt(dbt_args, resolve()).returncode


def _audit(args: argparse.Namespace) -> int:
    from warehouse.connection import resolve

    from .audit import ask, render
    from .transform import marts_database

    settings = resolve()
    question = _audit_questions()[args.question]
    params = {p.name: getattr(args, p.name) for p in question.params}
    answer = ask(settings.client(), args.question, params, marts_database(settings), args.source)
    render(answer, args.format, sys.stdout)
    return 0


def _migrate(dry_run: bool = False) -> int:
    from warehouse.connection import resolve
    from warehouse.layout import layout_from_env
    from warehouse.migrate import MigrationError, apply, migrations, retention_days_from_env

    try:
        migrations()  # refuse before starting or touching a warehouse
    except MigrationError as exc:
        print(f"batchobs warehouse migrate: {exc}", file=sys.stderr)
        return 2
    layout = layout_from_env()
    if dry_run:
        return _migrate_dry_run(layout)
    settings = resolve()
    admin = settings.with_database("default").client()
    done = apply(admin, settings.database, retention_days_from_env(), layout)
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in done) or "none (up to date)"
    print(f"{settings.url} ({layout.describe()}): applied {names}")
    return 0


def _migrate_dry_run(layout: Layout) -> int:
    from warehouse.connection import DATABASE, SettingsError, resolve
    from warehouse.migrate import dry_run, retention_days_from_env

    try:
        settings = resolve(start_embedded=False)
    except SettingsError:
        if os.environ.get("BATCHOBS_CLICKHOUSE_URL", "").strip():
            raise
        settings = None  # no embedded warehouse running: none is started, nothing is asked
    admin = settings.with_database("default").client() if settings else None
    plan = dry_run(admin, settings.database if settings else DATABASE, retention_days_from_env(), layout)
    where = settings.url if settings else "the embedded warehouse (not running: every migration is listed)"
    database = settings.database if settings else DATABASE
    print(f"-- batchobs warehouse migrate --dry-run: {where}; {layout.describe()}; database {database} (statements "
          f"naming none run in it); {len(plan.pending)} migration(s) pending; nothing below has been run\n")
    print(plan.render(), end="")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from ingest.connect import connect_when_ready
    from ingest.errors import IngestError
    from ingest.retry import Target
    from ingest.service import Ingester, stop_on_signals
    from warehouse.connection import home_dir, resolve
    from warehouse.migrate import migrations

    home = home_dir()
    config = IngestConfig(
        spool_dir=args.spool_dir or Path(os.environ.get("BATCHOBS_SPOOL_DIR") or home / "spool"),
        state_dir=args.state_dir or home / "ingest", max_rows=args.batch_rows, max_bytes=args.batch_bytes,
        max_latency_s=args.max_latency, max_line_bytes=args.max_line_bytes, retention=args.retention,
        inserts_in_flight=args.inserts_in_flight, backlog_batch_bytes=args.backlog_batch_bytes,
    )
    settings = resolve()
    ingester = Ingester(config, client=None)
    port = args.metrics_port if args.metrics_port is not None else (None if args.once else 9465)
    if port:  # before connecting: the metrics show a warehouse that is away, too
        try:
            ingester.metrics.serve(port, args.metrics_host)
        except OSError as exc:
            raise IngestError(f"cannot serve /metrics on {args.metrics_host}:{port} ({exc.strerror}); "
                              "choose another --metrics-port, or 0 for none") from exc
    with stop_on_signals(ingester) as received:
        try:
            client = connect_when_ready(settings, ingester.stop, ingester.log, once=args.once,
                                        schema_version=migrations()[-1].version, metrics=ingester.metrics,
                                        rejected_every_s=config.rejected_retry_s)
        except InterruptedError:
            pass
        else:
            ingester.attach(client, Target.of(settings))
            ingester.log.info("ingesting", spool=str(config.spool_dir), warehouse=settings.url, once=args.once)
            with _progress(args.once, ingester) as advance:
                ingester.run(once=args.once, progress=advance)
    if not received or (received[0] == signal.SIGTERM and not args.once):
        return 0  # drained, or a service stopped by its supervisor
    print(f"batchobs: stopped by {signal.Signals(received[0]).name}"
          + ("; the spool is not drained yet, run again to go on" if args.once else ""), file=sys.stderr)
    return 128 + received[0]


def _progress(enabled: bool, ingester: Ingester) -> AbstractContextManager[Callable[[int], None] | None]:
    """A progress bar over the backlog when draining interactively; else a no-op."""
    if not (enabled and sys.stderr.isatty()):
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    backlog = ingester.metrics.refresh_lag(ingester.config.spool_dir, ingester.checkpoint.offsets)

    @contextlib.contextmanager
    def bar() -> Iterator[Callable[[int], None] | None]:
        with Progress("ingesting", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as prog:
            task = prog.add_task("spool", total=backlog)
            yield lambda n: prog.advance(task, n)

    return bar()
