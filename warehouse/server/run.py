"""Run the embedded server: own the data directory, serve, shut down gracefully."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ..errors import WarehouseError
from .engine import Engine
from .http import ClickHouseHTTPServer, Limits
from .identity import Ready, load_or_create_password, write_ready

__all__ = ["DataDirInUse", "InsecureBind", "serve"]

log = logging.getLogger("batchobs.warehouse.server")
LOCK_NAME = ".batchobs-server.lock"


class DataDirInUse(WarehouseError, RuntimeError):
    """Another process already serves this data directory."""


class InsecureBind(ValueError):
    """A non-loopback address without a password."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def clear_insert_spool(data_dir: Path) -> None:
    """Remove insert bodies a crashed server left behind (nothing else uses that directory)."""
    shutil.rmtree(data_dir / ClickHouseHTTPServer.INSERT_SPOOL, ignore_errors=True)


@contextlib.contextmanager
def owned(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data directory for the life of the server.

    chDB's own lock would also refuse a second process, but later and with a less
    helpful message; this names the directory and the owner's pid at once.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    handle: IO[str] = open(path, "a+")  # noqa: SIM115 - held open for the server's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise DataDirInUse(
                f"data directory {data_dir} is already served by another process (pid {owner}); "
                "stop it or choose another --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def serve(
    data_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8123,
    *,
    user: str = "default",
    password: str | None = None,
    max_concurrent_queries: int = 16,
    limits: Limits | None = None,
    shutdown_grace_s: float = 10.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; then finish in-flight queries (bounded) and exit.

    ``password=None`` uses the data directory's password file, generated on the
    first start; an empty password is allowed on loopback only.
    """
    data_dir = Path(data_dir).resolve()
    if password == "" and not is_loopback(host):
        raise InsecureBind(
            f"refusing to serve on {host} without a password: bind 127.0.0.1, or leave the password to be "
            "generated (unset the override)"
        )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.getpgrp() != os.getpid():
        # chDB's SYSTEM SHUTDOWN signals the whole process group (tried on 26.9: it killed the
        # starter too).  The policy refuses it; a group of our own keeps any such signal here.
        os.setpgid(0, 0)
    with owned(data_dir):
        if password is None:
            password = load_or_create_password(data_dir)
        clear_insert_spool(data_dir)
        limits = limits or Limits()
        engine = Engine(str(data_dir), max_concurrent_queries=max_concurrent_queries,
                        queue_timeout_s=limits.queue_timeout_s)
        token = secrets.token_hex(32)
        server = ClickHouseHTTPServer((host, port), engine, user=user, password=password, token=token,
                                      limits=limits)
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        worker = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="warehouse-http", daemon=True)
        worker.start()
        bound_host, bound_port = server.server_address[:2]
        url = f"http://{bound_host!s}:{bound_port}"
        ready_file = write_ready(data_dir, Ready(url, os.getpid(), token))
        if on_ready:
            on_ready(url)
        try:
            while not stop.wait(1.0):
                server.sessions.expire()
        finally:
            log.info("shutting down: no new connections, waiting for in-flight queries")
            ready_file.unlink(missing_ok=True)
            server.shutdown()
            deadline = time.monotonic() + shutdown_grace_s
            while server.active_requests and time.monotonic() < deadline:
                time.sleep(0.05)
            server.server_close()
            server.sessions.close()
            engine.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

