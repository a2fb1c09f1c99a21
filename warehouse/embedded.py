"""Start, find and stop the embedded warehouse server as a separate process.

chDB allows one process per data directory, so every other component talks to
that one process over HTTP.  ``serve`` writes ``server.json`` (url, pid) into
the data directory once it listens; this module reads it to find a running
server, or starts one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import WarehouseError

__all__ = ["EmbeddedServer", "ServerStartError", "find_running", "start"]

READY_FILE = "server.json"
READY_PREFIX = "batchobs warehouse serving "


class ServerStartError(WarehouseError, RuntimeError):
    """The embedded server did not come up; carries the tail of its log."""


@dataclass
class EmbeddedServer:
    url: str
    pid: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

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
        return None


def ping(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=timeout_s) as resp:  # noqa: S310 - our own loopback URL
            return bool(resp.read() == b"Ok.\n")
    except OSError:
        return False


def find_running(data_dir: Path) -> EmbeddedServer | None:
    """The server that currently owns ``data_dir``, if one answers."""
    try:
        info = json.loads((data_dir / READY_FILE).read_text())
    except (OSError, ValueError):
        return None
    url, pid = info.get("url"), info.get("pid")
    if not isinstance(url, str) or not isinstance(pid, int) or not ping(url):
        return None
    return EmbeddedServer(url=url, pid=pid, data_dir=data_dir)


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
    """Start ``batchobs warehouse serve`` and wait until it answers /ping.

    ``detach=True`` starts it in its own session so it outlives this process
    (the "embedded default" for CLI commands); otherwise it is our child.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / READY_FILE).unlink(missing_ok=True)
    log_path = data_dir / "server.log"
    cmd = [sys.executable, "-m", "warehouse", "serve", "--data-dir", str(data_dir),
           "--host", host, "--port", str(port), *extra_args]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=detach, env=env,
        )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"embedded warehouse exited with {proc.returncode}: {_tail(log_path)}"
                )
            running = find_running(data_dir)
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
