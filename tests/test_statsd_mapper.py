"""The model of statsd-exporter's mapper (tests/statsd_mapper.py), and our mapping file as
statsd-exporter's loader would check it (prometheus/statsd_exporter pkg/mapper/mapper.go)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from .statsd_mapper import DEFAULT_BUCKETS, Mapped, Mapper, Sample, escape, parse_line

MAPPING = Path(__file__).resolve().parents[1] / "deploy" / "compose" / "statsd-mapping.yml"
# statsd-exporter's own validation of a mapping file (mapper.go)
STATSD_METRIC = r"[a-zA-Z_](-?[a-zA-Z0-9_])*"
TEMPLATE = r"(\$\{?\d+\}?)"
METRIC_LINE = re.compile(rf"^(\*\.|{STATSD_METRIC}\.)+(\*|{STATSD_METRIC})$")
METRIC_NAME = re.compile(rf"^([a-zA-Z_]|{TEMPLATE})([a-zA-Z0-9_]|{TEMPLATE})*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]+$")


def mapper(*rules: dict[str, object]) -> Mapper:
    return Mapper({"mappings": list(rules)})


class TestParseLine:
    def test_influxdb_tags_become_labels(self) -> None:
        """Tags after the name, comma-separated, are split off the name."""
        assert Sample("airflow.ti.finish", {"dag_id": "a.b", "state": "success"}, "counter", 1.0) == parse_line(
            "airflow.ti.finish,dag_id=a.b,state=success:1|c")

    def test_types_and_sample_rate(self) -> None:
        """c, g and ms are counter, gauge and observer; a sample rate does not disturb the type."""
        kinds = [parse_line(line).metric_type for line in ("a:1|c", "a:2|g|@0.1", "a:3.5|ms", "a:1|h")]
        assert ["counter", "gauge", "observer", "observer"] == kinds


class TestGlob:
    def test_star_is_one_whole_component(self) -> None:
        """`*` matches exactly one dot-separated component, never two."""
        m = mapper({"match": "a.*.c", "name": "x_${1}"})
        assert "x_b" == m.map(Sample("a.b.c", {}, "counter")).name
        assert "a_b_b_c" == m.map(Sample("a.b.b.c", {}, "counter")).name  # unmatched: escaped name

    def test_first_matching_rule_in_file_order_wins(self) -> None:
        """With ordering honoured (the default), the earlier rule wins over a later, more literal one."""
        m = mapper({"match": "a.*", "name": "first"}, {"match": "a.b", "name": "second"})
        assert "first" == m.map(Sample("a.b", {}, "gauge")).name

    def test_metric_type_restricts_a_rule(self) -> None:
        """A rule with match_metric_type applies to that StatsD type only."""
        m = mapper({"match": "a.*", "match_metric_type": "gauge", "name": "g_$1"}, {"match": "a.*", "name": "any_$1"})
        assert ("g_x", "any_x") == (m.map(Sample("a.x", {}, "gauge")).name, m.map(Sample("a.x", {}, "counter")).name)

    def test_captures_fill_labels_and_tags_are_kept(self) -> None:
        """Captures fill label templates; tag labels stay alongside."""
        m = mapper({"match": "d.*", "name": "dur", "labels": {"state": "$1"}})
        assert Mapped("dur", {"state": "ok", "dag_id": "x"}) == m.map(Sample("d.ok", {"dag_id": "x"}, "observer"))


class TestRegexAndDrop:
    def test_regex_rules_come_after_every_glob(self) -> None:
        """A regex rule earlier in the file loses to any matching glob rule."""
        m = mapper({"match": ".", "match_type": "regex", "action": "drop", "name": "d"},
                   {"match": "a.b", "name": "kept"})
        assert "kept" == m.map(Sample("a.b", {}, "counter")).name
        assert None is m.map(Sample("z", {}, "counter")).name

    def test_regex_is_searched_not_anchored(self) -> None:
        """A regex matches anywhere in the name, as Go's FindStringSubmatchIndex does."""
        m = mapper({"match": r"b\.(c)", "match_type": "regex", "name": "r_${1}"})
        assert "r_c" == m.map(Sample("a.b.c.d", {}, "counter")).name

    def test_unmatched_names_are_escaped(self) -> None:
        """Without a rule, invalid characters become underscores."""
        assert "airflow_dagrun_dependency_check" == escape("airflow.dagrun.dependency-check")


@pytest.fixture(scope="module")
def rules() -> list[dict[str, object]]:
    return list(yaml.safe_load(MAPPING.read_text())["mappings"])


class TestOurMapping:
    def test_statsd_exporter_would_load_it(self, rules: list[dict[str, object]]) -> None:
        """Every glob, name and label passes statsd-exporter's own checks; every rule has a name."""
        bad = [r for r in rules if not r.get("name") or not METRIC_NAME.match(str(r["name"]))
               or (r.get("match_type", "glob") == "glob" and not METRIC_LINE.match(str(r["match"])))
               or any(not LABEL_NAME.match(k) for k in dict(r.get("labels") or {}))]  # type: ignore[call-overload]
        assert [] == bad

    def test_histogram_options_only_on_histograms(self, rules: list[dict[str, object]]) -> None:
        """Buckets are only given where the observer type is histogram (statsd-exporter refuses them on a summary)."""
        default = yaml.safe_load(MAPPING.read_text())["defaults"]["observer_type"]
        summaries = [r for r in rules if r.get("observer_type", default) != "histogram"]
        assert [] == [r["match"] for r in summaries if r.get("histogram_options")]

    def test_the_last_rule_drops_everything_unmapped(self) -> None:
        """Legacy id-in-name metrics and anything unnamed never reach Prometheus."""
        m = Mapper.from_file(MAPPING)
        assert None is m.map(parse_line("airflow.ti.finish.team__nightly.load__orders.success:1|c")).name
        assert None is m.map(parse_line("airflow.some_future_metric:1|c")).name

    def test_triggerer_metrics(self) -> None:
        """Triggerer liveness and capacity map with their hostname label (not run by the capture test)."""
        m = Mapper.from_file(MAPPING)
        heartbeat = m.map(parse_line("airflow.triggerer_heartbeat:1|c"))
        capacity = m.map(parse_line("airflow.triggerer.capacity_left,hostname=node-1:1000|g"))
        assert Mapped("airflow_triggerer_heartbeat_total", {}, DEFAULT_BUCKETS) == heartbeat
        assert Mapped("airflow_triggerer_capacity_left", {"hostname": "node-1"}, DEFAULT_BUCKETS) == capacity

    def test_dagrun_duration_state_from_the_name_ids_from_tags(self) -> None:
        """dagrun.duration.<state> gives one metric with a state label; the dag_id comes whole from the tag."""
        line = "airflow.dagrun.duration.success,dag_id=a.b.c,run_type=manual:12|ms"
        mapped = Mapper.from_file(MAPPING).map(parse_line(line))
        assert ("airflow_dagrun_duration_seconds", {"state": "success", "dag_id": "a.b.c", "run_type": "manual"}) == (
            mapped.name, mapped.labels)
