"""Run the dbt project (``dbt/``) against the configured warehouse.

dbt reads its connection from ``BATCHOBS_DBT_*`` environment variables
(``dbt/profiles.yml``); this module derives them from the warehouse settings, so
``batchobs dbt build`` works against the embedded server and a real ClickHouse
alike.  dbt runs as a child process: its logging setup stays out of ours, and the
password travels in the child's environment, never on a command line.  On a cluster
(``BATCHOBS_CLICKHOUSE_CLUSTER``) dbt-clickhouse gets its name as ``cluster`` and the models
build ON CLUSTER, replicated behind Distributed tables (``dbt/macros/cluster.sql``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from warehouse.connection import ClickHouseSettings, home_dir
from warehouse.layout import layout_from_env

from .bundled import bundled_dir

__all__ = ["PROJECT_DIR", "dbt_env", "marts_database", "run_dbt"]

PROJECT_DIR = bundled_dir("dbt")


def marts_database(settings: ClickHouseSettings, env: Mapping[str, str] = os.environ) -> str:
    """Where the models are built: ``$BATCHOBS_DBT_SCHEMA``, else beside the events."""
    return env.get("BATCHOBS_DBT_SCHEMA") or settings.database


def dbt_env(settings: ClickHouseSettings, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for a dbt process: connection, target database, local paths."""
    state = home_dir(env) / "dbt"
    # The embedded server's password override is for the server alone; dbt gets its password below.
    child = {k: v for k, v in env.items() if k != "BATCHOBS_SERVE_PASSWORD"}
    child.update(
        BATCHOBS_DBT_HOST=settings.host,
        BATCHOBS_DBT_PORT=str(settings.port),
        BATCHOBS_DBT_USER=settings.username,
        BATCHOBS_DBT_PASSWORD=settings.password,
        BATCHOBS_DBT_SECURE=str(settings.secure),
        BATCHOBS_DBT_SOURCE_SCHEMA=settings.database,
        BATCHOBS_DBT_SCHEMA=marts_database(settings, env),
        # the cluster the migrations made (dbt/macros/cluster.sql); empty on one server
        BATCHOBS_DBT_CLUSTER=layout_from_env(env).cluster or "",
    )
    # dbt writes its artifacts and logs under local state, not into the source tree
    child.setdefault("DBT_TARGET_PATH", str(state / "target"))
    child.setdefault("DBT_LOG_PATH", str(state / "logs"))
    child.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    return child


def run_dbt(args: Sequence[str], settings: ClickHouseSettings, env: Mapping[str, str] = os.environ,
            capture: bool = False, vars_yaml: str | None = None) -> subprocess.CompletedProcess[str]:
    """``dbt ARGS`` on the project, for the warehouse of ``settings``."""
    command = [str(Path(sys.executable).with_name("dbt")), *args,
               "--project-dir", str(PROJECT_DIR), "--profiles-dir", str(PROJECT_DIR)]
    if vars_yaml:
        command += ["--vars", vars_yaml]
    return subprocess.run(command, env=dbt_env(settings, env), cwd=PROJECT_DIR, text=True,  # noqa: S603
                          capture_output=capture, check=False)
