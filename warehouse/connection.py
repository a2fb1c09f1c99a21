"""One client factory: settings in, a clickhouse-connect client out.

``BATCHOBS_CLICKHOUSE_URL`` (``http[s]://user:pass@host:port/database``) points
at any ClickHouse server.  With nothing configured, the embedded server that
owns ``$BATCHOBS_HOME/warehouse`` is used, started in the background if it is
not running; only a server that proves it owns that directory is used, with
the password from that directory's 0600 password file.  Passwords are passed
to the driver separately and never appear in ``repr``, logs or error text.  Every request is bounded in time:
``BATCHOBS_CLICKHOUSE_CONNECT_TIMEOUT_S`` (default 10) to connect and
``BATCHOBS_CLICKHOUSE_QUERY_TIMEOUT_S`` (default 120) for an answer, so a server
that accepts but never answers is an error, not a hang.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import WarehouseError

__all__ = ["DATABASE", "ClickHouseSettings", "SettingsError", "connect", "home_dir"]

DATABASE = "batchobs"
CONNECT_TIMEOUT_S = 10.0
QUERY_TIMEOUT_S = 120.0


class SettingsError(WarehouseError, ValueError):
    """A bad setting; the message names it and never contains a password."""


def home_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where batchobs keeps its local state (warehouse data, spool)."""
    default = Path.home() / ".local" / "share" / "batchobs"
    return Path(env.get("BATCHOBS_HOME") or default).expanduser()


def _seconds(name: str, default: float, env: Mapping[str, str] = os.environ) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86400:  # also refuses nan and inf
        raise SettingsError(f"{name} must be a number of seconds above 0 and below 86400, got {raw!r}")
    return value


@dataclass(frozen=True)
class ClickHouseSettings:
    host: str
    port: int
    database: str = DATABASE
    username: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False
    connect_timeout_s: float = field(
        default_factory=lambda: _seconds("BATCHOBS_CLICKHOUSE_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
    query_timeout_s: float = field(
        default_factory=lambda: _seconds("BATCHOBS_CLICKHOUSE_QUERY_TIMEOUT_S", QUERY_TIMEOUT_S))

    @classmethod
    def from_url(cls, url: str) -> ClickHouseSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise SettingsError(
                f"BATCHOBS_CLICKHOUSE_URL: scheme must be http or https, got {parts.scheme!r}"
            )
        try:
            port = parts.port or (8443 if parts.scheme == "https" else 8123)
        except ValueError:
            raise SettingsError("BATCHOBS_CLICKHOUSE_URL: the port is not a number") from None
        if not parts.hostname:
            raise SettingsError("BATCHOBS_CLICKHOUSE_URL: no host given")
        return cls(
            host=parts.hostname,
            port=port,
            database=parts.path.strip("/") or DATABASE,
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            secure=parts.scheme == "https",
        )

    @property
    def url(self) -> str:
        """The URL with the password masked: safe to print."""
        auth = self.username + (":***" if self.password else "")
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{auth}@{self.host}:{self.port}/{self.database}"

    def with_database(self, database: str) -> ClickHouseSettings:
        return dataclasses.replace(self, database=database)

    def client(self, **kwargs: Any) -> Any:
        import clickhouse_connect

        options: dict[str, Any] = {"connect_timeout": self.connect_timeout_s,
                                   "send_receive_timeout": self.query_timeout_s, **kwargs}
        return clickhouse_connect.get_client(
            host=self.host, port=self.port, username=self.username, password=self.password,
            database=self.database, secure=self.secure, **options,
        )


def resolve(env: Mapping[str, str] = os.environ, start_embedded: bool = True) -> ClickHouseSettings:
    """The configured warehouse, or the embedded default."""
    url = env.get("BATCHOBS_CLICKHOUSE_URL", "").strip()
    if url:
        return ClickHouseSettings.from_url(url)
    from . import embedded

    data_dir = home_dir(env) / "warehouse"
    server = embedded.find_running(data_dir, dict(env))
    if server is None:
        if not start_embedded:
            raise SettingsError(
                f"no ClickHouse configured and no embedded server owns {data_dir}: set "
                "BATCHOBS_CLICKHOUSE_URL or run `batchobs warehouse serve`"
            )
        print(f"starting the embedded warehouse on {data_dir}", file=sys.stderr)
        server = embedded.start(data_dir, detach=True, env=_server_env(env))
    return server.settings(DATABASE)


def _server_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a detached server: ours, minus what only clients use."""
    return {k: v for k, v in env.items() if k != "BATCHOBS_CLICKHOUSE_URL" and not k.startswith("BATCHOBS_DBT_")}


def connect(database: str | None = None, env: Mapping[str, str] = os.environ, **kwargs: Any) -> Any:
    """A clickhouse-connect client for the configured (or embedded) warehouse.

    ``database="default"`` connects to the server's default database (to create ours).
    """
    settings = resolve(env)
    if database is not None:
        settings = settings.with_database(database)
    return settings.client(**kwargs)
