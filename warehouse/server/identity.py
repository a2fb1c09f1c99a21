"""The files an embedded server keeps in its data directory, and how a client recognises it.

* ``password`` (mode 0600): generated on the first start, read by every local
  client (the client factory, the dbt runner, the audit).  Never printed, never
  in ``server.json``, never on a command line.
* ``server.json`` (mode 0600): where the running server listens, its pid and a
  random token made at each start.  A client that finds it asks the server at
  that URL to prove it knows the token (an HMAC of a fresh nonce), so a stale
  file left by a killed server never leads to whichever server now answers on
  that port; the token itself never crosses the wire.

This module imports nothing heavy: clients use it without loading chDB.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IDENTITY_PATH", "PASSWORD_FILE", "READY_FILE", "Ready", "load_or_create_password", "proof",
           "read_password", "read_ready", "write_ready"]

PASSWORD_FILE = "password"  # noqa: S105 - a file name
READY_FILE = "server.json"
IDENTITY_PATH = "/batchobs/identity"  # answers HMAC(token, nonce) for ?nonce=...
_PRIVATE = 0o600


@dataclass(frozen=True)
class Ready:
    url: str
    pid: int
    token: str


def load_or_create_password(data_dir: Path) -> str:
    """The password in ``data_dir/password``, generated (0600) if there is none yet."""
    path = data_dir / PASSWORD_FILE
    with contextlib.suppress(FileNotFoundError):
        return read_password(data_dir)
    password = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE)
    except FileExistsError:  # another starter won the race: use theirs
        return read_password(data_dir)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def read_password(data_dir: Path) -> str:
    """The password of the server owning ``data_dir``; FileNotFoundError if none was made."""
    path = data_dir / PASSWORD_FILE
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        # A readable password file is a leaked password: tighten it rather than keep using it quietly.
        os.chmod(path, _PRIVATE)
    return path.read_text().strip()


def write_ready(data_dir: Path, ready: Ready) -> Path:
    """Write ``server.json`` atomically with mode 0600."""
    path = data_dir / READY_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": ready.url, "pid": ready.pid, "token": ready.token}, out)
    os.replace(tmp, path)
    return path


def read_ready(data_dir: Path) -> Ready | None:
    try:
        info = json.loads((data_dir / READY_FILE).read_text())
    except (OSError, ValueError):
        return None
    url, pid, token = info.get("url"), info.get("pid"), info.get("token")
    if not (isinstance(url, str) and isinstance(pid, int) and isinstance(token, str)):
        return None
    return Ready(url, pid, token)


def proof(token: str, nonce: str) -> str:
    return hmac.new(token.encode(), nonce.encode(), hashlib.sha256).hexdigest()
