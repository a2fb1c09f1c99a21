"""The wheel and sdist built from the checkout carry what the commands read, and work.

Builds both with uv, then installs the wheel (not editable) into a fresh venv in
two steps: first ``[ingest,embedded]`` (no Airflow, no dbt) for ``migrate`` and
``ingest --once`` of a sample spool; then ``[all]`` for ``dbt build`` and an
``audit`` question, all against the embedded server.  The lock file is the
constraint set, so uv installs from its cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
import tomllib

from batchobs.cli import EXTRA_MODULES
from listener.contract import encode
from listener.spool import Spool
from listener.testing import history
from warehouse import embedded

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("listener", "ingest", "warehouse", "batchobs")
# Top-level directories shipped as package data, and where the wheel puts them (pyproject.toml).
BUNDLED = {"dbt": "batchobs/dbt", "examples": "batchobs/examples", "prometheus": "batchobs/prometheus"}
DAG_ID = "etl_orders"


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is not installed: run `make setup`")
    return found


def checkout_files() -> set[str]:
    """The files of the checkout's packages and bundled directories, as the wheel names them."""
    names = set()
    for top in (*PACKAGES, *BUNDLED):
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
                rel = path.relative_to(ROOT).as_posix()
                names.add(BUNDLED[top] + rel[len(top):] if top in BUNDLED else rel)
    return names


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel (uv builds the wheel from the sdist, as a user's build would)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([_uv(), "build", "-q", "--out-dir", str(out), str(ROOT)], check=True, capture_output=True,
                   timeout=600)
    return {"wheel": next(out.glob("batchobs-*.whl")), "sdist": next(out.glob("batchobs-*.tar.gz"))}


