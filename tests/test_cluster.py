"""Cluster mode (``BATCHOBS_CLICKHOUSE_CLUSTER``), tested as far as a machine without a cluster allows.

No ClickHouse cluster runs here (no Docker daemon, no Keeper).  What is checked instead:

* the cluster DDL of a new database against a committed snapshot,
  ``tests/snapshots/cluster_migrate.sql`` (the DDL depends on the cluster's name, not its size;
  the name is that of the compose profile's two-shard, two-replica cluster).  After changing a
  migration or ``warehouse/layout.py`` on purpose, regenerate it and read the diff:
  ``BATCHOBS_TEST_UPDATE_SNAPSHOTS=1 .venv/bin/pytest -p no:cacheprovider tests/test_cluster.py -k snapshot``;
* every statement parsed by ClickHouse's own parser (``formatQuery`` on the session's ClickHouse);
* the statements run on chDB with what only Keeper can do taken out (``tests/cluster/run_on_chdb.py``):
  Distributed tables, sharding keys, bookkeeping, TTL, a refused row through a Distributed table;
* the compose profile's cluster config loaded by the engine, node by node;
* ``migrate --dry-run`` as a command, the single-node path unchanged, the ingester's writer, dbt.

Only a real cluster can show replication, Keeper's deduplication across replicas, distributed DDL
and dbt-clickhouse's distributed materializations at work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from batchobs.transform import PROJECT_DIR, dbt_env
from ingest.retry import Retry, Target
from ingest.writer import Writer
from warehouse import embedded
from warehouse.connection import ClickHouseSettings
from warehouse.layout import (
    CLUSTER_VARIABLE,
    SINGLE_NODE,
    ClusterLayout,
    LayoutError,
    cluster_from_env,
    layout_from_env,
)
from warehouse.migrate import dry_run, migrations

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "snapshots" / "cluster_migrate.sql"
CLUSTER_XML = ROOT / "deploy" / "compose" / "cluster" / "cluster.xml"
CLUSTER = "batchobs"  # the compose profile's cluster (checked against its config below)
BATCHOBS = str(Path(sys.executable).with_name("batchobs"))
DBT = str(Path(sys.executable).with_name("dbt"))
DEADLINE_S = 120  # guards against a hang only


def cluster_plan(database: str = "batchobs") -> str:
    return dry_run(None, database, 400, ClusterLayout(CLUSTER)).render()


def statements(script: str) -> list[str]:
    """The statements of a rendered plan (each ends with ';' and a blank line), comments removed."""
    return [re.sub(r"^--[^\n]*\n", "", part, flags=re.M).strip()
            for part in script.split(";\n\n") if re.sub(r"^--[^\n]*\n?", "", part, flags=re.M).strip()]


def formatted(admin: Any, sql: str) -> str:
    """``sql`` as ClickHouse's parser reads it (SYNTAX_ERROR if it cannot)."""
    return str(admin.query("SELECT formatQuery({q:String})", parameters={"q": sql}).result_rows[0][0])


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=DEADLINE_S,
                          check=False)


