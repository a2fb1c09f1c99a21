"""The compose stack run for real: ``docker compose up --wait``, one DAG run, rows in ClickHouse,
and a ClickHouse panel query through Grafana's HTTP API.

Needs a Docker daemon with the compose plugin (and network access to pull the pinned images);
skipped with that reason elsewhere. It builds the images, so expect minutes on a first run.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from . import servers
from .compose import ROOT
from .grafana_expand import Scope, TimeRange, Variable, clickhouse_format, interpolate

pytestmark = pytest.mark.slow
DAG_ID = "batchobs_example"


def _docker_compose_answers() -> str | None:
    """None when `docker compose` and a daemon answer, else why not."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=20)
        plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker did not answer: {exc}"
    if info.returncode != 0:
        return "no Docker daemon answers (`docker info` failed)"
    if plugin.returncode != 0:
        return "the docker compose plugin is not installed"
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    why_not = _docker_compose_answers()
    if why_not:
        pytest.skip(f"{why_not}: only Docker can run the compose stack")
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    values = {
        "POSTGRES_PASSWORD": secrets.token_hex(16), "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": secrets.token_hex(16),
        "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIRFLOW_JWT_SECRET": secrets.token_hex(32), "AIRFLOW_API_SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW_UID": str(os.getuid()), "AIRFLOW_PORT": str(servers.free_port()),
        "CLICKHOUSE_USER": "batchobs", "CLICKHOUSE_PASSWORD": secrets.token_hex(16),
        "BATCHOBS_GRAFANA_CLICKHOUSE_PASSWORD": secrets.token_hex(16), "GRAFANA_ADMIN_USER": "admin",
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16), "GRAFANA_PORT": str(servers.free_port()),
    }
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    base = ["docker", "compose", "--project-directory", str(ROOT), "--env-file", str(env_file),
            "--project-name", f"batchobs-test-{secrets.token_hex(4)}"]
    try:
        up = subprocess.run([*base, "up", "--build", "--wait", "--wait-timeout", "900"],
                            capture_output=True, text=True, timeout=3600)
        assert 0 == up.returncode, up.stdout[-4000:] + up.stderr[-4000:]
        yield {"compose": base, "env": values}
    finally:
        subprocess.run([*base, "down", "--volumes", "--remove-orphans"], capture_output=True, timeout=600)


def _request(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.load(resp)


def _clickhouse(stack: dict[str, Any], sql: str, run_id: str) -> str:
    env = stack["env"]
    # the password travels in the container's environment (CLICKHOUSE_PASSWORD), not on a command line
    done = subprocess.run([*stack["compose"], "exec", "-T", "clickhouse", "clickhouse-client",
                           "--user", env["CLICKHOUSE_USER"], f"--param_run={run_id}", "--query", sql],
                          capture_output=True, text=True, timeout=120)
    assert 0 == done.returncode, done.stderr[-2000:]
    return done.stdout.strip()


def _trigger_and_wait(airflow: str, auth: dict[str, str], dag_id: str) -> tuple[str, str]:
    """Trigger a run of ``dag_id`` and wait for it to end: (run_id, state)."""
    run_id = _request(f"{airflow}/api/v2/dags/{dag_id}/dagRuns", "POST", {"logical_date": None}, auth)["dag_run_id"]
    run_url = f"{airflow}/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    state = servers.wait_for(lambda: (s := _request(run_url, headers=auth)["state"]) in ("success", "failed") and s,
                             900, f"the run of {dag_id} to finish", every_s=3)
    return run_id, str(state)


def test_a_dag_run_lands_in_clickhouse_and_grafana_reads_it(stack: dict[str, Any]) -> None:
    """The example DAG's events reach ClickHouse through the ingester, the dbt DAG builds the marts,
    and Run detail's tries panel, sent through Grafana's ClickHouse data source, lists the run's tries."""
    env = stack["env"]
    airflow = f"http://127.0.0.1:{env['AIRFLOW_PORT']}"
    token = _request(airflow + "/auth/token", "POST",
                     {"username": env["AIRFLOW_ADMIN_USER"], "password": env["AIRFLOW_ADMIN_PASSWORD"]})["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    servers.wait_for(lambda: _request(f"{airflow}/api/v2/dags/{DAG_ID}", headers=auth), 300,
                     "the example DAG to be parsed", every_s=3)
    run_id, _ = _trigger_and_wait(airflow, auth, DAG_ID)
    # the run's end arrives last; once it is in ClickHouse the ingester has caught up with the run
    servers.wait_for(lambda: _clickhouse(stack, "SELECT count() FROM batchobs.events FINAL WHERE kind = 'dag_run' "
                                     "AND run_id = {run:String} AND state IN ('success', 'failed')", run_id) == "1",
          300, "the run's events in ClickHouse")
    tasks = int(_clickhouse(stack, "SELECT uniqExact(task_id) FROM batchobs.events WHERE run_id = {run:String} "
                                   "AND kind = 'task_instance'", run_id))
    assert 6 == tasks
    assert "success" == _trigger_and_wait(airflow, auth, "batchobs_dbt_build")[1]
    grafana = f"http://127.0.0.1:{env['GRAFANA_PORT']}"
    basic = base64.b64encode(f"{env['GRAFANA_ADMIN_USER']}:{env['GRAFANA_ADMIN_PASSWORD']}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}"}
    target = _tries_target()
    # dashboard variables are filled in by Grafana's frontend (here: tests/grafana_expand.py); macros by the plugin
    variables = {"dag_id": Variable("dag_id", DAG_ID), "run_id": Variable("run_id", run_id)}
    sql = interpolate(target["rawSql"], Scope(variables, TimeRange(0, 0)), clickhouse_format)
    answer = _request(grafana + "/api/ds/query", "POST", {"from": "now-1h", "to": "now", "queries": [
        {"refId": "A", "editorType": "sql", "format": target["format"], "rawSql": sql,
         "datasource": target["datasource"]}]}, headers)
    result = answer["results"]["A"]
    assert "error" not in result, result
    assert result["frames"] and len(result["frames"][0]["data"]["values"][0]) >= tasks, "fewer rows than tasks"


def _tries_target() -> dict[str, Any]:
    """Run detail's query of every try of every task (data source uid as provisioned)."""
    board = json.loads((ROOT / "grafana" / "dashboards" / "run-detail.json").read_text())
    panel = next(p for p in board["panels"] if p["title"] == "Every try of every task")
    return dict(panel["targets"][0])
