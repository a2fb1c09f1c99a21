"""`batchobs gateway prune` and the maintenance DAG against a real Pushgateway."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import pushadd_to_gateway

from batchobs.cli import main
from batchobs.gateway import GatewayError, known_from_dags_folder, prune
from listener.gauges import GroupKey, dag_run_gauges, task_gauges

from . import servers

KNOWN = {"etl": frozenset({"extract", "load"})}
# (job, dag_id, task_id or "" for the DAG's group, instance)
PUSHED = [
    ("airflow", "etl", "extract", "prod"), ("airflow", "etl", "load", "prod"),
    ("airflow", "etl", "gone_task", "prod"), ("airflow", "etl", "", "prod"),
    ("airflow", "removed/dag", "x", "prod"), ("airflow", "removed/dag", "", "prod"),
    ("airflow", "removed/dag", "x", "staging"), ("other_job", "removed/dag", "x", "prod"),
]
GONE = {("airflow", "etl", "gone_task", "prod"), ("airflow", "removed/dag", "x", "prod"),
        ("airflow", "removed/dag", "", "prod")}


@pytest.fixture(scope="module")
def gateway_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Process]:
    gateway = servers.start_pushgateway(tmp_path_factory.mktemp("pushgateway"))
    yield gateway
    gateway.stop()


def groups(url: str) -> set[tuple[str, str, str, str]]:
    return {(g["job"], g.get("dag_id", ""), g.get("task_id", ""), g.get("instance", ""))
            for g in servers.gateway_groups(url)}


@pytest.fixture
def gateway(gateway_process: servers.Process) -> str:
    """The Pushgateway holding exactly the groups of PUSHED (a slash in an id included)."""
    for group in servers.gateway_groups(gateway_process.url):
        from prometheus_client import delete_from_gateway

        delete_from_gateway(gateway_process.url, job=group["job"],
                            grouping_key={k: v for k, v in group.items() if k != "job"})
    for job, dag_id, task_id, instance in PUSHED:
        if task_id:
            key, registry = GroupKey.task(job, dag_id, task_id, instance), task_gauges("failed", 1, -1, 1.0, 0.0)
        else:
            key, registry = GroupKey.dag(job, dag_id, instance), dag_run_gauges("failed", 1.0, 0.0)
        pushadd_to_gateway(gateway_process.url, job=job, registry=registry, grouping_key=dict(key.labels))
    assert set(PUSHED) == groups(gateway_process.url)
    return gateway_process.url


class TestPrune:
    def test_dry_run_lists_and_keeps(self, gateway: str) -> None:
        """By default the groups of vanished DAGs and tasks are listed, and nothing is deleted."""
        pruned = prune(gateway, job="airflow", instance="prod", known=KNOWN)
        assert GONE == {(p.group.label("job"), p.group.label("dag_id"), p.group.label("task_id"),
                         p.group.label("instance")) for p in pruned}
        assert not any(p.deleted for p in pruned)
        assert set(PUSHED) == groups(gateway)

    def test_apply_deletes_only_this_instance_and_job(self, gateway: str) -> None:
        """--apply deletes them; other instances and jobs keep theirs."""
        prune(gateway, job="airflow", instance="prod", known=KNOWN, apply=True)
        assert set(PUSHED) - GONE == groups(gateway)

    def test_reasons_name_what_is_gone(self, gateway: str) -> None:
        """Each group says why it goes."""
        reasons = {p.group.label("task_id"): p.reason for p in prune(gateway, job="airflow", instance="prod",
                                                                     known=KNOWN)}
        assert "task etl.gone_task no longer exists" == reasons["gone_task"]
        assert "DAG removed/dag no longer exists" == reasons["x"]

    def test_age_limit(self, gateway: str) -> None:
        """Groups not pushed for more than max_age_days go, whatever exists."""
        later = time.time() + 3 * 86400
        assert 6 == len(prune(gateway, job="airflow", instance="prod", max_age_days=2, now=later))
        assert [] == prune(gateway, job="airflow", instance="prod", max_age_days=4, now=later)

    def test_refuses_an_empty_list_of_dags(self, gateway: str) -> None:
        """No known DAG at all is a mistake, not a reason to delete everything."""
        with pytest.raises(GatewayError, match="no DAGs are known"):
            prune(gateway, job="airflow", instance="prod", known={}, apply=True)
        assert set(PUSHED) == groups(gateway)

    def test_needs_a_criterion(self, gateway: str) -> None:
        """Neither known ids nor an age limit: nothing to decide on."""
        with pytest.raises(GatewayError, match="nothing to decide on"):
            prune(gateway, job="airflow", instance="prod")

    def test_unreachable_gateway_is_an_error(self) -> None:
        """A gateway that does not answer gives a GatewayError naming it."""
        url = servers.refusing_url()
        with pytest.raises(GatewayError, match=url):
            prune(url, job="airflow", instance="prod", known=KNOWN)


class TestKnownIds:
    def test_dags_folder_is_parsed_by_airflow(self) -> None:
        """The examples folder defines the example DAG and the maintenance DAG, with their tasks."""
        known = known_from_dags_folder(servers.EXAMPLES)
        assert {"succeed", "flaky", "broken", "shard", "skipped", "measured"} == known["batchobs_example"]
        assert {"prune"} == known["batchobs_gateway_prune"]

    def test_import_errors_stop_the_prune(self, tmp_path: Path) -> None:
        """A DAG file that fails to import must not make its DAG look deleted."""
        (tmp_path / "broken_dag.py").write_text("from airflow.sdk import dag\nraise RuntimeError('boom')\n")
        with pytest.raises(GatewayError, match=r"broken_dag\.py"):
            known_from_dags_folder(tmp_path)


class TestCommand:
    def test_dry_run_then_apply(self, gateway: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
        """`batchobs gateway prune` lists, then --apply deletes; the listener's settings are the defaults."""
        monkeypatch.setenv("BATCHOBS_INSTANCE", "prod")
        known = tmp_path / "known.json"
        known.write_text(json.dumps({dag: sorted(tasks) for dag, tasks in KNOWN.items()}))
        assert 0 == main(["gateway", "prune", "--gateway", gateway, "--known-tasks", str(known)])
        out = capsys.readouterr().out
        assert "would delete: dag_id=etl instance=prod job=airflow task_id=gone_task" in out
        assert "3 group(s) to prune; dry run" in out
        assert set(PUSHED) == groups(gateway)
        assert 0 == main(["gateway", "prune", "--gateway", gateway, "--known-tasks", str(known), "--apply"])
        assert 3 == capsys.readouterr().out.count("deleted: ")
        assert set(PUSHED) - GONE == groups(gateway)

    def test_error_is_one_line_and_exit_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad known-tasks file: one line naming it, exit 2."""
        bad = tmp_path / "known.json"
        bad.write_text('{"etl": "extract"}')
        assert 2 == main(["gateway", "prune", "--gateway", "http://127.0.0.1:1", "--known-tasks", str(bad)])
        err = capsys.readouterr().err.strip()
        assert 1 == len(err.splitlines()) and str(bad) in err


RUN_MAINTENANCE = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("m", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
run = module.maintenance_dag.test(run_conf={"apply": True})
print("RESULT " + json.dumps(str(getattr(run.state, "value", run.state))), flush=True)
"""


