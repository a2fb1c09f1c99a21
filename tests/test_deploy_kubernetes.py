"""The Kubernetes deployment (deploy/helm): Helm values for the official Airflow chart and the
ingester DaemonSet, parsed and cross-checked: one spool directory per node, shared by every
Airflow pod and that node's ingester, with the listener's environment set.

No cluster runs here; what only a cluster can check (the chart renders these values into every
pod, the DaemonSet schedules on each node) is left to `helm template` / a real deployment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "deploy" / "helm" / "values.yaml"
DAEMONSET = ROOT / "deploy" / "helm" / "ingester-daemonset.yaml"


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return dict(yaml.safe_load(VALUES.read_text()))


@pytest.fixture(scope="module")
def daemonset() -> dict[str, Any]:
    return dict(yaml.safe_load(DAEMONSET.read_text()))


def _env(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in entries}


def _host_path(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], mount_path: str) -> str:
    """The node directory behind ``mount_path``."""
    name = next(m["name"] for m in mounts if m["mountPath"] == mount_path)
    return str(next(v for v in volumes if v["name"] == name)["hostPath"]["path"])


def _ingester(daemonset: dict[str, Any]) -> dict[str, Any]:
    return dict(next(c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "ingester"))


class TestSpool:
    def test_airflow_pods_and_the_ingester_share_the_node_directory(self, values: dict[str, Any],
                                                                     daemonset: dict[str, Any]) -> None:
        """Airflow pods write, and the node's ingester reads, the same hostPath directory."""
        airflow_dir = _env(values["env"])["BATCHOBS_SPOOL_DIR"]
        ingester = _ingester(daemonset)
        ingester_dir = _env(ingester["env"])["BATCHOBS_SPOOL_DIR"]
        pod = daemonset["spec"]["template"]["spec"]
        assert _host_path(values["volumes"], values["volumeMounts"], airflow_dir) == _host_path(
            pod["volumes"], ingester["volumeMounts"], ingester_dir)

    def test_the_spool_is_per_node(self, values: dict[str, Any]) -> None:
        """The spool is a hostPath volume (task pods are ephemeral), mounted in every Airflow pod."""
        spool = next(v for v in values["volumes"] if v["name"] == values["volumeMounts"][0]["name"])
        assert "hostPath" in spool
        # the chart puts top-level volumes/volumeMounts/env into every component and the pod template
        assert "KubernetesExecutor" == values["executor"]

    def test_airflow_pods_wait_for_the_ingester_directory(self, values: dict[str, Any]) -> None:
        """Airflow pods require the directory the DaemonSet creates, rather than creating a root-owned one."""
        assert {"Directory"} == {v["hostPath"]["type"] for v in values["volumes"] if "hostPath" in v}

    def test_the_checkpoint_lives_on_the_node_with_its_spool(self, daemonset: dict[str, Any]) -> None:
        """The ingester's state directory ($BATCHOBS_HOME/ingest) is a hostPath too: it belongs to the node's spool."""
        ingester = _ingester(daemonset)
        home = _env(ingester["env"])["BATCHOBS_HOME"]
        state = _host_path(daemonset["spec"]["template"]["spec"]["volumes"], ingester["volumeMounts"], f"{home}/ingest")
        assert state.startswith("/var/lib/batchobs/")

    def test_the_ingester_runs_as_airflows_user(self, values: dict[str, Any], daemonset: dict[str, Any]) -> None:
        """Same uid and gid as Airflow, so files written by tasks can be read and retired."""
        pod = daemonset["spec"]["template"]["spec"]["securityContext"]
        assert (values["uid"], values["gid"]) == (pod["runAsUser"], pod["runAsGroup"])
        init = daemonset["spec"]["template"]["spec"]["initContainers"][0]
        assert f"chown {values['uid']}:{values['gid']}" in " ".join(init["command"])


class TestEnvironment:
    def test_listener_variables_are_ones_the_listener_reads(self, values: dict[str, Any]) -> None:
        """Each BATCHOBS_* variable given to Airflow pods is read by listener/config.py."""
        read = set(re.findall(r'"(BATCHOBS_[A-Z0-9_]+)"', (ROOT / "listener" / "config.py").read_text()))
        given = {name for name in _env(values["env"]) if name.startswith("BATCHOBS_")}
        assert {"BATCHOBS_SPOOL_DIR", "BATCHOBS_INSTANCE", "BATCHOBS_PUSHGATEWAY_URL"} <= given
        assert set() == given - read

    def test_warehouse_password_comes_from_a_secret(self, daemonset: dict[str, Any]) -> None:
        """The ClickHouse URL (with its password) comes from a Secret, never a literal in the manifest."""
        url = _env(_ingester(daemonset)["env"])["BATCHOBS_CLICKHOUSE_URL"]
        assert isinstance(url, dict) and "secretKeyRef" in url

    def test_probes_use_the_metrics_port(self, daemonset: dict[str, Any]) -> None:
        """Readiness and liveness probe the port the ingester serves /metrics on."""
        ingester = _ingester(daemonset)
        args = ingester["args"]
        port = int(args[args.index("--metrics-port") + 1])
        named = {p["name"]: p["containerPort"] for p in ingester["ports"]}
        probed = {named[ingester[probe]["httpGet"]["port"]] for probe in ("readinessProbe", "livenessProbe")}
        assert {port} == probed

    def test_images_are_pinned_and_by_role(self, values: dict[str, Any], daemonset: dict[str, Any]) -> None:
        """Airflow pods run the image with the listener, the ingester the ingest-only image; both pinned."""
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(values["images"]["airflow"]["tag"]))
        assert values["images"]["airflow"]["repository"].endswith("batchobs-airflow")
        image = _ingester(daemonset)["image"]
        assert re.fullmatch(r".*/batchobs-ingest:\d+\.\d+\.\d+", image)

    def test_airflow_metrics_carry_tags(self, values: dict[str, Any]) -> None:
        """StatsD tags are on, as the statsd-exporter mapping needs."""
        assert "True" == values["config"]["metrics"]["statsd_influxdb_enabled"]
