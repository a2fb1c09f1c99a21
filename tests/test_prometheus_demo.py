"""The main job's Pushgateway and Prometheus: a state file of their own, the project's rules loaded."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from batchobs import demo

from .servers import get_json, wait_http


def test_demo_gateway_and_prometheus() -> None:
    """The Pushgateway persists to a file under the demo's own directory (not Debian's machine-wide
    default), and Prometheus loaded the batchobs rules."""
    with demo._prometheus(Console(file=io.StringIO())) as (gateway, prometheus):
        assert gateway and prometheus, "Debian's prometheus and prometheus-pushgateway are needed (make test)"
        wait_http(gateway + "/-/ready")
        flags = get_json(gateway + "/api/v1/status")["data"]["flags"]
        state = Path(flags["persistence.file"])
        assert state.name == "pushgateway.dat" and state.parent.parent.name.startswith("batchobs-demo-prom-")
        wait_http(prometheus + "/-/ready", timeout_s=30)
        groups = {g["name"] for g in get_json(prometheus + "/api/v1/rules")["data"]["groups"]}
        assert {"batchobs-thresholds", "batchobs-ingest", "batchobs-alerts"} == groups