@pytest.mark.slow
def test_maintenance_dag_prunes_in_airflow(gateway: str, tmp_path: Path) -> None:
    """The example maintenance DAG, run in Airflow with apply, deletes the groups of DAGs its
    DAGs folder (examples/) does not define, and keeps those it does."""
    home = tmp_path / "airflow"
    servers.migrate_airflow(home)
    pushadd_to_gateway(gateway, job="airflow", registry=task_gauges("success", 1, -1, 1.0, 0.0),
                       grouping_key=dict(GroupKey.task("airflow", "batchobs_example", "succeed", "prod").labels))
    env = servers.airflow_env(home, tmp_path / "spool", BATCHOBS_PUSHGATEWAY_URL=gateway, BATCHOBS_INSTANCE="prod")
    done = subprocess.run([sys.executable, "-c", RUN_MAINTENANCE, str(servers.EXAMPLES / "batchobs_maintenance.py")],
                          env=env, cwd=home, capture_output=True, text=True, timeout=600)
    assert 'RESULT "success"' in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    left = {(job, dag, task) for job, dag, task, instance in groups(gateway) if instance == "prod"}
    assert ("airflow", "batchobs_example", "succeed") in left
    assert not any(dag in ("etl", "removed/dag") for job, dag, _ in left if job == "airflow")
    assert ("other_job", "removed/dag", "x") in left
