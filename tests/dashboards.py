"""The committed dashboards and provisioning, read as Grafana reads them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROMETHEUS_TYPE = "prometheus"
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
FLEET = "batchobs-fleet"
# Fleet's row of Airflow's own metrics: Airflow -> StatsD -> statsd-exporter -> Prometheus
STATSD_ROW = "Scheduler and pools (Airflow's own metrics, StatsD)"


def datasources() -> list[dict[str, Any]]:
    return list(yaml.safe_load((GRAFANA / "provisioning/datasources/batchobs.yaml").read_text())["datasources"])


def load() -> dict[str, dict[str, Any]]:
    """Dashboards by uid."""
    out = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        out[board["uid"]] = board
    return out


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


@dataclass(frozen=True)
class Target:
    board: str
    panel: dict[str, Any]
    target: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.board}:{self.panel['title']}:{self.target['refId']}"

    @property
    def kind(self) -> str:
        return str(self.target["datasource"]["type"])


def row_of(board: dict[str, Any]) -> dict[int, str]:
    """Panel id -> title of the row it sits under ("" above the first row): an open row holds the
    panels after it up to the next row, a collapsed one those nested in it."""
    rows: dict[int, str] = {}
    current = ""
    for panel in board["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            rows.update({nested["id"]: current for nested in panel.get("panels", [])})
        rows[panel["id"]] = current
    return rows


def statsd_targets() -> list[Target]:
    """The queries of Fleet's StatsD row: their series exist only where statsd-exporter is scraped."""
    rows = row_of(load()[FLEET])
    return [t for t in targets() if t.board == FLEET and rows[t.panel["id"]] == STATSD_ROW]


def targets() -> list[Target]:
    return [Target(uid, panel, target) for uid, board in load().items() for panel in panels(board)
            for target in panel.get("targets", []) if not target.get("hide")]


def query_variables(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in board["templating"]["list"] if v["type"] == "query"]


def variable_query(variable: dict[str, Any]) -> str:
    """The query text of a query variable: the plugin object's rawSql, or a plain string."""
    query = variable["query"]
    return str(query["rawSql"] if isinstance(query, dict) else query)


def links(panel: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(panel.get("fieldConfig", {}).get("defaults", {}).get("links", []))
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "links":
                found.extend(prop["value"])
    return found


def fields_used(panel: dict[str, Any]) -> set[str]:
    """Result columns a panel names: field overrides by name and ${__data.fields.x} in its links."""
    names = {o["matcher"]["options"] for o in panel.get("fieldConfig", {}).get("overrides", [])
             if o["matcher"]["id"] == "byName"}
    names = {n for n in names if not n.startswith("Value")}  # Prometheus' own value columns
    for link in links(panel):
        names |= set(re.findall(r"\$\{__data\.fields\.(\w+)", link["url"] + link.get("title", "")))
    return names


def labels_used(panel: dict[str, Any]) -> set[str]:
    """Series labels a time-series panel's links name (${__field.labels.x})."""
    return {name for link in links(panel) for name in re.findall(r"\$\{__field\.labels\.(\w+)", link["url"])}