class TestContents:
    def test_wheel_holds_every_module_and_data_file(self, built: dict[str, Path]) -> None:
        """Every module, migration, dbt file and the sample DAG of the checkout is in the wheel."""
        names = set(zipfile.ZipFile(built["wheel"]).namelist())
        assert set() == checkout_files() - names

    def test_sdist_holds_every_module_and_data_file(self, built: dict[str, Path]) -> None:
        """The sdist has the same files at their checkout paths, so a wheel built from it is whole."""
        with tarfile.open(built["sdist"]) as sdist:
            names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        expected = {n for n in checkout_files() if not n.startswith(tuple(BUNDLED.values()))}
        expected |= {top + n[len(BUNDLED[top]):] for n in checkout_files() for top in BUNDLED
                     if n.startswith(BUNDLED[top] + "/")}
        assert set() == expected - names

    def test_core_requires_only_structlog_and_prometheus_client(self) -> None:
        """The core distribution (what runs inside Airflow) pins no Airflow, chDB or dbt."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        assert ["prometheus-client", "structlog"] == sorted(_name(r) for r in project["dependencies"])

    def test_the_cli_names_the_extra_that_brings_each_module(self) -> None:
        """Each module the CLI checks for comes from a distribution its extra declares."""
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        provided_by = packages_distributions()
        for extra, modules in EXTRA_MODULES.items():
            declared = _expand(extras, extra)
            for module in modules:
                dists = {_name(d) for d in provided_by.get(module.split(".")[0], [])}
                assert any(d == r or d.startswith(r + "-") for d in dists for r in declared), (extra, module)


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _expand(extras: dict[str, list[str]], extra: str) -> set[str]:
    names = set()
    for requirement in extras[extra]:
        if requirement.startswith("batchobs["):
            for inner in requirement[len("batchobs["):-1].split(","):
                names |= _expand(extras, inner)
        else:
            names.add(_name(requirement))
    return names


@pytest.fixture(scope="module")
def installed(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A fresh venv with the wheel, its home, and the environment its commands run in."""
    work = tmp_path_factory.mktemp("installed")
    venv = work / "venv"
    subprocess.run([_uv(), "venv", "-q", "--python", sys.executable, str(venv)], check=True, capture_output=True,
                   timeout=120)
    home = work / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHOBS_", "AIRFLOW", "VIRTUAL_ENV"))}
    env.update(BATCHOBS_HOME=str(home), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    state = {"venv": venv, "home": home, "env": env, "wheel": built["wheel"]}
    try:
        yield state
    finally:
        server = embedded.find_running(home / "warehouse")  # started by our `migrate`
        if server is not None:
            server.stop()


def install(state: dict[str, Any], extras: str) -> None:
    """The wheel with ``extras`` ("" for the core alone), versions from the lock file."""
    spec = f"batchobs{f'[{extras}]' if extras else ''} @ {state['wheel'].as_uri()}"
    done = subprocess.run([_uv(), "pip", "install", "-q", "--python", str(state["venv"] / "bin" / "python"),
                           "-c", str(ROOT / "requirements.lock"), spec],
                          capture_output=True, text=True, timeout=900, check=False)
    assert 0 == done.returncode, done.stderr[-3000:]


def batchobs(state: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """A command of the installed wheel, run outside the checkout."""
    return subprocess.run([str(state["venv"] / "bin" / "batchobs"), *args], env=state["env"], cwd=state["home"].parent,
                          capture_output=True, text=True, timeout=900, check=False)


class TestInstalledWheel:
    def test_core_alone_names_the_extra_each_command_needs(self, installed: dict[str, Any]) -> None:
        """With the core only, each command says in one line which extra to install and exits 2."""
        install(installed, "")
        for command, extra in ((("ingest", "--once"), "ingest"), (("warehouse", "migrate"), "ingest"),
                               (("dbt", "build"), "dbt"), (("warehouse", "serve", "--data-dir", "x"), "embedded")):
            refused = batchobs(installed, *command)
            assert (2, [f"pip install 'batchobs[{extra}]'"]) == (
                refused.returncode, [line.rsplit(": ", 1)[-1] for line in refused.stderr.strip().splitlines()])

    def test_migrate_and_ingest_without_airflow_or_dbt(self, installed: dict[str, Any]) -> None:
        """With [ingest,embedded] only, migrate applies every migration and ingest --once loads a spool."""
        install(installed, "ingest,embedded")
        python = str(installed["venv"] / "bin" / "python")
        absent = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('airflow'), "
                                 "u.find_spec('dbt'))"], capture_output=True, text=True, check=True, cwd="/")
        assert "None None" == absent.stdout.strip()

        migrated = batchobs(installed, "warehouse", "migrate")
        assert 0 == migrated.returncode, migrated.stderr
        assert "0001_events" in migrated.stdout

        spool = Spool(installed["home"] / "spool", "wheel-test")
        events = list(history(3, dag_id=DAG_ID))
        for event in events:
            spool.append(encode(event))
        spool.close()
        ingested = batchobs(installed, "ingest", "--once")
        assert 0 == ingested.returncode, ingested.stderr
        installed["events"] = len(events)

    def test_dbt_build_and_audit_with_all(self, installed: dict[str, Any]) -> None:
        """With [all], dbt builds the shipped project and audit answers from the marts."""
        if "events" not in installed:
            pytest.skip("needs the ingest step")
        install(installed, "all")
        built = batchobs(installed, "dbt", "build", "--quiet")
        assert 0 == built.returncode, (built.stdout + built.stderr)[-3000:]
        answer = batchobs(installed, "audit", "runs", "--dag-id", DAG_ID, "--since", "2026-10-01",
                          "--until", "2026-12-01", "--format", "json", "--source", "marts")
        assert 0 == answer.returncode, answer.stderr
        assert 3 == len(json.loads(answer.stdout))  # one row per run


class TestRefusals:
    def test_migrate_refuses_with_no_migrations(self, installed: dict[str, Any]) -> None:
        """An install without the .sql files refuses to migrate in one line, exit 2, before any warehouse."""
        if "events" not in installed:
            pytest.skip("needs the installed wheel")
        site = next((installed["venv"] / "lib").glob("python*/site-packages"))
        aside = installed["home"].parent / "migrations-aside"
        aside.mkdir()
        sql = list((site / "warehouse" / "migrations").glob("*.sql"))
        for path in sql:
            path.rename(aside / path.name)
        try:
            refused = batchobs(installed, "warehouse", "migrate")
        finally:
            for path in sql:
                (aside / path.name).rename(path)
        assert 2 == refused.returncode
        assert 1 == len(refused.stderr.strip().splitlines()), refused.stderr
        assert "no migrations found" in refused.stderr