def cli_env(home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHOBS_") or k.startswith("BATCHOBS_TEST_")}
    return {**env, "BATCHOBS_HOME": str(home), **settings}


def url_of(settings: ClickHouseSettings, database: str) -> str:
    auth = settings.username + (f":{settings.password}" if settings.password else "")
    return f"http://{auth}@{settings.host}:{settings.port}/{database}"


class TestSnapshot:
    def test_cluster_ddl_matches_the_snapshot(self) -> None:
        """The cluster form of every migration, for a new database, is the committed snapshot."""
        if os.environ.get("BATCHOBS_TEST_UPDATE_SNAPSHOTS") == "1":
            SNAPSHOT.parent.mkdir(exist_ok=True)
            SNAPSHOT.write_text(cluster_plan())
        assert SNAPSHOT.read_text() == cluster_plan()

    def test_every_statement_is_on_the_cluster(self) -> None:
        """Each DDL statement carries ON CLUSTER; tables are replicated with the shard and replica
        macros behind Distributed ones; only the bookkeeping insert runs on one node."""
        found = statements(cluster_plan())
        ddl = [s for s in found if not s.startswith("INSERT")]
        assert [] == [s[:60] for s in ddl if f"ON CLUSTER '{CLUSTER}'" not in s]
        assert len(migrations()) == len(found) - len(ddl)
        assert 3 == sum("ReplicatedReplacingMergeTree(" in s for s in ddl)  # events, dead_letters, bookkeeping
        assert 2 == sum("'{shard}'" not in s and "/{shard}/" in s and "'{replica}'" in s for s in ddl)
        assert ["events", "dead_letters"] == re.findall(
            r"CREATE TABLE IF NOT EXISTS batchobs\.(\w+) ON CLUSTER '\w+' AS batchobs\.\1_local\s+"
            r"ENGINE = Distributed\('batchobs', 'batchobs', '\1_local', cityHash64\(", "\n".join(ddl))

    def test_every_statement_parses(self, admin: Any) -> None:
        """ClickHouse's own parser reads every statement of the cluster form and keeps its cluster parts."""
        for sql in statements(cluster_plan()):
            text = formatted(admin, sql)
            if not sql.startswith("INSERT"):
                assert f"ON CLUSTER {CLUSTER}" in text, sql[:80]
        distributed = formatted(admin, next(s for s in statements(cluster_plan()) if "AS batchobs.events_local" in s))
        assert "ENGINE = Distributed('batchobs', 'batchobs', 'events_local', cityHash64(dag_id, run_id))" in distributed


class TestRendering:
    def test_single_node_runs_the_migrations_as_written(self) -> None:
        """One server: the statements are the migration files' own, with no cluster part anywhere."""
        for migration in migrations():
            for statement in migration.statements():
                assert [statement] == SINGLE_NODE.render(statement, "batchobs")
        script = dry_run(None, "batchobs", 400).render()
        assert not re.search(r"ON CLUSTER|Distributed|Replicated|_local\b", script)

    def test_engine_arguments_are_kept_after_the_keeper_path(self) -> None:
        """An engine's own arguments (a version column) follow the replicated engine's path and replica."""
        local, _ = ClusterLayout("c").render(
            "CREATE TABLE IF NOT EXISTS events (v UInt8) ENGINE = ReplacingMergeTree(v) ORDER BY v", "db")
        assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', " \
               "'{replica}', v) ORDER BY v" in local

    def test_column_changes_alter_the_distributed_table_after_the_shards(self) -> None:
        """ADD COLUMN: the local tables first, then the Distributed table (which holds its own columns)."""
        done = ClusterLayout("c").render("ALTER TABLE events ADD COLUMN x String, DROP COLUMN y", "db")
        assert ["ALTER TABLE db.events_local ON CLUSTER 'c' ADD COLUMN x String, DROP COLUMN y",
                "ALTER TABLE db.events ON CLUSTER 'c' ADD COLUMN x String, DROP COLUMN y"] == done

    def test_constraint_changes_stay_on_the_shards(self) -> None:
        """Constraints (whose expressions hold commas) are the local tables' alone."""
        alter = "ALTER TABLE events ADD CONSTRAINT c CHECK has(['a,b'], kind), ADD CONSTRAINT d CHECK 1"
        assert [alter.replace("events", "db.events_local ON CLUSTER 'c'", 1)] == ClusterLayout("c").render(alter, "db")

    @pytest.mark.parametrize(("statement", "why"), [
        ("CREATE VIEW v AS SELECT 1", "cannot render"),
        ("CREATE TABLE IF NOT EXISTS other (a UInt8) ENGINE = MergeTree ORDER BY a", "no sharding key"),
        ("CREATE TABLE IF NOT EXISTS events (a UInt8) ENGINE = Memory", "MergeTree family"),
        ("CREATE TABLE IF NOT EXISTS events (a UInt8) ENGINE = ReplicatedMergeTree ORDER BY a", "not replicated"),
        ("ALTER TABLE events ADD COLUMN a UInt8, ADD CONSTRAINT c CHECK a > 0", "separate statements"),
        ("INSERT INTO events VALUES (1)", "cannot render"),
    ])
    def test_shapes_it_cannot_render_are_refused(self, statement: str, why: str) -> None:
        """A statement the cluster form does not know is refused with the reason, never passed on half-done."""
        with pytest.raises(LayoutError, match=why):
            ClusterLayout("c").render(statement, "db")

    @pytest.mark.parametrize("name", ["batchobs", "prod-eu.1", "{cluster}"])
    def test_cluster_names_and_macros(self, name: str) -> None:
        """A remote_servers name or a macro is taken, quoted, in ON CLUSTER and the Distributed engine."""
        assert f"ON CLUSTER '{name}'" in ClusterLayout(name).preamble("db")[0]

    @pytest.mark.parametrize("name", ["a b", "x'; DROP TABLE t; --", "{a}{b}", ""])
    def test_bad_cluster_names_are_refused(self, name: str) -> None:
        """Anything else is refused, naming the variable."""
        with pytest.raises(LayoutError, match=CLUSTER_VARIABLE):
            ClusterLayout(name)

    def test_the_setting(self) -> None:
        """Unset or blank: one server; a cluster needs a real server's URL (the embedded one is one server)."""
        assert SINGLE_NODE == layout_from_env({CLUSTER_VARIABLE: "  "})
        assert cluster_from_env({}) is None
        with pytest.raises(LayoutError, match="BATCHOBS_CLICKHOUSE_URL"):
            layout_from_env({CLUSTER_VARIABLE: "c"})
        assert "c" == layout_from_env({CLUSTER_VARIABLE: "c", "BATCHOBS_CLICKHOUSE_URL": "http://h/"}).cluster


class TestOnChdb:
    def test_the_cluster_form_runs_on_the_engine(self, tmp_path: Path) -> None:
        """On a one-shard cluster of chDB itself, the plan runs (ON CLUSTER and Keeper arguments taken
        out); a batch with a refused row is refused whole, synchronously, through the Distributed table;
        a clean batch lands and reads back through it with FINAL and PREWHERE, as the models read."""
        config = tmp_path / "cluster.xml"
        config.write_text(f"""<clickhouse><tcp_port>9000</tcp_port>
            <remote_servers><{CLUSTER}><shard><internal_replication>true</internal_replication>
            <replica><host>localhost</host><port>9000</port></replica></shard></{CLUSTER}></remote_servers>
            </clickhouse>""")
        done = run(sys.executable, "-m", "tests.cluster.run_on_chdb", str(config), str(tmp_path / "data"),
                   env=dict(os.environ), cwd=ROOT)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert "error" not in result, result.get("error")
        assert {"events": "Distributed", "events_local": "ReplacingMergeTree", "dead_letters": "Distributed",
                "dead_letters_local": "ReplacingMergeTree",
                "schema_migrations": "ReplacingMergeTree"} == result["engines"]
        assert "VIOLATED_CONSTRAINT" in result["refused"]
        assert "Insertion status" in result["refused"]  # the Distributed table's foreground path answered
        assert 0 == result["rows_after_refusal"]
        assert "" == result["clean"] == result["dead"]
        assert result["events"] == result["rows"]
        assert result["task_events"] == result["task_events_read"]
        assert 1 == result["dead_letters"]
        assert "[1,2,3,4]" == result["applied"]
        assert "TTL toDateTime(ingested_at) + toIntervalDay(400)" in result["local_engine"]
        assert "replicated_deduplication_window_seconds = 604800" in result["local_engine"]

    def test_the_compose_cluster_config_loads(self, tmp_path: Path) -> None:
        """Each compose node's config, as the engine reads it: cluster `batchobs` of two shards of two
        replicas, hosts that are the profile's services, and the node's own shard and replica macros."""
        services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
        nodes = {n: s for n, s in services.items() if "cluster" in (s.get("profiles") or [])
                 and "clickhouse-server" in s["image"]}
        assert 4 == len(nodes)
        script = ("import chdb, json, os, sys\n"
                  "s = chdb.connect(f'file:{sys.argv[1]}?config-file={sys.argv[2]}')\n"
                  "q = lambda sql: str(s.query(sql, 'TSVRaw')).strip()\n"
                  "print(json.dumps({'clusters': q(\"SELECT cluster, shard_num, replica_num, host_name, port FROM "
                  "system.clusters WHERE cluster != 'default' ORDER BY 1, 2, 3\"), "
                  "'macros': q('SELECT macro, substitution FROM system.macros ORDER BY 1')}), flush=True)\n"
                  "os._exit(0)\n")
        expected_hosts = []
        for name, node in sorted(nodes.items()):
            env = {k: str(v) for k, v in node["environment"].items()}
            assert name == env["CLICKHOUSE_NODE"]  # replicas fetch from each other by this name
            done = run(sys.executable, "-c", script, str(tmp_path / name), str(CLUSTER_XML),
                       env={**os.environ, **env, "CLICKHOUSE_USER": "u", "CLICKHOUSE_PASSWORD": "p"}, cwd=tmp_path)
            got = json.loads(done.stdout.strip().splitlines()[-1])
            assert f"cluster\t{CLUSTER}\nreplica\t{name}\nshard\t{env['CLICKHOUSE_SHARD']}" == got["macros"]
            rows = [line.split("\t") for line in got["clusters"].splitlines()]
            assert [(CLUSTER, 9000)] * 4 == [(r[0], int(r[4])) for r in rows]
            assert [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")] == [(r[1], r[2]) for r in rows]
            # the node is in remote_servers under the shard its macro names (the Keeper path's {shard})
            assert [int(env["CLICKHOUSE_SHARD"])] == [int(r[1]) for r in rows if r[3] == name]
            expected_hosts.append(rows)
        assert sorted(nodes) == sorted(r[3] for r in expected_hosts[0])
        assert all(rows == expected_hosts[0] for rows in expected_hosts)


class TestDryRun:
    def test_nothing_running_lists_everything_and_starts_nothing(self, tmp_path: Path) -> None:
        """No warehouse configured and none running: every migration is listed and no server is started."""
        done = run(BATCHOBS, "warehouse", "migrate", "--dry-run", env=cli_env(tmp_path), cwd=tmp_path)
        assert 0 == done.returncode, done.stderr
        assert f"{len(migrations())} migration(s) pending" in done.stdout
        assert all(f"-- {m.version:04d}_{m.name}\n" in done.stdout for m in migrations())
        assert "ON CLUSTER" not in done.stdout
        assert embedded.find_running(tmp_path / "warehouse") is None
        assert not (tmp_path / "warehouse").exists()

    def test_it_asks_what_is_applied_and_changes_nothing(self, database: ClickHouseSettings, admin: Any,
                                                         clickhouse: ClickHouseSettings, tmp_path: Path) -> None:
        """Against a migrated database only the preamble is left; against a new one everything, and
        the new database still does not exist afterwards."""
        done = run(BATCHOBS, "warehouse", "migrate", "--dry-run", cwd=tmp_path,
                   env=cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=url_of(database, database.database)))
        assert 0 == done.returncode, done.stderr
        assert "0 migration(s) pending" in done.stdout and "0001_events" not in done.stdout
        assert 2 == len(statements(done.stdout))
        fresh = f"t_{uuid.uuid4().hex[:12]}"
        done = run(BATCHOBS, "warehouse", "migrate", "--dry-run", cwd=tmp_path,
                   env=cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=url_of(clickhouse, fresh)))
        assert 0 == done.returncode, done.stderr
        assert f"{len(migrations())} migration(s) pending" in done.stdout
        assert 0 == admin.command(f"EXISTS DATABASE {fresh}")

    def test_cluster_dry_run_prints_the_cluster_form(self, clickhouse: ClickHouseSettings, admin: Any,
                                                     tmp_path: Path) -> None:
        """With the cluster named: ON CLUSTER, replicated engines and Distributed tables, in the order
        migrate runs them, each parsed by ClickHouse; nothing is created."""
        fresh = f"t_{uuid.uuid4().hex[:12]}"
        done = run(BATCHOBS, "warehouse", "migrate", "--dry-run", cwd=tmp_path,
                   env=cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=url_of(clickhouse, fresh),
                               BATCHOBS_CLICKHOUSE_CLUSTER=CLUSTER))
        assert 0 == done.returncode, done.stderr
        header, body = done.stdout.split("\n\n", 1)
        assert f"cluster '{CLUSTER}'" in header and f"database {fresh}" in header
        assert cluster_plan(fresh) == body
        assert "ReplicatedReplacingMergeTree(" in body and "ENGINE = Distributed(" in body
        for sql in statements(body):
            formatted(admin, sql)
        assert 0 == admin.command(f"EXISTS DATABASE {fresh}")

    @pytest.mark.parametrize(("settings", "names"), [
        ({CLUSTER_VARIABLE: "c"}, ["BATCHOBS_CLICKHOUSE_CLUSTER", "BATCHOBS_CLICKHOUSE_URL"]),
        ({CLUSTER_VARIABLE: "a b", "BATCHOBS_CLICKHOUSE_URL": "http://127.0.0.1:1/"}, ["BATCHOBS_CLICKHOUSE_CLUSTER"]),
    ])
    def test_a_bad_setting_is_one_line(self, tmp_path: Path, settings: dict[str, str], names: list[str]) -> None:
        """A cluster without a server, or a name that is not one: one line naming the variables, exit 1."""
        for args in (("--dry-run",), ()):
            done = run(BATCHOBS, "warehouse", "migrate", *args, env=cli_env(tmp_path, **settings), cwd=tmp_path)
            assert 1 == done.returncode
            lines = done.stderr.splitlines()
            assert 1 == len(lines) and lines[0].startswith("batchobs: "), done.stderr
            assert all(name in lines[0] for name in names)


