"""docker-compose.yml checked without Docker: the Compose schema and the stack's own invariants.

What only a Docker daemon can check (images build, containers become healthy, data flows
through) is ``tests/test_compose_docker.py``, skipped where no daemon answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import jsonschema
import pytest
import yaml

from . import compose
from .compose import ROOT, environment, interpolate, is_airflow, mounts, services

SCHEMA = ROOT / "tests" / "compose-spec" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"  # tests/compose-spec/SOURCE.md
ENV_EXAMPLE = ROOT / ".env.example"
SPOOL_VOLUME = "spool"
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"  # the one scrape config, compose's too
GRAFANA_PROVISIONING = ROOT / "grafana" / "provisioning"
CLICKHOUSE_USERS = ROOT / "deploy" / "compose" / "clickhouse-users.xml"
# Grafana's default paths.provisioning (the image's GF_PATHS_PROVISIONING)
GRAFANA_PROVISIONING_DIR = "/etc/grafana/provisioning"
# $VAR or ${VAR} in a provisioning value: Grafana expands them from its environment
PROVISIONING_ENV = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
# Ports the services listen on when their command does not say (each image's documented default).
IMAGE_PORTS = {"prom/pushgateway": 9091, "prom/prometheus": 9090, "clickhouse/clickhouse-server": 8123,
               "grafana/grafana": 3000}
PUBLISHED = {"airflow-apiserver", "grafana"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return compose.load()


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def _flag(service: dict[str, Any], name: str) -> str:
    """The value of ``--name=value`` in a service's command."""
    [value] = [str(w).split("=", 1)[1] for w in service.get("command") or [] if str(w).startswith(name + "=")]
    return value


def _grafana_datasources() -> list[dict[str, Any]]:
    files = sorted((GRAFANA_PROVISIONING / "datasources").glob("*.y*ml"))
    return [d for f in files for d in (yaml.safe_load(f.read_text()) or {}).get("datasources", [])]


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed YAML value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _listen_ports(service: dict[str, Any]) -> set[int]:
    """Ports a service listens on: from its command's flags, else its image's default."""
    command = service.get("command") or []
    words = command if isinstance(command, list) else str(command).split()
    ports = set()
    for i, word in enumerate(words):
        flag = re.fullmatch(r"--(?:web\.listen-address|statsd\.listen-udp)=.*:(\d+)", str(word))
        if flag:
            ports.add(int(flag.group(1)))
        if word == "--metrics-port":
            ports.add(int(words[i + 1]))
    image = str(service.get("image", "")).split(":")[0]
    if not ports and image in IMAGE_PORTS:
        ports.add(IMAGE_PORTS[image])
    if image == "clickhouse/clickhouse-server":
        ports.add(9000)  # native protocol, on by default
    return ports


class TestSchema:
    def test_vendored_schema_is_the_noted_copy(self) -> None:
        """The vendored Compose schema is byte-for-byte the copy SOURCE.md names."""
        assert SCHEMA_SHA256 == hashlib.sha256(SCHEMA.read_bytes()).hexdigest()

    def test_compose_file_is_valid(self, doc: dict[str, Any]) -> None:
        """docker-compose.yml validates against the Compose Specification's JSON schema."""
        schema = json.loads(SCHEMA.read_text())
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
        assert [] == errors

    def test_schema_rejects_a_broken_file(self, doc: dict[str, Any]) -> None:
        """The validation has teeth: a misspelt depends_on condition is refused."""
        broken = json.loads(json.dumps(doc))
        broken["services"]["ingester"]["depends_on"]["warehouse-migrate"]["condition"] = "service_done"
        schema = json.loads(SCHEMA.read_text())
        assert not jsonschema.Draft202012Validator(schema).is_valid(broken)


