"""``batchobs gateway prune``: remove Pushgateway groups of DAGs and tasks that are gone.

The listener's gauges keep each task's latest state in the Pushgateway until it is replaced, so
a DAG or task removed from Airflow would show (and a failed one alert) forever.  A group of this
instance and job is pruned when its DAG, or its task, is not among the ids Airflow knows, or when
it was not pushed for ``max_age_days``.  Dry run unless ``apply``.

Which ids exist comes from the operator: a JSON file ``{"dag_id": ["task_id", ...]}``, or a DAGs
folder parsed with Airflow's DagBag (what the maintenance DAG in examples/ does from inside
Airflow, with no credentials to hand out).  A folder with import errors is refused: a DAG that
fails to import is not a deleted DAG, and its groups must keep alerting.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import delete_from_gateway

__all__ = ["GatewayError", "Group", "Pruned", "known_from_dags_folder", "known_from_file", "list_groups", "prune"]

Known = Mapping[str, frozenset[str]]  # dag_id -> task_ids


class GatewayError(RuntimeError):
    """A prune that cannot be done safely; the message names the cause and the fix."""


@dataclass(frozen=True)
class Group:
    """One Pushgateway group: its labels (job and grouping key) and its last successful push."""

    labels: Mapping[str, str]
    pushed_at: float | None

    def label(self, name: str) -> str:
        return self.labels.get(name, "")

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))


@dataclass(frozen=True)
class Pruned:
    group: Group
    reason: str
    deleted: bool


def list_groups(gateway_url: str, timeout_s: float = 10.0) -> list[Group]:
    """Every group the Pushgateway holds (its /api/v1/metrics)."""
    url = gateway_url.rstrip("/") + "/api/v1/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - the operator's gateway URL
            body = json.load(resp)
    except (OSError, ValueError) as exc:
        raise GatewayError(f"cannot read the Pushgateway's groups from {url}: {exc}; check --gateway") from None
    groups = []
    for entry in body.get("data", []):
        pushed = entry.get("push_time_seconds", {}).get("metrics", [])
        groups.append(Group(dict(entry["labels"]), float(pushed[0]["value"]) if pushed else None))
    return groups


def why_prune(group: Group, known: Known | None, max_age_days: float | None, now: float) -> str:
    """The reason to prune ``group``, or ``""`` to keep it."""
    dag_id, task_id = group.label("dag_id"), group.label("task_id")
    if known is not None and dag_id:
        if dag_id not in known:
            return f"DAG {dag_id} no longer exists"
        if task_id and task_id not in known[dag_id]:
            return f"task {dag_id}.{task_id} no longer exists"
    if max_age_days is not None and group.pushed_at is not None and now - group.pushed_at > max_age_days * 86400:
        return f"not pushed for {(now - group.pushed_at) / 86400:.1f} days (limit {max_age_days:g})"
    return ""


def prune(gateway_url: str, *, job: str, instance: str, known: Known | None = None,
          max_age_days: float | None = None, apply: bool = False, now: float | None = None,
          timeout_s: float = 10.0) -> list[Pruned]:
    """The groups of ``job`` and ``instance`` to prune, deleted when ``apply``."""
    if known is None and max_age_days is None:
        raise GatewayError("nothing to decide on: give the DAGs that exist (--dags-folder or --known-tasks) "
                           "and/or --max-age-days")
    if known is not None and not known:
        raise GatewayError("no DAGs are known: refusing to prune every group (is the DAGs folder right?)")
    if max_age_days is not None and max_age_days <= 0:
        raise GatewayError(f"--max-age-days {max_age_days:g}: expected a number of days above 0")
    now = time.time() if now is None else now
    out = []
    for group in list_groups(gateway_url, timeout_s):
        if group.label("job") != job or group.label("instance") != instance:
            continue
        reason = why_prune(group, known, max_age_days, now)
        if not reason:
            continue
        if apply:
            grouping = {k: v for k, v in group.labels.items() if k != "job"}
            try:
                delete_from_gateway(gateway_url, job=job, grouping_key=grouping, timeout=timeout_s)
            except (OSError, urllib.error.URLError) as exc:
                raise GatewayError(f"deleting {group.describe()} failed: {exc}") from None
        out.append(Pruned(group, reason, apply))
    return out


def known_from_file(path: Path) -> dict[str, frozenset[str]]:
    """``{"dag_id": ["task_id", ...]}`` from a JSON file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GatewayError(f"--known-tasks {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
            isinstance(tasks, list) and all(isinstance(t, str) for t in tasks) for tasks in data.values()):
        raise GatewayError(f'--known-tasks {path}: expected {{"dag_id": ["task_id", ...]}}')
    return {str(dag): frozenset(tasks) for dag, tasks in data.items()}


def known_from_dags_folder(folder: Path) -> dict[str, frozenset[str]]:
    """The DAGs and tasks defined in ``folder``, parsed by Airflow's own DagBag."""
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3
    except ImportError:  # Airflow 2
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]

    bag = DagBag(str(folder))
    if bag.import_errors:
        files = ", ".join(sorted(bag.import_errors))
        raise GatewayError(f"DAG files in {folder} fail to import ({files}): fix them first; their DAGs would "
                           "look deleted")
    return {dag_id: frozenset(task.task_id for task in dag.tasks) for dag_id, dag in bag.dags.items()}
