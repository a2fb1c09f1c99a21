"""Events rendered by a private structlog pipeline into the spool.

Airflow 3 configures structlog for the whole process, so this never touches
structlog's global configuration: it wraps its own sink with its own processors,
and names every part of the configuration so none is taken from the global one.
The pipeline: stamp (time, instance, host) -> scrub the error -> the contract's
Event (validated) -> one JSON line -> the spool.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import datetime, timezone
from typing import Any

import structlog

from . import contract
from .scrub import scrub
from .spool import Spool

__all__ = ["EventWriter"]


class _SpoolSink:
    """The wrapped "logger": structlog hands it the rendered line."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def msg(self, line: bytes) -> None:
        self._spool.append(line)


class _Stamp:
    def __init__(self, instance: str, hostname: str) -> None:
        self._instance = instance
        self._hostname = hostname

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("emitted_at", datetime.now(timezone.utc))
        event_dict.setdefault("instance", self._instance)
        event_dict.setdefault("hostname", self._hostname)
        return event_dict


def _scrub_error(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    message = event_dict.get("error_message")
    if message:
        event_dict["error_message"] = scrub(message)
    return event_dict


def _to_line(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> bytes:
    kind = event_dict.pop("event")
    return contract.encode(contract.Event(kind=kind, **event_dict))


class EventWriter:
    def __init__(self, spool: Spool, instance: str, hostname: str) -> None:
        self.spool = spool
        self._log = structlog.wrap_logger(
            _SpoolSink(spool),
            processors=[_Stamp(instance, hostname), _scrub_error, _to_line],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=False,
        )

    def write(self, kind: str, **fields: Any) -> None:
        """Validate and append one event; raises ContractError or OSError."""
        self._log.msg(kind, **fields)