class TestImages:
    def test_every_image_is_pinned(self, doc: dict[str, Any]) -> None:
        """Every service image and Dockerfile base image names a version tag, never latest."""
        images = [str(s["image"]) for s in services(doc).values()] + compose.dockerfile_images()
        unpinned = [i for i in images if ":" not in i or i.endswith(":latest") or not re.search(r":v?\d", i)]
        assert [] == unpinned

    def test_airflow_is_3_3(self) -> None:
        """The Airflow image is a 3.3 release."""
        airflow = [i for i in compose.dockerfile_images() if i.startswith("apache/airflow:")]
        assert 1 == len(airflow) and re.fullmatch(r"apache/airflow:3\.3\.\d+-python3\.\d+", airflow[0])

    def test_grafana_and_its_clickhouse_plugin(self, doc: dict[str, Any]) -> None:
        """Grafana is at least 11.6 and installs the ClickHouse plugin at an exact 4.20 release before start."""
        grafana = services(doc)["grafana"]
        major, minor = map(int, str(grafana["image"]).split(":")[1].split(".")[:2])
        assert (major, minor) >= (11, 6)
        plugin = environment(grafana)["GF_PLUGINS_PREINSTALL_SYNC"]
        assert re.fullmatch(r"grafana-clickhouse-datasource@4\.20\.\d+", plugin)

    def test_clickhouse_is_25_or_26(self, doc: dict[str, Any]) -> None:
        """A real ClickHouse server of a 25.x or 26.x release."""
        image = str(services(doc)["clickhouse"]["image"])
        assert re.fullmatch(r"clickhouse/clickhouse-server:2[56]\.\d+(\.\d+)*", image)


class TestMounts:
    @pytest.mark.parametrize("source", sorted({src for s in services(compose.load()).values()
                                               for src, _ in mounts(s) if src.startswith(".")}))
    def test_mounted_path_exists(self, source: str) -> None:
        """Every path the stack bind-mounts exists in the repository."""
        assert (ROOT / source.removeprefix("./")).exists()

    def test_ingester_and_every_airflow_container_share_the_spool(self, doc: dict[str, Any]) -> None:
        """The ingester and every Airflow container mount one spool volume where BATCHOBS_SPOOL_DIR points."""
        users = {name: s for name, s in services(doc).items() if is_airflow(s) or name == "ingester"}
        assert {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                "airflow-init", "ingester"} <= users.keys()
        spool_dirs = {name: environment(s)["BATCHOBS_SPOOL_DIR"] for name, s in users.items()}
        assert 1 == len(set(spool_dirs.values())), spool_dirs
        missing = [name for name, s in users.items() if (SPOOL_VOLUME, spool_dirs[name]) not in mounts(s)]
        assert [] == missing
        assert SPOOL_VOLUME in doc["volumes"]  # a named volume, not a host path

    def test_the_ingester_runs_as_airflows_user(self, doc: dict[str, Any]) -> None:
        """The ingester has the uid and group of the Airflow processes, so it can retire the files they wrote."""
        by_name = services(doc)
        airflow_users = {s["user"] for n, s in by_name.items() if is_airflow(s) and n != "airflow-init"}
        assert {by_name["ingester"]["user"]} == airflow_users


