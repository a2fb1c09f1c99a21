"""The committed provisioning and dashboard JSON hold together as Grafana and the ClickHouse plugin
4.20 read them (the dashboards are hand-kept JSON: this is their validation)."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import pytest

from . import dashboards
from .grafana_expand import ExpandError, Scope, TimeRange, Variable, link_url

BOARDS = dashboards.load()
SOURCES = dashboards.datasources()
SOURCE_TYPES = {source["uid"]: source["type"] for source in SOURCES}
PANELS = [(uid, panel) for uid, board in BOARDS.items() for panel in dashboards.panels(board)]
LINKS = [(uid, panel, link) for uid, panel in PANELS for link in dashboards.links(panel)]
_ENV = re.compile(r"^\$\{?(\w+)\}?$")


class TestProvisioning:
    def test_two_sources_with_fixed_uids(self) -> None:
        """One Prometheus and one ClickHouse source, each with a fixed uid."""
        assert {"batchobs-prometheus": "prometheus", "batchobs-clickhouse": "grafana-clickhouse-datasource"} \
            == SOURCE_TYPES

    def test_clickhouse_source_uses_keys_the_plugin_reads(self) -> None:
        """HTTP protocol, host, port, defaultDatabase (not `database`, which the backend ignores)."""
        source = next(s for s in SOURCES if s["type"] == dashboards.CLICKHOUSE_TYPE)
        data = source["jsonData"]
        assert "http" == data["protocol"]
        assert {"host", "port", "defaultDatabase", "username"} <= set(data)
        assert "database" not in data and "database" not in source
        assert int(data["port"]) > 0 and data["host"]

    def test_credentials_come_from_the_environment(self) -> None:
        """User and password are $VAR references, the password in secureJsonData."""
        source = next(s for s in SOURCES if s["type"] == dashboards.CLICKHOUSE_TYPE)
        assert _ENV.match(source["jsonData"]["username"])
        assert _ENV.match(source["secureJsonData"]["password"])
        assert "password" not in source["jsonData"]

    def test_provider_loads_files(self) -> None:
        """A file provider with a path."""
        import yaml

        providers = yaml.safe_load((dashboards.GRAFANA / "provisioning/dashboards/batchobs.yaml").read_text())
        [provider] = providers["providers"]
        assert "file" == provider["type"]
        assert provider["options"]["path"]


class TestDashboards:
    def test_four_boards_with_fixed_uids(self) -> None:
        """Fleet, History, Run detail and Pipeline health."""
        assert {"batchobs-fleet", "batchobs-history", "batchobs-run-detail", "batchobs-pipeline-health"} == set(BOARDS)

    @pytest.mark.parametrize(("uid", "panel"), PANELS, ids=[f"{u}:{p['title']}" for u, p in PANELS])
    def test_panel_is_well_formed(self, uid: str, panel: dict[str, Any]) -> None:
        """A unique id, a place in the 24-column grid, and targets of its own data source's kind."""
        ids = [p["id"] for p in dashboards.panels(BOARDS[uid])]
        assert 1 == ids.count(panel["id"])
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24
        if panel["type"] == "row":  # a row header: no query of its own
            assert (0, 24, 1) == (pos["x"], pos["w"], pos["h"]) and "targets" not in panel
            return
        assert panel["datasource"]["uid"] in SOURCE_TYPES
        assert panel["targets"]
        for target in panel["targets"]:
            source = target["datasource"]
            assert SOURCE_TYPES[source["uid"]] == source["type"]
            assert source == panel["datasource"]
            if source["type"] == dashboards.CLICKHOUSE_TYPE:
                # what the plugin needs to run raw SQL; format explicit (a missing one is time series)
                assert "sql" == target["editorType"] and target["rawSql"]
                assert target["format"] in (0, 1)
                assert (0 if panel["type"] == "timeseries" else 1) == target["format"]
                assert "4.20.0" == target["pluginVersion"]  # no v3 migration in the editor
            else:
                assert target["expr"]
                table = target["format"] == "table"
                assert table == (panel["type"] == "table")
                assert target["instant"] == (not target["range"])

    @pytest.mark.parametrize("uid", sorted(BOARDS))
    def test_variables_use_provisioned_sources(self, uid: str) -> None:
        """Query variables read a provisioned data source; every $variable a query names exists."""
        board = BOARDS[uid]
        names = {v["name"] for v in board["templating"]["list"]}
        for variable in dashboards.query_variables(board):
            assert variable["datasource"]["uid"] in SOURCE_TYPES
        texts = [t.get("rawSql") or t.get("expr") for p in dashboards.panels(board) for t in p.get("targets", [])]
        texts += [dashboards.variable_query(v) for v in dashboards.query_variables(board)]
        for text in texts:
            for name in re.findall(r"\$\{?(\w+)", text):
                assert name.startswith("__") or name in names, f"{uid}: unknown variable ${name} in {text!r}"


    @pytest.mark.parametrize("uid", sorted(BOARDS))
    def test_panels_do_not_overlap(self, uid: str) -> None:
        """No two panels of a board share a grid cell (a merged row sits below what was there)."""
        cells: dict[tuple[int, int], str] = {}
        for panel in BOARDS[uid]["panels"]:
            pos = panel["gridPos"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[x, y]!r}"
                    cells[x, y] = panel["title"]

    def test_only_the_statsd_row_reads_airflows_own_metrics(self) -> None:
        """Fleet has the StatsD row; every query in it reads an airflow_* metric (statsd-exporter's
        names), and no other query does: only those may come back empty where StatsD is not scraped."""
        statsd = {t.id for t in dashboards.statsd_targets()}
        assert statsd
        reads_airflow = {t.id for t in dashboards.targets() if re.search(r"\bairflow_\w+", t.target.get("expr", ""))}
        assert statsd == reads_airflow

    def test_readme_counts_the_queries(self) -> None:
        """The README's count of the queries tests/test_grafana_live.py runs is the dashboards' count."""
        readme = " ".join((dashboards.ROOT / "README.md").read_text().split())
        counts = re.search(r"\((\d+) panel queries and (\d+) variable queries\)", readme)
        statsd = re.search(r"the (\d+) queries of Fleet's StatsD row", readme)
        assert counts and statsd, "the README no longer states the counts"
        variables = sum(len(dashboards.query_variables(board)) for board in BOARDS.values())
        assert (len(dashboards.targets()), variables) == tuple(map(int, counts.groups()))
        assert len(dashboards.statsd_targets()) == int(statsd.group(1))


