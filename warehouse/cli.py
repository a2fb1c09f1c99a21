"""The ``batchobs`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.config import RETENTIONS, IngestConfig

if TYPE_CHECKING:
    from ingest.service import Ingester

    from .audit import Question

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    wh = sub.add_parser("warehouse", help="the ClickHouse warehouse").add_subparsers(
        dest="action", required=True
    )
    serve = wh.add_parser("serve", help="serve a chDB data directory over ClickHouse's HTTP interface")
    serve.add_argument("--data-dir", required=True, type=Path)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", default=8123, type=int, help="0 picks a free port (default 8123)")
    serve.add_argument("--user", default="default")
    serve.add_argument(
        "--password-env", default="BATCHOBS_SERVE_PASSWORD", metavar="VAR",
        help="environment variable holding the password (default BATCHOBS_SERVE_PASSWORD; "
        "unset or empty means no password)",
    )
    serve.add_argument("--max-concurrent-queries", default=16, type=int)
    wh.add_parser("migrate", help="create the database and apply pending migrations (idempotent)")

    ingest = sub.add_parser("ingest", help="tail the spool into ClickHouse (exactly-once effect)")
    ingest.add_argument("--once", action="store_true", help="drain what is there, then exit")
    ingest.add_argument("--spool-dir", type=Path, help="default $BATCHOBS_SPOOL_DIR or $BATCHOBS_HOME/spool")
    ingest.add_argument("--state-dir", type=Path, help="checkpoint and archive (default $BATCHOBS_HOME/ingest)")
    ingest.add_argument("--batch-rows", type=int, default=IngestConfig.max_rows)
    ingest.add_argument("--batch-bytes", type=int, default=IngestConfig.max_bytes)
    ingest.add_argument("--max-latency", type=float, default=IngestConfig.max_latency_s,
                        help="seconds a line may wait for its batch")
    ingest.add_argument("--max-line-bytes", type=int, default=IngestConfig.max_line_bytes)
    ingest.add_argument("--inserts-in-flight", type=int, default=IngestConfig.inserts_in_flight,
                        help="batches being inserted at once (committed in order)")
    ingest.add_argument("--retention", choices=RETENTIONS, default=IngestConfig.retention,
                        help="what to do with fully ingested spool files")
    ingest.add_argument("--metrics-port", type=int, default=None,
                        help="serve /metrics on 127.0.0.1:PORT (default 9465; none with --once)")
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
    demo.add_argument("--runs", default=3, type=int, help="runs of the sample DAG in Airflow")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("BATCHOBS_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "warehouse" and args.action == "serve":
        return _serve(args)
    if args.command == "warehouse" and args.action == "migrate":
        return _migrate()
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
    from .connection import resolve
    from .transform import run_dbt

    return run_dbt(dbt_args, resolve()).returncode


def _audit(args: argparse.Namespace) -> int:
    from .audit import AuditError, ask, render
    from .connection import resolve
    from .transform import marts_database

    settings = resolve()
    question = _audit_questions()[args.question]
    params = {p.name: getattr(args, p.name) for p in question.params}
    try:
        answer = ask(settings.client(), args.question, params, marts_database(settings), args.source)
    except AuditError as exc:
        print(f"batchobs audit: {exc}", file=sys.stderr)
        return 2
    render(answer, args.format, sys.stdout)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from . import embedded
    from .server import DataDirInUse, serve

    ready_file = args.data_dir / embedded.READY_FILE
    wrote: list[Path] = []

    def ready(url: str) -> None:
        ready_file.write_text(json.dumps({"url": url, "pid": os.getpid()}))
        wrote.append(ready_file)
        print(embedded.READY_PREFIX + url, flush=True)

    try:
        serve(
            args.data_dir, args.host, args.port, user=args.user,
            password=os.environ.get(args.password_env, ""),
            max_concurrent_queries=args.max_concurrent_queries, on_ready=ready,
        )
    except DataDirInUse as exc:
        print(f"batchobs: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"batchobs: cannot serve on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 3
    finally:
        for path in wrote:  # only our own: a refused second server leaves the owner's alone
            path.unlink(missing_ok=True)
    return 0


def _migrate() -> int:
    from .connection import resolve
    from .migrate import apply, retention_days_from_env

    settings = resolve()
    admin = settings.with_database("default").client()
    done = apply(admin, settings.database, retention_days_from_env())
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in done) or "none (up to date)"
    print(f"{settings.url}: applied {names}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from ingest.service import Ingester, connect_when_ready, stop_on_signals

    from .connection import home_dir, resolve

    home = home_dir()
    config = IngestConfig(
        spool_dir=args.spool_dir or Path(os.environ.get("BATCHOBS_SPOOL_DIR") or home / "spool"),
        state_dir=args.state_dir or home / "ingest", max_rows=args.batch_rows, max_bytes=args.batch_bytes,
        max_latency_s=args.max_latency, max_line_bytes=args.max_line_bytes, retention=args.retention,
        inserts_in_flight=args.inserts_in_flight,
    )
    settings = resolve()
    ingester = Ingester(config, client=None)
    with stop_on_signals(ingester):
        try:
            ingester.attach(connect_when_ready(settings, ingester.stop, ingester.log))
        except InterruptedError:
            return 0
        port = args.metrics_port if args.metrics_port is not None else (None if args.once else 9465)
        if port:
            ingester.metrics.serve(port, args.metrics_host)
        ingester.log.info("ingesting", spool=str(config.spool_dir), warehouse=settings.url, once=args.once)
        with _progress(args.once, ingester) as advance:
            ingester.run(once=args.once, progress=advance)
    return 0


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