class TestNetwork:
    def test_only_the_two_uis_are_published_on_loopback(self, doc: dict[str, Any]) -> None:
        """Only Airflow's and Grafana's UIs publish a port, and only on 127.0.0.1."""
        published = {name: s["ports"] for name, s in services(doc).items() if s.get("ports")}
        assert PUBLISHED == published.keys()
        assert all(str(p).startswith("127.0.0.1:") for ports in published.values() for p in ports)

    def test_prometheus_targets_are_services_and_their_ports(self, doc: dict[str, Any]) -> None:
        """Each target of prometheus/prometheus.yml is a compose service at a port it listens on."""
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        wrong = []
        for job in config["scrape_configs"]:
            for target in (t for group in job["static_configs"] for t in group["targets"]):
                host, port = target.rsplit(":", 1)
                service = services(doc).get(host)
                if service is None or int(port) not in _listen_ports(service):
                    wrong.append(target)
        assert [] == wrong
        # batchobs-ingester: the job BatchobsIngesterDown and Pipeline health key on
        jobs = {j["job_name"] for j in config["scrape_configs"]}
        assert {"pushgateway", "statsd-exporter", "batchobs-ingester"} == jobs
        gateway = next(j for j in config["scrape_configs"] if j["job_name"] == "pushgateway")
        assert gateway.get("honor_labels") is True

    def test_prometheus_runs_the_one_config(self, doc: dict[str, Any]) -> None:
        """The compose Prometheus's --config.file is prometheus/prometheus.yml, mounted."""
        prometheus = services(doc)["prometheus"]
        config_file = _flag(prometheus, "--config.file")
        assert ("./prometheus/prometheus.yml", config_file) in mounts(prometheus)

    def test_prometheus_loads_the_mounted_rules(self, doc: dict[str, Any]) -> None:
        """Each rule_files pattern, relative to the config file, resolves in the container to where the
        repository directory it names is mounted, and matches rule files there."""
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        prometheus = services(doc)["prometheus"]
        config_dir = Path(_flag(prometheus, "--config.file")).parent
        by_target = {target: source for source, target in mounts(prometheus)}
        assert config["rule_files"]
        for pattern in config["rule_files"]:
            in_repo = (PROMETHEUS_CONFIG.parent / pattern).parent.relative_to(ROOT)
            assert f"./{in_repo}" == by_target.get(str(config_dir / Path(pattern).parent)), pattern
            assert list(PROMETHEUS_CONFIG.parent.glob(pattern)), pattern

    def test_listener_and_warehouse_urls_name_services(self, doc: dict[str, Any], example_env: dict[str, str]) -> None:
        """The Pushgateway, ClickHouse and StatsD addresses given to batchobs and Airflow are services and ports."""
        by_name = services(doc)
        checked = 0
        for name, service in by_name.items():
            env = environment(service)
            for key in ("BATCHOBS_PUSHGATEWAY_URL", "BATCHOBS_CLICKHOUSE_URL"):
                if key in env:
                    url = urlsplit(interpolate(env[key], example_env))
                    assert url.hostname in by_name, (name, key)
                    assert url.port in _listen_ports(by_name[url.hostname]), (name, key)
                    checked += 1
            if env.get("AIRFLOW__METRICS__STATSD_ON") == "true":
                statsd = by_name[env["AIRFLOW__METRICS__STATSD_HOST"]]
                assert int(env["AIRFLOW__METRICS__STATSD_PORT"]) in _listen_ports(statsd)
                # the mapping keeps only tagged names: without tags the ids would be lost
                assert "true" == env["AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED"]
                checked += 1
        assert checked >= 8

    def test_grafana_datasources_point_at_the_services(self, doc: dict[str, Any]) -> None:
        """The provisioned ClickHouse and Prometheus data sources use the compose services' hosts and ports."""
        sources = _grafana_datasources()
        by_name = services(doc)
        clickhouse = [d for d in sources if d["type"] == "grafana-clickhouse-datasource"]
        prometheus = [d for d in sources if d["type"] == "prometheus"]
        assert clickhouse and prometheus
        for source in clickhouse:
            data = source["jsonData"]
            assert data["host"] in by_name and "clickhouse-server" in str(by_name[data["host"]]["image"])
            expected_port = 8123 if data.get("protocol") == "http" else 9000
            assert expected_port == int(data["port"])
        for source in prometheus:
            url = urlsplit(source["url"])
            assert url.hostname in by_name and "prom/prometheus" in str(by_name[url.hostname]["image"])
            assert url.port in _listen_ports(by_name[url.hostname])


