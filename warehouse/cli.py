"""The ``batchobs`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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

    demo = sub.add_parser("demo", help="the main job on the embedded default: warehouse, events, audit")
    demo.add_argument("--runs", default=5, type=int, help="DAG runs of sample history to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("BATCHOBS_LOG_LEVEL", "WARNING").upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "warehouse" and args.action == "serve":
        return _serve(args)
    if args.command == "warehouse" and args.action == "migrate":
        return _migrate()
    if args.command == "demo":
        from .demo import run

        return run(runs=args.runs)
    return 2


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
