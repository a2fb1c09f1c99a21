"""The listener in a real Airflow 3.3 (dag.test()), a real Pushgateway and a real Prometheus."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import servers
from .servers import EXAMPLES, airflow_env, run_dag_test, spool_events

DAGS = Path(__file__).parent / "dags"
# (task_id, map_index) -> [(try_number, state), ...] of examples/batchobs_example.py
EXAMPLE_TRIES = {
    ("succeed", -1): [(1, "running"), (1, "success")],
    ("flaky", -1): [(1, "running"), (1, "up_for_retry"), (2, "running"), (2, "success")],
    ("broken", -1): [(1, "running"), (1, "up_for_retry"), (2, "running"), (2, "failed")],
    ("shard", 0): [(1, "running"), (1, "success")],
    ("shard", 1): [(1, "running"), (1, "success")],
    ("shard", 2): [(1, "running"), (1, "success")],
    ("skipped", -1): [(1, "running"), (1, "skipped")],
    ("measured", -1): [(1, "running"), (1, "success")],
}


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("airflow")
    servers.migrate_airflow(home)
    return home


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Process]:
    gateway = servers.start_pushgateway(tmp_path_factory.mktemp("pushgateway"))
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory, pushgateway: servers.Process) -> Iterator[servers.Process]:
    prom = servers.start_prometheus(tmp_path_factory.mktemp("prometheus"), pushgateway.url)
    yield prom
    prom.stop()


@pytest.fixture(scope="module")
def example_run(airflow_home: Path, pushgateway: servers.Process,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of examples/batchobs_example.py with the listener on, gauges pushed."""
    spool = tmp_path_factory.mktemp("spool")
    env = airflow_env(airflow_home, spool, BATCHOBS_PUSHGATEWAY_URL=pushgateway.url,
                      BATCHOBS_INSTANCE="example")
    result = run_dag_test(EXAMPLES / "batchobs_example.py", env)
    result["events"] = spool_events(spool)
    return result


def by_task(events: list[dict[str, Any]], kind: str = "task_instance") -> dict[tuple[str, int], list[tuple[int, str]]]:
    out: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
    for e in events:
        if e["kind"] == kind:
            out[(e["task_id"], e["map_index"])].append((e["try_number"], e["state"]))
    return dict(out)


LISTENERS = """
import json
from airflow.listeners.listener import get_listener_manager
print(json.dumps(sorted(type(p).__name__ for p in get_listener_manager().pm.get_plugins())))
"""


class TestOnlyOurListener:
    def test_openlineage_is_installed_but_off(self, tmp_path: Path) -> None:
        """The OpenLineage provider (the bench extra) is installed, yet the tests' Airflow registers
        batchobs' listener alone, even with a caller's OpenLineage transport in the environment."""
        env = airflow_env(tmp_path / "airflow", tmp_path / "spool", OPENLINEAGE_URL="http://127.0.0.1:9/")
        done = subprocess.run([sys.executable, "-c", LISTENERS], env=env, capture_output=True, text=True,
                              timeout=120, check=True, cwd=tmp_path)
        assert ["BatchobsListener"] == json.loads(done.stdout.strip().splitlines()[-1])
        plugins = subprocess.run([sys.executable, "-c", "import airflow.providers.openlineage"], env=env,
                                 capture_output=True, check=False)
        assert 0 == plugins.returncode  # installed: the check above means something


class TestEvents:
    def test_run_fails_because_one_task_fails_all_tries(self, example_run: dict[str, Any]) -> None:
        """The sample DAG run ends failed (the `broken` task)."""
        assert ["failed"] == example_run["states"]

    def test_every_state_change_is_in_the_spool(self, example_run: dict[str, Any]) -> None:
        """Each task's tries and states, per map index, are exactly what happened."""
        assert EXAMPLE_TRIES == by_task(example_run["events"])  # spool order is chronological

    def test_one_run_id_and_durations(self, example_run: dict[str, Any]) -> None:
        """All events carry the run's id; every terminal task event has a duration."""
        events = example_run["events"]
        assert 1 == len({e["run_id"] for e in events})
        terminal = [e for e in events if e["kind"] == "task_instance" and e["state"] != "running"]
        assert terminal and all(e["duration_s"] is not None and e["duration_s"] >= 0 for e in terminal)
        assert all(e["duration_s"] is None for e in events if e["state"] == "running")
        assert {"failed"} == {e["state"] for e in events if e["kind"] == "dag_run"}

    def test_custom_metrics_carry_run_context(self, example_run: dict[str, Any]) -> None:
        """record_metric lands as task_metric events of the measuring task's try."""
        metrics = {e["metric_name"]: e for e in example_run["events"] if e["kind"] == "task_metric"}
        assert {"rows_processed", "null_ratio"} == set(metrics)
        rows = metrics["rows_processed"]
        assert ("measured", 1, 1234.0, "rows", {"table": "orders"}) == (
            rows["task_id"], rows["try_number"], rows["metric_value"], rows["metric_unit"], rows["attrs"])

    def test_errors_are_recorded_and_scrubbed(self, example_run: dict[str, Any]) -> None:
        """A failed try records the error type and a message with secrets masked."""
        flaky = next(e for e in example_run["events"] if e["task_id"] == "flaky" and e["state"] == "up_for_retry")
        assert "RuntimeError" == flaky["error_type"]
        assert "hunter2" not in flaky["error_message"]
        assert "password=***" in flaky["error_message"]

    def test_reconciled_final_states(self, example_run: dict[str, Any]) -> None:
        """When the run ends, each task instance's final state is recorded from the metadata DB."""
        reconciled = {k: v for k, v in by_task(example_run["events"], "task_reconciled").items()}
        assert [(2, "failed")] == reconciled[("broken", -1)]
        assert [(2, "success")] == reconciled[("flaky", -1)]
        assert 8 == len(reconciled)