class TestGrafana:
    def test_every_variable_the_provisioning_reads_is_set(self, doc: dict[str, Any]) -> None:
        """Each $VAR the data source provisioning expands is in the grafana service's environment
        (Grafana expands an unset one to an empty string, silently)."""
        read = {name for source in _grafana_datasources() for value in _strings(source)
                for name in PROVISIONING_ENV.findall(value)}
        assert {"BATCHOBS_GRAFANA_CLICKHOUSE_USER", "BATCHOBS_GRAFANA_CLICKHOUSE_PASSWORD"} <= read
        assert set() == read - environment(services(doc)["grafana"]).keys()

    def test_grafana_logs_in_as_the_read_only_clickhouse_user(self, doc: dict[str, Any],
                                                              example_env: dict[str, str]) -> None:
        """The user Grafana is given is the read-only user of clickhouse-users.xml, and its password
        comes from the same .env variable the ClickHouse server gives that user."""
        source = next(d for d in _grafana_datasources() if d["type"] == "grafana-clickhouse-datasource")
        user_var = PROVISIONING_ENV.fullmatch(source["jsonData"]["username"])
        password_var = PROVISIONING_ENV.fullmatch(source["secureJsonData"]["password"])
        assert user_var and password_var
        grafana, clickhouse = (environment(services(doc)[name]) for name in ("grafana", "clickhouse"))
        users = ElementTree.parse(CLICKHOUSE_USERS).getroot()
        user = users.find(f"users/{grafana[user_var.group(1)]}")
        assert user is not None, f"no user {grafana[user_var.group(1)]!r} in {CLICKHOUSE_USERS.name}"
        profile = users.find(f"profiles/{user.findtext('profile')}")
        assert profile is not None and profile.findtext("readonly") in ("1", "2")
        server_var = user.find("password").get("from_env")  # type: ignore[union-attr]
        assert server_var in clickhouse, f"the clickhouse service does not set {server_var} ({CLICKHOUSE_USERS.name})"
        markers = {k: f"from-env-{k}" for k in example_env}
        given_to_grafana = interpolate(grafana[password_var.group(1)], markers)
        given_to_clickhouse = interpolate(clickhouse[server_var], markers)
        assert given_to_grafana.startswith("from-env-") and given_to_grafana == given_to_clickhouse

    def test_provisioning_and_dashboards_are_mounted_where_grafana_reads_them(self, doc: dict[str, Any]) -> None:
        """grafana/provisioning at Grafana's provisioning directory; grafana/dashboards at the path the
        dashboard provider loads."""
        grafana = mounts(services(doc)["grafana"])
        assert ("./grafana/provisioning", GRAFANA_PROVISIONING_DIR) in grafana
        providers = [p for f in sorted((GRAFANA_PROVISIONING / "dashboards").glob("*.y*ml"))
                     for p in yaml.safe_load(f.read_text())["providers"]]
        assert providers
        assert all(("./grafana/dashboards", p["options"]["path"]) in grafana for p in providers)


class TestReadiness:
    def test_every_long_running_service_has_a_healthcheck(self, doc: dict[str, Any]) -> None:
        """`docker compose up --wait` waits on health: every service that stays up declares a check."""
        missing = [n for n, s in services(doc).items() if s.get("restart") != "no" and not s.get("healthcheck")]
        assert [] == missing

    def test_one_shot_services_are_awaited_to_completion(self, doc: dict[str, Any]) -> None:
        """Each one-shot service is a service_completed_successfully dependency of one that stays up
        (else `up --wait` fails on its exit, docker/compose#10596)."""
        by_name = services(doc)
        one_shots = {n for n, s in by_name.items() if s.get("restart") == "no"}
        assert {"airflow-init", "warehouse-migrate"} <= one_shots
        adopted = {dep for s in by_name.values() if s.get("restart") != "no"
                   for dep, cond in (s.get("depends_on") or {}).items()
                   if cond.get("condition") == "service_completed_successfully"}
        assert set() == one_shots - adopted

    def test_dependencies_wait_for_health(self, doc: dict[str, Any]) -> None:
        """A dependency on a service with a healthcheck waits for it to be healthy, not merely started."""
        by_name = services(doc)
        weak = [(n, dep) for n, s in by_name.items() for dep, cond in (s.get("depends_on") or {}).items()
                if by_name[dep].get("healthcheck") and cond.get("condition") != "service_healthy"]
        assert [] == weak


