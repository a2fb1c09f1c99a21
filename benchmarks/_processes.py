"""The processes a benchmark starts: their environment, and their CPU and memory from /proc."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from warehouse.connection import ClickHouseSettings


def ingester_env(settings: ClickHouseSettings, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``batchobs ingest`` process for ``settings`` (the URL carries the password)."""
    url = (f"http://{quote(settings.username)}:{quote(settings.password)}@{settings.host}:{settings.port}"
           f"/{settings.database}")
    return dict(os.environ, BATCHOBS_HOME=str(home), BATCHOBS_CLICKHOUSE_URL=url, **extra)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; OSError once it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM) in MB; 0 once it is gone."""
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
