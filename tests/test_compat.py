"""The listener, unchanged, in the latest patch release of each supported Airflow.

One venv per Airflow version (uv, its cache, kept under ``$BATCHOBS_HOME/compat``
and reused across runs) with ``apache-airflow==X`` plus only the core batchobs
wheel built from this checkout.  A DAG with every outcome runs there with
``dag.test()``; the spool is checked against that Airflow's metadata DB and the
contract, and the gauges against a real Pushgateway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from listener.contract import DAG_RUN, TASK_INSTANCE, TASK_RECONCILED, decode
from listener.gauges import DAG_RUN_STATUS, TASK_STATUS

from . import servers

pytestmark = pytest.mark.compat

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = Path(__file__).parent / "dags" / "compat_outcomes.py"
RUNNER = Path(__file__).parent / "compat_runner.py"

# The latest patch release of each supported minor version (`pip index versions
# apache-airflow`), with the pins each needs.  Airflow's constraint files are not
# on PyPI (unreachable here), so what they would hold back is pinned by hand:
# later FastAPI (and cadwyn 7, which needs it) break the in-process execution API
# of 3.0 and 3.2 (request bodies refused; routes that no longer build).  3.2 also
# needs a start-up fix in compat_runner.py (dag.test() only, not the listener).
# Measured on the project machine: 2.11.2 fine as resolved; 3.0.6 works with
# fastapi 0.117; 3.2.2 with fastapi 0.134, cadwyn 6.2, starlette 1.10.
AIRFLOW = {
    "2.11.2": (),
    "3.0.6": ("fastapi<0.118",),
    "3.1.8": (),
    "3.2.2": ("fastapi<0.135", "cadwyn<7"),
    "3.3.2": (),
}
# Airflow 2.11 and 3.0 have no skip hook: a skipped task reaches the spool only
# reconciled, and its gauges are set when the run ends.
WITHOUT_SKIP_HOOK = {"2.11.2", "3.0.6"}


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is not installed: run `make setup`")
    return found


def _compat_home() -> Path:
    home = Path(os.environ.get("BATCHOBS_HOME") or ROOT / ".batchobs")
    return home / "compat"


@pytest.fixture(scope="session")
def core_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The core batchobs wheel, built from this checkout's sdist (no stale build/ tree in it)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([_uv(), "build", "-q", "--out-dir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    return next(out.glob("batchobs-*.whl"))


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Process]:
    gateway = servers.start_pushgateway(tmp_path_factory.mktemp("pushgateway"))
    yield gateway
    gateway.stop()


def airflow_venv(version: str, wheel: Path) -> Path:
    """A venv with Airflow ``version`` and the core wheel (the venv is kept; the wheel reinstalled)."""
    venv = _compat_home() / f"airflow-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([_uv(), "venv", "-q", "--python", sys.executable, str(venv)],
                       check=True, capture_output=True, timeout=120)
    install = [_uv(), "pip", "install", "-q", "--python", str(python), "--reinstall-package", "batchobs",
               f"apache-airflow=={version}", *AIRFLOW[version], str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=900, check=False)
    assert 0 == done.returncode, done.stderr[-3000:]
    return venv


def run_outcomes(version: str, wheel: Path, gateway_url: str, work: Path) -> dict[str, Any]:
    """Migrate a fresh metadata DB, run the DAG once; the runner's report plus the spool's events."""
    venv = airflow_venv(version, wheel)
    spool = work / "spool"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHOBS_", "AIRFLOW"))}
    env.update(AIRFLOW_HOME=str(work / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(DAG_FILE.parent), BATCHOBS_SPOOL_DIR=str(spool),
               BATCHOBS_INSTANCE=f"compat-{version}", BATCHOBS_PUSHGATEWAY_URL=gateway_url,
               BATCHOBS_EXIT_WAIT_S="15")
    (work / "airflow").mkdir(parents=True)
    migrated = subprocess.run([str(venv / "bin" / "airflow"), "db", "migrate"], env=env, cwd=work,
                              capture_output=True, text=True, timeout=600, check=False)
    assert 0 == migrated.returncode, migrated.stderr[-3000:]
    ran = subprocess.run([str(venv / "bin" / "python"), str(RUNNER), str(DAG_FILE)], env=env, cwd=work,
                         capture_output=True, text=True, timeout=900, check=False)
    result = [line for line in ran.stdout.splitlines() if line.startswith("RESULT ")]
    assert 0 == ran.returncode and result, (ran.stdout + ran.stderr)[-4000:]
    report: dict[str, Any] = json.loads(result[-1][len("RESULT "):])
    report["lines"] = [line for path in sorted(spool.glob("*.jsonl")) for line in path.read_bytes().splitlines()]
    return report


@pytest.fixture(scope="module", params=list(AIRFLOW))
def outcomes(request: pytest.FixtureRequest, core_wheel: Path, pushgateway: servers.Process,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the outcomes DAG in one Airflow version, with gauges pushed."""
    version: str = request.param
    report = run_outcomes(version, core_wheel, pushgateway.url, tmp_path_factory.mktemp(f"airflow-{version}"))
    report["version"] = version
    report["events"] = [decode(line).to_dict() for line in report["lines"]]
    report["groups"] = servers.get_json(pushgateway.url + "/api/v1/metrics")["data"]
    return report


