"""The embedded warehouse server: chDB behind ClickHouse's HTTP interface."""

from __future__ import annotations

from .engine import Engine, EngineError
from .http import ClickHouseHTTPServer
from .run import DataDirInUse, serve

__all__ = ["ClickHouseHTTPServer", "DataDirInUse", "Engine", "EngineError", "serve"]
