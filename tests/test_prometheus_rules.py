"""prometheus/: the scrape config and the rules pass promtool's checks and unit tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from . import dashboards
from .servers import ROOT, binary

PROMETHEUS = ROOT / "prometheus"
RULES = PROMETHEUS / "rules" / "batchobs.yml"
UNIT_TESTS = PROMETHEUS / "tests" / "batchobs_test.yml"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_config_is_valid() -> None:
    """promtool check config (it checks the rule files the config loads, too)."""
    done = promtool("check", "config", "prometheus.yml")
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_pushgateway_is_scraped_with_honor_labels() -> None:
    """Without honor_labels the pushed job and instance become exported_job, exported_instance."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True


def test_scrape_jobs_named_by_rules_and_dashboards_exist() -> None:
    """Each up{job="..."} of the rules (BatchobsIngesterDown) and the dashboards (Pipeline health)
    names a job of prometheus/prometheus.yml: a renamed job would silence the alert."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    texts = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    texts += [t.target["expr"] for t in dashboards.targets() if t.kind == dashboards.PROMETHEUS_TYPE]
    texts += [dashboards.variable_query(v) for board in dashboards.load().values()
              for v in dashboards.query_variables(board)]
    named = {job for text in texts for job in re.findall(r'\bup\{[^}]*\bjob="([^"]+)"', text)}
    assert {"batchobs-ingester"} <= named  # what the alert and Pipeline health key on
    assert set() == named - jobs


def test_rules_are_valid() -> None:
    """promtool check rules, for the shipped rules and the unit tests' site overrides."""
    done = promtool("check", "rules", str(RULES), str(PROMETHEUS / "tests" / "stale_overrides.yml"))
    assert 0 == done.returncode, done.stdout + done.stderr


def test_rule_unit_tests_pass() -> None:
    """promtool test rules: each alert firing and not firing."""
    done = promtool("test", "rules", str(UNIT_TESTS))
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    """Each alert appears in the unit tests both with expected alerts and with none."""
    cases = [case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts() == fires
    assert alerts() == silent


def test_required_alerts_exist() -> None:
    """The alerts the issue asks for."""
    assert {"BatchobsTaskFailed", "BatchobsDagRunFailed", "BatchobsTaskStale", "BatchobsPushFailing",
            "BatchobsIngesterDown", "BatchobsIngestLagHigh", "BatchobsDeadLetters"} == alerts()