class TestGauges:
    def test_prometheus_shows_final_task_states(self, example_run: dict[str, Any],
                                                prometheus: servers.Process) -> None:
        """Scraped from the gateway, task_status matches each task's final state."""
        expected = {"succeed": 1.0, "flaky": 1.0, "broken": -1.0, "shard": 1.0, "skipped": 2.0, "measured": 1.0}
        deadline = time.monotonic() + 30
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            result = servers.prom_query(prometheus.url, 'task_status{instance="example"}')
            seen = {r["metric"]["task_id"]: float(r["value"][1]) for r in result}
            if seen == expected:
                break
            time.sleep(0.5)
        assert expected == seen
        dag = servers.prom_query(prometheus.url, 'dag_run_status{instance="example"}')
        assert [-1.0] == [float(r["value"][1]) for r in dag]

    def test_no_run_labels_in_groups(self, example_run: dict[str, Any], pushgateway: servers.Process) -> None:
        """Grouping keys are {job, dag_id, task_id, instance} or {job, dag_id, instance} only."""
        groups = [g for g in servers.gateway_groups(pushgateway.url) if g.get("instance") == "example"]
        assert 7 == len(groups)  # six tasks and the DAG
        assert all(set(g) in ({"job", "dag_id", "task_id", "instance"}, {"job", "dag_id", "instance"})
                   for g in groups)

    def test_200_runs_leave_as_many_groups_as_one(self, airflow_home: Path, pushgateway: servers.Process,
                                                 tmp_path: Path) -> None:
        """Series are bounded by tasks: 200 runs of a 5-task DAG add no group over 1 run."""
        env = airflow_env(airflow_home, tmp_path / "spool", BATCHOBS_PUSHGATEWAY_URL=pushgateway.url,
                          BATCHOBS_INSTANCE="cardinality")

        def groups() -> list[dict[str, str]]:
            return [g for g in servers.gateway_groups(pushgateway.url) if g.get("instance") == "cardinality"]

        run_dag_test(DAGS / "five_tasks.py", env, runs=1)
        after_one = groups()
        result = run_dag_test(DAGS / "five_tasks.py", env, runs=199)
        assert ["success"] * 199 == result["states"]
        assert 6 == len(after_one)
        assert sorted(map(str, after_one)) == sorted(map(str, groups()))
        runs = {e["run_id"] for e in spool_events(tmp_path / "spool")}
        assert 200 == len(runs)


class TestGatewayOutages:
    @pytest.mark.parametrize("outage", ["refusing", "not answering"])
    def test_tasks_complete_and_events_are_kept(self, outage: str, airflow_home: Path, tmp_path: Path) -> None:
        """With the gateway down, tasks finish, no hook raises and every event is in the spool."""
        with servers.black_hole() as hole:
            url = servers.refusing_url() if outage == "refusing" else hole
            env = airflow_env(airflow_home, tmp_path / "spool", BATCHOBS_PUSHGATEWAY_URL=url,
                              BATCHOBS_PUSH_TIMEOUT_S="5", BATCHOBS_EXIT_WAIT_S="1")
            result = run_dag_test(EXAMPLES / "batchobs_example.py", env)
        assert ["failed"] == result["states"]  # the sample's `broken` task, as with a healthy gateway
        assert "batchobs: _task failed" not in result["stdout"] + result["stderr"]
        events = spool_events(tmp_path / "spool")
        assert EXAMPLE_TRIES == by_task(events)
        assert 2 == len([e for e in events if e["kind"] == "task_metric"])