class RecordingClient:
    """A stand-in for a cluster node: a Distributed table cannot exist here (the embedded server
    refuses the engine, and no cluster runs), so this answers system.tables as a node would."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.inserts: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        assert "system.tables" in sql
        return SimpleNamespace(result_rows=[(name, self.engine) for name in parameters["names"]])

    def raw_insert(self, table: str, column_names: list[str], insert_block: bytes, fmt: str,
                   settings: dict[str, Any]) -> Any:
        self.inserts.append((table, settings))
        rows = bytes(insert_block).count(b"\n")
        return SimpleNamespace(summary={"written_rows": 2 * rows})  # the Distributed table's write and the shard's

    def insert(self, table: str, data: list[Any], column_names: list[str], settings: dict[str, Any]) -> None:
        self.inserts.append((table, settings))


class TestWriter:
    def retry(self) -> Retry:
        return Retry(Target("http://node/", "u", "db"), threading.Event(), lambda error, wait: None)

    def test_through_distributed_tables_inserts_wait_for_the_shards(self) -> None:
        """A cluster's Distributed tables: every insert is a foreground one carrying the batch's token,
        and what is counted is what was acknowledged, not the summary that counts each row twice."""
        client = RecordingClient("Distributed")
        writer = Writer(client, self.retry())
        assert 3 == writer.insert_events(b"{}\n{}\n{}\n", "tok", 3)
        writer.insert_dead_letters([SimpleNamespace(source="f", position=1, reason="r", raw="x", raw_bytes=1)],
                                   "dead-tok")  # type: ignore[list-item]
        assert [("events", "tok"), ("dead_letters", "dead-tok")] == [
            (table, s["insert_deduplication_token"]) for table, s in client.inserts]
        assert [1, 1] == [s.get("distributed_foreground_insert") for _, s in client.inserts]

    def test_on_one_server_nothing_changes(self, database: ClickHouseSettings) -> None:
        """One server (the real one of this session): no distributed setting, ClickHouse's own count."""
        client = RecordingClient("ReplacingMergeTree")
        assert 6 == Writer(client, self.retry()).insert_events(b"{}\n{}\n{}\n", "tok", 3)
        assert "distributed_foreground_insert" not in client.inserts[0][1]
        assert Writer(database.client(), self.retry()).distributed is False


