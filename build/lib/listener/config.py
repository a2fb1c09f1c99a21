"""Listener configuration: ``BATCHOBS_*`` environment variables, read once.

Never Airflow Variables or the metadata DB: hooks may run outside a DB session.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["ConfigError", "ListenerConfig"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
FSYNC_POLICIES = ("never", "always")
N = TypeVar("N", int, float)


class ConfigError(ValueError):
    """A BATCHOBS_* variable has a value we cannot use; names it and what is accepted."""


@dataclass(frozen=True)
class ListenerConfig:
    instance: str
    hostname: str
    spool_dir: Path
    pushgateway_url: str = ""
    job: str = "airflow"
    events_enabled: bool = True
    gauges_enabled: bool = True
    fsync: str = "never"
    spool_max_bytes: int = 64 << 20
    push_timeout_s: float = 2.0
    exit_wait_s: float = 1.0
    max_groups: int = 10_000

    @property
    def pushing(self) -> bool:
        return self.gauges_enabled and bool(self.pushgateway_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ListenerConfig:
        home = Path(env.get("BATCHOBS_HOME") or Path.home() / ".local" / "share" / "batchobs")
        fsync = env.get("BATCHOBS_SPOOL_FSYNC", "never").strip().lower()
        if fsync not in FSYNC_POLICIES:
            raise ConfigError(f"BATCHOBS_SPOOL_FSYNC={fsync!r}: expected one of {', '.join(FSYNC_POLICIES)}")
        return cls(
            instance=env.get("BATCHOBS_INSTANCE") or "airflow",
            hostname=socket.gethostname(),
            spool_dir=Path(env.get("BATCHOBS_SPOOL_DIR") or home / "spool").expanduser(),
            pushgateway_url=env.get("BATCHOBS_PUSHGATEWAY_URL", "").strip().rstrip("/"),
            job=env.get("BATCHOBS_JOB") or "airflow",
            events_enabled=_flag(env, "BATCHOBS_EVENTS", True),
            gauges_enabled=_flag(env, "BATCHOBS_GAUGES", True),
            fsync=fsync,
            spool_max_bytes=_number(env, "BATCHOBS_SPOOL_MAX_BYTES", 64 << 20, int, 4096),
            push_timeout_s=_number(env, "BATCHOBS_PUSH_TIMEOUT_S", 2.0, float, 0.01),
            exit_wait_s=_number(env, "BATCHOBS_EXIT_WAIT_S", 1.0, float, 0.0),
            max_groups=_number(env, "BATCHOBS_MAX_GROUPS", 10_000, int, 1),
        )


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: expected on/off (1/0, true/false, yes/no)")


def _number(env: Mapping[str, str], name: str, default: N, kind: Callable[[str], N], minimum: float) -> N:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a {getattr(kind, '__name__', 'number')}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return value
