"""The embedded warehouse server: chDB behind ClickHouse's HTTP interface."""

from __future__ import annotations

from .engine import Engine, EngineError
from .http import ClickHouseHTTPServer, Limits
from .run import DataDirInUse, InsecureBind, serve

__all__ = ["ClickHouseHTTPServer", "DataDirInUse", "Engine", "EngineError", "InsecureBind", "Limits", "serve"]
