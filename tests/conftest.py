"""Shared fixtures: a clean environment, and which ClickHouse the warehouse tests run against.

Tests start from an environment without the caller's ``BATCHOBS_*`` settings (an
operator's ``BATCHOBS_SERVE_PASSWORD`` or ``BATCHOBS_CLICKHOUSE_URL`` must not change
what a test sees); only the suite's own ``BATCHOBS_TEST_*`` knobs pass through, and
``BATCHOBS_HOME`` points into the session's temporary directory.

ClickHouse, in this order: ``BATCHOBS_TEST_CLICKHOUSE_URL`` if set; else a
testcontainers ClickHouse if a Docker daemon answers; else the embedded server
(chDB behind ClickHouse's HTTP interface), started once per session on loopback.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from warehouse import embedded
from warehouse.connection import ClickHouseSettings
from warehouse.migrate import apply

# The OpenLineage provider (the `bench` extra, for benchmarks/hook_latency.py) registers a listener
# in every Airflow this venv runs; the suite tests batchobs' listener alone, whatever the caller's
# OpenLineage settings.  Set at import: test modules may load Airflow's plugins while collected.
os.environ["AIRFLOW__OPENLINEAGE__DISABLED"] = "true"

# CI replays the same examples every run (a red CI names a reproducible input);
# locally hypothesis explores new ones each time.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def product_settings(env: dict[str, str] | os._Environ[str]) -> list[str]:
    """The names of batchobs' own settings in ``env`` (not the test suite's ``BATCHOBS_TEST_*``)."""
    return [k for k in env if k.startswith("BATCHOBS_") and not k.startswith("BATCHOBS_TEST_")]


@pytest.fixture(scope="session", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The caller's BATCHOBS_* settings removed for the session (and so for every child process)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in product_settings(os.environ):
            patch.delenv(name)
        patch.setenv("BATCHOBS_HOME", str(tmp_path_factory.mktemp("batchobs-home")))
        yield


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no daemon here"
        return False


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSettings]:
    """Connection settings of the ClickHouse chosen for this session (database ``default``)."""
    url = os.environ.get("BATCHOBS_TEST_CLICKHOUSE_URL")
    if url:
        yield ClickHouseSettings.from_url(url)
        return
    if _docker_answers():
        from testcontainers.clickhouse import ClickHouseContainer

        with ClickHouseContainer("clickhouse/clickhouse-server:25.8") as ch:
            yield ClickHouseSettings(ch.get_container_host_ip(), int(ch.get_exposed_port(8123)),
                                     "default", ch.username, ch.password)
        return
    server = embedded.start(tmp_path_factory.mktemp("warehouse"))
    try:
        yield server.settings("default")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def admin(clickhouse: ClickHouseSettings) -> Any:
    return clickhouse.client()


@pytest.fixture
def database(clickhouse: ClickHouseSettings, admin: Any) -> Iterator[ClickHouseSettings]:
    """A fresh, migrated database for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    apply(admin, name, retention_days=400)
    yield ClickHouseSettings(clickhouse.host, clickhouse.port, name, clickhouse.username,
                             clickhouse.password, clickhouse.secure)
    admin.command(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[embedded.EmbeddedServer]:
    """The embedded server itself (for tests of its HTTP behaviour), once per session."""
    server = embedded.start(tmp_path_factory.mktemp("embedded"))
    try:
        yield server
    finally:
        server.stop()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
