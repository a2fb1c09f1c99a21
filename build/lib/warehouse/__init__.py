"""The warehouse: ClickHouse schema, migrations, the client factory and the embedded server."""

from __future__ import annotations

from .connection import DATABASE, ClickHouseSettings, SettingsError, connect

__all__ = ["DATABASE", "ClickHouseSettings", "SettingsError", "connect"]