class TestSecrets:
    def test_no_secret_is_written_in_the_compose_file(self, doc: dict[str, Any], example_env: dict[str, str]) -> None:
        """Every password, key or secret is interpolated from .env, never a literal."""
        pattern = re.compile(r"PASSWORD|SECRET|FERNET|_KEY$|CLICKHOUSE_URL|SQL_ALCHEMY_CONN")
        literal = [(n, k) for n, s in services(doc).items() for k, v in environment(s).items()
                   if pattern.search(k) and "${" not in v]
        assert [] == literal
        for name, service in services(doc).items():
            for key, value in environment(service).items():
                # every variable becomes a marker: a password that is not a marker was written literally
                url = urlsplit(interpolate(value, {k: f"from-env-{k}" for k in example_env}))
                if url.password is not None:
                    assert url.password.startswith("from-env-"), (name, key)

    def test_every_required_variable_is_in_env_example(self, example_env: dict[str, str]) -> None:
        """Each variable the compose file needs (``${VAR:?...}``) is given in .env.example."""
        required = {m.group(1) for m in compose.INTERPOLATION.finditer(compose.COMPOSE_FILE.read_text())
                    if m.group(2) in (":?", "?")}
        assert set() == required - example_env.keys()

    def test_env_example_holds_only_placeholders(self, example_env: dict[str, str]) -> None:
        """The committed .env.example holds placeholders, never a usable secret."""
        secrets = {k: v for k, v in example_env.items() if re.search(r"PASSWORD|SECRET|KEY", k)}
        assert secrets and all(v.startswith("change-me") for v in secrets.values())

    def test_dot_env_is_ignored_by_git(self) -> None:
        """A filled-in .env is never committed."""
        assert ".env" in (ROOT / ".gitignore").read_text().split()


class TestDocumented:
    def test_every_batchobs_variable_is_in_the_readme(self) -> None:
        """Each BATCHOBS_* variable the stack sets is in the README's configuration table."""
        text = "\n".join(p.read_text() for p in (compose.COMPOSE_FILE, compose.DOCKERFILE,
                                                  *sorted((ROOT / "examples").glob("*.py")),
                                                  *sorted((ROOT / "deploy").rglob("*.yaml"))))
        used = set(re.findall(r"\bBATCHOBS_[A-Z0-9_]+", text))
        readme = (ROOT / "README.md").read_text()
        table = readme[readme.index("## Configuration"):]
        table = table[:table.index("\n## ", 1)]
        documented = set(re.findall(r"`(BATCHOBS_[A-Z0-9_]+)`", table))
        assert used and set() == used - documented

    def test_readme_has_the_stack_and_kubernetes_sections(self) -> None:
        """The README tells how to run the whole stack (command, URLs, login) and how to deploy on Kubernetes."""
        readme = (ROOT / "README.md").read_text()
        assert "## Run the whole stack" in readme and "## Kubernetes" in readme
        stack = readme[readme.index("## Run the whole stack"):readme.index("## Kubernetes")]
        assert "docker compose up --wait" in stack
        assert "http://127.0.0.1:8080" in stack and "http://127.0.0.1:3000" in stack


def _commented_settings(section: str) -> dict[str, str]:
    """The ``# NAME=value`` lines of .env.example after the comment line containing ``section``."""
    text = ENV_EXAMPLE.read_text()
    lines = text[text.index(section):].splitlines()[1:]
    pairs = [line.lstrip("# ").split("=", 1) for line in lines if re.match(r"^# [A-Z_]+=", line)]
    return {k: v for k, v in pairs}