def _scope_for(uid: str, panel: dict[str, Any], link: dict[str, Any]) -> Scope:
    board = BOARDS[uid]
    variables = {v["name"]: Variable(v["name"], "x y/z") for v in board["templating"]["list"]}
    used = re.findall(r"\$\{(__data\.fields\.\w+|__field\.labels\.\w+)", link["url"] + link["title"])
    return Scope(variables, TimeRange(0, 1000), extra={name: "x y/z" for name in used})


class TestLinks:
    @pytest.mark.parametrize(("uid", "panel", "link"), LINKS,
                             ids=[f"{u}:{p['title']}:{link['title']}" for u, p, link in LINKS])
    def test_link_points_at_a_board_and_its_variables(self, uid: str, panel: dict[str, Any],
                                                      link: dict[str, Any]) -> None:
        """The link opens a board that exists, sets only variables that board has, keeps the time range,
        and every placeholder in it is one Grafana fills."""
        rendered = link_url(link["url"], _scope_for(uid, panel, link))
        assert "$" not in rendered, rendered
        url = urllib.parse.urlsplit(rendered)
        match = re.fullmatch(r"/d/([\w-]+)/[\w-]+", url.path)
        assert match and match.group(1) in BOARDS, url.path
        target = BOARDS[match.group(1)]
        query = urllib.parse.parse_qs(url.query)
        variables = {v["name"] for v in target["templating"]["list"]}
        assert {k.removeprefix("var-") for k in query if k.startswith("var-")} <= variables
        assert {"from", "to"} <= set(query)
        assert ["x y/z"] == query["var-dag_id"]  # values percent-encoded, so they survive the round trip

    def test_every_drill_down_exists(self) -> None:
        """Fleet links to History, History to Run detail, Run detail back to History."""
        edges = {(uid, re.search(r"/d/([\w-]+)/", link["url"]).group(1)) for uid, _, link in LINKS}  # type: ignore[union-attr]
        assert {("batchobs-fleet", "batchobs-history"), ("batchobs-history", "batchobs-run-detail"),
                ("batchobs-run-detail", "batchobs-history")} <= edges

    def test_unknown_format_in_a_link_is_caught(self) -> None:
        """The link check notices a typo in a format name."""
        with pytest.raises(ExpandError):
            link_url("/d/x/x?var-a=${a:percentencoded}", Scope({"a": Variable("a", "v")}, TimeRange(0, 1)))
