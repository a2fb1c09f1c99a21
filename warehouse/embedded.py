"""Start, find and stop the embedded warehouse server as a separate process.

chDB allows one process per data directory, so every other component talks to
that one process over HTTP.  The server writes ``server.json`` (url, pid, a
token made at each start) into the data directory once it listens; this module
reads it to find a running server, checks that the server answering at that URL
is the one owning this directory (it proves it knows the token), or starts one.
The password lives in the data directory too (see ``server.identity``).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from .errors import WarehouseError
from .server.identity import IDENTITY_PATH, READY_FILE, proof, read_password, read_ready

if TYPE_CHECKING:
    from .connection import ClickHouseSettings

__all__ = ["PASSWORD_ENV", "READY_FILE", "EmbeddedServer", "ServerStartError", "find_running", "password_for",
           "start", "stop"]

READY_PREFIX = "batchobs warehouse serving "
PASSWORD_ENV = "BATCHOBS_SERVE_PASSWORD"  # noqa: S105 - the name of the override variable, not a password


class ServerStartError(WarehouseError, RuntimeError):
    """The embedded server did not come up; carries the tail of its log."""


@dataclass
class EmbeddedServer:
    url: str
    pid: int
    data_dir: Path
    password: str = field(default="", repr=False)
    process: subprocess.Popen[bytes] | None = None

    def settings(self, database: str = "batchobs") -> ClickHouseSettings:
        """Connection settings for this server, password included."""
        from .connection import ClickHouseSettings

        settings = ClickHouseSettings.from_url(self.url + "/" + database)
        return ClickHouseSettings(settings.host, settings.port, database, "default", self.password)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then wait; returns the exit code when it was our child."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    return self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    return self.process.wait(5)
            return self.process.returncode
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ping(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=timeout_s) as resp:  # noqa: S310 - our own loopback URL
            return bool(resp.read() == b"Ok.\n")
    except OSError:
        return False


def is_owner(url: str, token: str, timeout_s: float = 2.0) -> bool:
    """Whether the server at ``url`` knows ``token``: it answers HMAC(token, nonce) for a fresh nonce."""
    nonce = secrets.token_hex(16)
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own loopback URL
            url.rstrip("/") + IDENTITY_PATH + "?" + urlencode({"nonce": nonce}), timeout=timeout_s
        ) as resp:
            answer = resp.read(256).decode("ascii", "replace").strip()
    except OSError:
        return False
    return hmac.compare_digest(answer, proof(token, nonce))


def password_for(data_dir: Path, env: dict[str, str] | None = None) -> str:
    """The password of the server owning ``data_dir``: the operator's override, else its password file."""
    env = dict(os.environ) if env is None else env
    if PASSWORD_ENV in env:
        return env[PASSWORD_ENV]
    try:
        return read_password(data_dir)
    except FileNotFoundError:
        return ""


def find_running(data_dir: Path, env: dict[str, str] | None = None) -> EmbeddedServer | None:
    """The server that currently owns ``data_dir``, if one answers and proves it."""
    ready = read_ready(data_dir)
    if ready is None or not is_owner(ready.url, ready.token):
        return None
    return EmbeddedServer(url=ready.url, pid=ready.pid, data_dir=data_dir, password=password_for(data_dir, env))


def stop(data_dir: Path, timeout_s: float = 20.0) -> EmbeddedServer | None:
    """Stop the server owning ``data_dir`` (SIGTERM to the pid it proved); None if none runs."""
    server = find_running(data_dir)
    if server is not None:
        server.stop(timeout_s)
    return server


def start(
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    detach: bool = False,
    timeout_s: float = 60.0,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> EmbeddedServer:
    """Start ``batchobs warehouse serve`` and wait until it answers and proves it owns ``data_dir``.

    ``detach=True`` starts it in its own session so it outlives this process
    (the "embedded default" for CLI commands); otherwise it is our child, in a
    process group of its own so nothing it does reaches ours.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data_dir / READY_FILE).unlink(missing_ok=True)
    log_path = data_dir / "server.log"
    cmd = [sys.executable, "-m", "warehouse", "serve", "--data-dir", str(data_dir),
           "--host", host, "--port", str(port), *extra_args]
    child_env = dict(os.environ if env is None else env)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=detach, process_group=None if detach else 0, env=child_env,
        )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"embedded warehouse exited with {proc.returncode}: {_tail(log_path)}"
                )
            running = find_running(data_dir, child_env)
            if running is not None and running.pid == proc.pid:
                running.process = proc
                return running
            time.sleep(0.05)
    except BaseException:  # interrupted while waiting: a server nobody holds must not stay behind
        proc.kill()
        proc.wait()
        raise
    proc.kill()
    raise ServerStartError(f"embedded warehouse did not answer within {timeout_s:g}s: {_tail(log_path)}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"