class TestClusterProfile:
    """The `cluster` profile: ClickHouse Keeper and two shards of two replicas (deploy/compose/cluster/)."""

    def cluster_services(self, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {n: s for n, s in services(doc).items() if "cluster" in (s.get("profiles") or [])}

    def test_keeper_and_four_nodes_of_the_same_clickhouse(self, doc: dict[str, Any]) -> None:
        """Keeper and four servers, all of the single server's pinned ClickHouse release."""
        cluster = self.cluster_services(doc)
        server = str(services(doc)["clickhouse"]["image"])
        nodes = {n for n, s in cluster.items() if s["image"] == server}
        assert {"clickhouse-s1r1", "clickhouse-s1r2", "clickhouse-s2r1", "clickhouse-s2r2"} == nodes
        assert {"clickhouse-keeper": server.replace("clickhouse-server", "clickhouse-keeper")} == {
            n: s["image"] for n, s in cluster.items() if n not in nodes}

    def test_the_default_stack_never_needs_a_profiled_service(self, doc: dict[str, Any]) -> None:
        """Without the profile the stack still starts: a dependency on a profiled service is optional."""
        by_name = services(doc)
        profiled = {n for n, s in by_name.items() if s.get("profiles")}
        hard = [(n, dep) for n, s in by_name.items() if not s.get("profiles")
                for dep, cond in (s.get("depends_on") or {}).items() if dep in profiled and cond.get("required", True)]
        assert [] == hard

    def test_migrate_waits_for_every_node(self, doc: dict[str, Any]) -> None:
        """ON CLUSTER waits for every node: the migration starts once each is healthy (when they run)."""
        nodes = {n for n, s in self.cluster_services(doc).items() if "clickhouse-server" in str(s["image"])}
        depends = services(doc)["warehouse-migrate"]["depends_on"]
        assert {n: "service_healthy" for n in nodes} == {n: depends[n]["condition"] for n in nodes}

    def test_the_nodes_find_keeper(self, doc: dict[str, Any]) -> None:
        """The servers' Keeper address is the Keeper service at the port its config listens on."""
        cluster_xml = ET.parse(ROOT / "deploy" / "compose" / "cluster" / "cluster.xml").getroot()
        keeper_xml = ET.parse(ROOT / "deploy" / "compose" / "cluster" / "keeper.xml").getroot()
        node = cluster_xml.find("zookeeper/node")
        assert node is not None
        assert node.findtext("host") in self.cluster_services(doc)
        assert node.findtext("port") == keeper_xml.findtext("keeper_server/tcp_port")
        keeper = self.cluster_services(doc)[str(node.findtext("host"))]
        assert ("./deploy/compose/cluster/keeper.xml", "/etc/clickhouse-keeper/keeper_config.xml") in mounts(keeper)
        hosts = {r.findtext("host") for r in cluster_xml.iterfind("remote_servers/*/shard/replica")}
        assert hosts == {n for n, s in self.cluster_services(doc).items() if "clickhouse-server" in str(s["image"])}

    def test_env_example_switches_batchobs_to_the_cluster(self, doc: dict[str, Any],
                                                           example_env: dict[str, str]) -> None:
        """The commented lines of .env.example, once uncommented, start the profile and point migrate,
        the ingester and dbt at a node of the cluster its config defines."""
        switch = _commented_settings("A ClickHouse cluster instead of one server")
        assert "cluster" == switch["COMPOSE_PROFILES"]
        cluster_xml = ET.parse(ROOT / "deploy" / "compose" / "cluster" / "cluster.xml").getroot()
        defined = [c.tag for c in cluster_xml.find("remote_servers") or []]
        assert [switch["BATCHOBS_CLICKHOUSE_CLUSTER"]] == defined
        env = {**example_env, **switch}
        users = ["warehouse-migrate", "ingester", "airflow-scheduler"]
        for name in users:
            service_env = environment(services(doc)[name])
            url = urlsplit(interpolate(service_env["BATCHOBS_CLICKHOUSE_URL"], env))
            assert url.hostname in self.cluster_services(doc) and 8123 == url.port, name
            assert defined[0] == interpolate(service_env["BATCHOBS_CLICKHOUSE_CLUSTER"], env), name