class TestDbt:
    def test_dbt_env_names_the_cluster(self) -> None:
        """`batchobs dbt` gives dbt the cluster of BATCHOBS_CLICKHOUSE_CLUSTER, and none on one server
        (whatever the caller's environment held)."""
        settings = ClickHouseSettings("h", 8123)
        url = {"BATCHOBS_CLICKHOUSE_URL": "http://h:8123/"}
        assert "c" == dbt_env(settings, {**url, CLUSTER_VARIABLE: "c"})["BATCHOBS_DBT_CLUSTER"]
        assert "" == dbt_env(settings, {**url, "BATCHOBS_DBT_CLUSTER": "stray"})["BATCHOBS_DBT_CLUSTER"]

    def test_models_take_the_distributed_materializations_on_a_cluster(self, tmp_path: Path) -> None:
        """With a cluster, dbt resolves each table model to its distributed form: replicated engine and a
        sharding key (runs by dag_id and run_id); views stay views.  (`dbt ls` reads no warehouse.)"""
        env = {**cli_env(tmp_path), "BATCHOBS_DBT_CLUSTER": CLUSTER, "DBT_TARGET_PATH": str(tmp_path / "target"),
               "DBT_LOG_PATH": str(tmp_path / "logs"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        done = run(DBT, "ls", "--project-dir", str(PROJECT_DIR), "--profiles-dir", str(PROJECT_DIR),
                   "--resource-type", "model", "--output", "json", "--output-keys", "name", "config", "--quiet",
                   env=env, cwd=tmp_path)
        assert 0 == done.returncode, done.stdout[-2000:]
        models = {m["name"]: m["config"] for m in (json.loads(line) for line in done.stdout.splitlines()
                                                       if line.startswith("{"))}
        per_run = {"int_task_tries", "fct_task_runs", "fct_dag_runs"}
        tables = {"agg_dag_failure_rate_daily", "agg_task_failure_rate_daily", "flaky_tasks"}
        assert {n: "distributed_incremental" for n in per_run} == {n: models[n]["materialized"] for n in per_run}
        assert {n: "distributed_table" for n in tables} == {n: models[n]["materialized"] for n in tables}
        assert {"ReplicatedMergeTree()"} == {models[n]["engine"] for n in per_run | tables}
        assert {"cityHash64(dag_id, run_id)"} == {models[n]["sharding_key"] for n in per_run}
        assert {"view"} == {c["materialized"] for n, c in models.items() if n.startswith("stg_")}

    def test_the_profile_hands_the_cluster_to_dbt_clickhouse(self, clickhouse: ClickHouseSettings,
                                                            tmp_path: Path) -> None:
        """`batchobs dbt debug` with a cluster: dbt-clickhouse's profile shows it, and the single server
        here cannot create the database ON CLUSTER, as it can without one."""
        fresh = f"t_{uuid.uuid4().hex[:12]}"
        env = cli_env(tmp_path, BATCHOBS_CLICKHOUSE_URL=url_of(clickhouse, fresh), DBT_USE_COLORS="false")
        clustered = run(BATCHOBS, "dbt", "debug", env={**env, CLUSTER_VARIABLE: CLUSTER}, cwd=tmp_path)
        assert f"cluster: {CLUSTER}\n" in clustered.stdout
        assert 0 != clustered.returncode and f"Failed to create {fresh} database" in clustered.stdout
        single = run(BATCHOBS, "dbt", "debug", env=env, cwd=tmp_path)
        assert 0 == single.returncode, single.stdout[-2000:]
        assert "cluster: \n" in single.stdout