def in_db(report: dict[str, Any]) -> dict[tuple[str, int], tuple[str, int]]:
    return {(ti["task_id"], ti["map_index"]): (ti["state"], ti["try_number"]) for ti in report["instances"]}


def last_event(report: dict[str, Any], kind: str) -> dict[tuple[str, int], tuple[str, int]]:
    last: dict[tuple[str, int], tuple[str, int]] = {}
    for e in report["events"]:  # spool order is chronological
        if e["kind"] == kind:
            last[(e["task_id"], e["map_index"])] = (e["state"], e["try_number"])
    return last


def gauges(report: dict[str, Any], **labels: str) -> dict[str, float]:
    """The gauges of the Pushgateway group whose labels include ``labels``."""
    instance = f"compat-{report['version']}"
    for group in report["groups"]:
        if group["labels"].get("instance") == instance and all(group["labels"].get(k) == v
                                                                for k, v in labels.items()):
            return {name: float(family["metrics"][0]["value"]) for name, family in group.items()
                    if isinstance(family, dict) and "metrics" in family}
    raise AssertionError(f"no Pushgateway group {labels} for {instance}")


class TestOutcomes:
    def test_the_dag_ran_every_outcome(self, outcomes: dict[str, Any]) -> None:
        """The run failed (one task fails every try) after a retry-then-success, a mapped and a skipped task."""
        assert "failed" == outcomes["state"]
        assert {("succeed", -1): ("success", 1), ("flaky", -1): ("success", 2), ("broken", -1): ("failed", 2),
                ("shard", 0): ("success", 1), ("shard", 1): ("success", 1), ("shard", 2): ("success", 1),
                ("skipped", -1): ("skipped", 1)} == in_db(outcomes)

    def test_every_line_meets_the_contract(self, outcomes: dict[str, Any]) -> None:
        """Every spooled line decodes against the contract (decode raises otherwise), none lost."""
        assert len(outcomes["lines"]) == len(outcomes["events"]) > 0

    def test_task_hooks_end_in_the_metadata_db_state(self, outcomes: dict[str, Any]) -> None:
        """Each task instance's last hook event has the state and try number the metadata DB has."""
        expected = in_db(outcomes)
        if outcomes["version"] in WITHOUT_SKIP_HOOK:
            expected = {k: v for k, v in expected.items() if v[0] != "skipped"}
        seen = last_event(outcomes, TASK_INSTANCE)
        assert expected == {k: v for k, v in seen.items() if k in expected}

    def test_every_try_is_recorded(self, outcomes: dict[str, Any]) -> None:
        """Each try of the retried tasks has its own running and end event, with its try number."""
        tries = [(e["try_number"], e["state"]) for e in outcomes["events"]
                 if e["kind"] == TASK_INSTANCE and e["task_id"] == "flaky"]
        assert [(1, "running"), (1, "up_for_retry"), (2, "running"), (2, "success")] == tries

    def test_run_end_reconciles_every_task_instance(self, outcomes: dict[str, Any]) -> None:
        """The DAG run's end records every task instance as the metadata DB has it."""
        assert in_db(outcomes) == last_event(outcomes, TASK_RECONCILED)

    def test_dag_run_event(self, outcomes: dict[str, Any]) -> None:
        """The DAG run's end event has the run's id and final state."""
        runs = [(e["run_id"], e["state"]) for e in outcomes["events"] if e["kind"] == DAG_RUN]
        assert [(outcomes["run_id"], "failed")] == runs[-1:]

    def test_task_gauges_in_the_pushgateway(self, outcomes: dict[str, Any]) -> None:
        """Each task's status and last try number in the Pushgateway match its final state."""
        db = in_db(outcomes)
        for (task_id, _), (state, try_number) in db.items():
            pushed = gauges(outcomes, dag_id="compat_outcomes", task_id=task_id)
            assert (TASK_STATUS[state], try_number) == (pushed["task_status"], pushed["task_last_try_number"]), \
                task_id

    def test_dag_run_gauge_in_the_pushgateway(self, outcomes: dict[str, Any]) -> None:
        """The DAG's one Pushgateway group says the run failed."""
        instance = f"compat-{outcomes['version']}"
        dag_groups = [g for g in outcomes["groups"]
                      if "task_id" not in g["labels"] and g["labels"].get("instance") == instance]
        assert [DAG_RUN_STATUS["failed"]] == [float(g["dag_run_status"]["metrics"][0]["value"]) for g in dag_groups]
