"""statsd-exporter's line parsing and mapping rules, for the features our mapping uses.

No statsd-exporter binary is installable here, so the tests evaluate
``deploy/compose/statsd-mapping.yml`` with this model of its behaviour
(prometheus/statsd_exporter ``pkg/mapper/mapper.go`` ``GetMapping``, ``pkg/line``):

* a line is ``name[,tag=value...]:value|type[|@rate]``; InfluxDB-style tags become labels;
* glob rules first, in file order: ``*`` stands for exactly one dot-separated component,
  literal components must be equal, the whole name must match;
* then regex rules in file order, searched (not anchored) in the name;
* ``match_metric_type`` (counter, gauge, observer) restricts a rule to one StatsD type;
* ``$1`` / ``${1}`` in the name and in label values are the captures;
* ``action: drop`` discards the metric; an unmatched metric keeps its escaped name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TYPES = {"c": "counter", "g": "gauge", "ms": "observer", "h": "observer", "d": "observer"}
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # client_golang's DefBuckets
_TEMPLATE = re.compile(r"\$\{(\d+)\}|\$(\d+)")


@dataclass(frozen=True)
class Sample:
    name: str
    tags: dict[str, str]
    metric_type: str  # counter, gauge or observer
    value: float = 0.0  # as sent: timers in ms


@dataclass(frozen=True)
class Mapped:
    """What statsd-exporter exports for a sample; ``name`` is None when dropped."""

    name: str | None
    labels: dict[str, str] = field(default_factory=dict)
    buckets: tuple[float, ...] = DEFAULT_BUCKETS  # histogram buckets, for observers


def parse_line(line: str) -> Sample:
    """One StatsD line with InfluxDB-style tags."""
    head, _, rest = line.partition(":")
    value, kind = rest.split("|")[:2]
    name, *tag_parts = head.split(",")
    tags = dict(part.split("=", 1) for part in tag_parts)
    return Sample(name, tags, TYPES[kind], float(value))


def _expand(template: str, captures: list[str]) -> str:
    def one(match: re.Match[str]) -> str:
        index = int(match.group(1) or match.group(2))
        return captures[index - 1] if 0 < index <= len(captures) else ""

    return _TEMPLATE.sub(one, template)


def _glob(pattern: str, name: str) -> list[str] | None:
    want, have = pattern.split("."), name.split(".")
    if len(want) != len(have):
        return None
    captures = []
    for part, value in zip(want, have, strict=True):
        if part == "*":
            captures.append(value)
        elif part != value:
            return None
    return captures


def escape(name: str) -> str:
    """An unmapped name as statsd-exporter exports it (invalid characters become _)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


class Mapper:
    """The mapping file, evaluated as statsd-exporter would."""

    def __init__(self, config: dict[str, Any]) -> None:
        defaults = config.get("defaults") or {}
        default_type = defaults.get("match_type", "glob")
        self.buckets = tuple((defaults.get("histogram_options") or {}).get("buckets") or DEFAULT_BUCKETS)
        rules = config["mappings"]
        self.globs = [r for r in rules if r.get("match_type", default_type) == "glob"]
        self.regexes = [r for r in rules if r.get("match_type", default_type) == "regex"]

    @classmethod
    def from_file(cls, path: Path) -> Mapper:
        return cls(yaml.safe_load(path.read_text()))

    def map(self, sample: Sample) -> Mapped:
        for rule in self.globs:
            if rule.get("match_metric_type", sample.metric_type) != sample.metric_type:
                continue
            captures = _glob(rule["match"], sample.name)
            if captures is not None:
                return self._result(rule, captures, sample)
        for rule in self.regexes:
            found = re.search(rule["match"], sample.name)
            if found and rule.get("match_metric_type", sample.metric_type) == sample.metric_type:
                return self._result(rule, [g or "" for g in found.groups()], sample)
        return Mapped(escape(sample.name), dict(sample.tags), self.buckets)

    def _result(self, rule: dict[str, Any], captures: list[str], sample: Sample) -> Mapped:
        if rule.get("action", "map") == "drop":
            return Mapped(None)
        labels = dict(sample.tags)
        labels.update({k: _expand(str(v), captures) for k, v in (rule.get("labels") or {}).items()})
        buckets = tuple((rule.get("histogram_options") or {}).get("buckets") or self.buckets)
        return Mapped(_expand(rule["name"], captures), labels, buckets)


def exporter_registry(mapper: Mapper, lines: list[str]) -> CollectorRegistry:
    """What statsd-exporter would expose after these lines: counters add up, gauges keep the last
    value, timers (ms) are observed in seconds into histograms (our mapping's observer type)."""
    registry = CollectorRegistry()
    metrics: dict[str, Counter | Gauge | Histogram] = {}
    for sample in map(parse_line, lines):
        mapped = mapper.map(sample)
        if mapped.name is None:
            continue
        names = tuple(sorted(mapped.labels))
        if mapped.name not in metrics:
            kind = {"counter": Counter, "gauge": Gauge}.get(sample.metric_type)
            metrics[mapped.name] = (
                kind(mapped.name, mapped.name, names, registry=registry) if kind
                else Histogram(mapped.name, mapped.name, names, registry=registry, buckets=mapped.buckets))
        metric = metrics[mapped.name]
        child = metric.labels(**mapped.labels) if names else metric
        if isinstance(child, Counter):
            child.inc(sample.value)
        elif isinstance(child, Gauge):
            child.set(sample.value)
        else:
            child.observe(sample.value / 1000)
    return registry
