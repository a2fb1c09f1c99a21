"""The warehouse's own commands, ``serve`` and ``stop``: ``batchobs warehouse serve|stop``,
and ``python -m warehouse serve|stop``, which the embedded server is started with (so the
server process imports the warehouse package only, never the rest of the product)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .options import PORT, seconds, whole

__all__ = ["EXIT_SERVER", "SERVE_HELP", "STOP_HELP", "add_serve_arguments", "add_stop_arguments", "serve", "stop"]

EXIT_SERVER = 3  # the server could not start
SERVE_HELP = "serve a chDB data directory over ClickHouse's HTTP interface"
STOP_HELP = "stop the embedded server owning a data directory"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", default=8123, type=PORT, help="0 picks a free port (default 8123)")
    parser.add_argument("--user", default="default")
    parser.add_argument(
        "--password-env", default="BATCHOBS_SERVE_PASSWORD", metavar="VAR",
        help="environment variable overriding the password (default BATCHOBS_SERVE_PASSWORD); unset: the "
        "password generated in DATA_DIR/password; empty: no password, allowed on loopback only",
    )
    parser.add_argument("--max-concurrent-queries", default=16, type=whole(1))
    parser.add_argument("--max-connections", default=256, type=whole(1),
                        help="open connections; at the limit the longest-waiting one without a query is closed")
    parser.add_argument("--max-sessions", default=64, type=whole(1))
    parser.add_argument("--read-timeout", default=30.0, type=seconds, help="seconds one read of a request may wait")
    parser.add_argument("--queue-timeout", default=10.0, type=seconds,
                        help="seconds a query waits for a free slot before failing")


def add_stop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="default $BATCHOBS_HOME/warehouse")


def serve(args: argparse.Namespace) -> int:
    from . import embedded
    from .server import DataDirInUse, InsecureBind, Limits
    from .server import serve as run_server

    # The override is read once and not passed on: nothing this process starts needs it.
    password = os.environ.pop(args.password_env, None)
    try:
        run_server(
            args.data_dir, args.host, args.port, user=args.user, password=password,
            max_concurrent_queries=args.max_concurrent_queries,
            limits=Limits(max_connections=args.max_connections, max_sessions=args.max_sessions,
                          read_timeout_s=args.read_timeout, queue_timeout_s=args.queue_timeout),
            on_ready=lambda url: print(embedded.READY_PREFIX + url, flush=True),
        )
    except (DataDirInUse, InsecureBind) as exc:
        print(f"batchobs: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except OSError as exc:
        print(f"batchobs: cannot serve on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return EXIT_SERVER
    return 0


def stop(args: argparse.Namespace) -> int:
    from . import embedded
    from .connection import home_dir

    data_dir = args.data_dir or home_dir() / "warehouse"
    server = embedded.stop(data_dir)
    if server is None:
        print(f"batchobs: no embedded server owns {data_dir}", file=sys.stderr)
        return 1
    print(f"stopped the embedded warehouse on {data_dir} (pid {server.pid})")
    return 0
