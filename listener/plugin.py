"""The Airflow listener plugin: thin hooks over events and gauges.

Each hook pulls plain values out of Airflow's objects (adapter), appends one
event to the spool (the only synchronous work), and hands the gauges to the
background pusher.  Every hook body is guarded: a failure is logged with "no
impact on the task" and never raised into Airflow.  The event and the gauges are
guarded apart: a spool that fails (a full disk, a value the contract refuses)
never costs the gauges, and a push that fails never costs the event.
"""

from __future__ import annotations

import atexit
import functools
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from airflow import __version__ as airflow_version
from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin
from sqlalchemy.orm import object_session

from . import adapter, contract
from .config import ConfigError, ListenerConfig
from .events import EventWriter
from .gauges import GroupKey, dag_run_gauges, task_gauges
from .pusher import GaugePusher
from .spool import Spool

__all__ = ["BatchobsListener", "BatchobsPlugin", "get_listener"]

log = logging.getLogger("batchobs.listener")
# Airflow 2 runs every task hook with an ORM TaskInstance in the task's own process.
# Airflow 3 runs them there with a RuntimeTaskInstance, and with an ORM one only in
# the API server (manual state changes).
AIRFLOW_VERSION = tuple(int(part) for part in airflow_version.split(".")[:2])
AIRFLOW_2 = AIRFLOW_VERSION < (3, 0)
# on_task_instance_skipped came with Airflow 3.1; before it (2.11, 3.0) a skipped
# task's gauges are set when its DAG run ends (the run's reconciliation).
SKIP_HOOK = AIRFLOW_VERSION >= (3, 1)
F = TypeVar("F", bound=Callable[..., None])


def _guarded(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # a hook must never raise into Airflow
            log.warning("batchobs: %s failed; no impact on the task", fn.__name__, exc_info=True)

    return wrapper  # type: ignore[return-value]


def _attempt(what: str, action: Callable[[], object]) -> None:
    """Run one path of a hook (the event, or the gauges); its failure stays its own."""
    try:
        action()
    except Exception:  # a hook must never raise into Airflow, nor one path stop the other
        log.warning("batchobs: %s failed; no impact on the task", what, exc_info=True)


class BatchobsListener:
    """Hook implementations; one instance per process."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        self.events = (
            EventWriter(Spool(config.spool_dir, config.hostname, config.spool_max_bytes, config.fsync == "always"),
                        config.instance, config.hostname)
            if config.events_enabled else None
        )
        self.pusher = (
            GaugePusher(config.pushgateway_url, config.push_timeout_s, config.max_groups)
            if config.pushing else None
        )
        atexit.register(self.close)

    # -- task instance hooks (task runner; API server for manual changes) -----
    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self._task("running", previous_state, task_instance, None)

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self._task("success", previous_state, task_instance, None)

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        # A failed try that will be retried arrives here with state up_for_retry.
        state = "up_for_retry" if adapter.state_name(task_instance.state) == "up_for_retry" else "failed"
        self._task(state, previous_state, task_instance, error)

    @hookimpl
    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        self._task("skipped", previous_state, task_instance, None)

    # -- DAG run hooks (scheduler) -------------------------------------------
    @hookimpl
    def on_dag_run_running(self, dag_run: Any, msg: str) -> None:
        self._dag_run("running", dag_run)

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        self._dag_run("success", dag_run)
        self._reconcile(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        self._dag_run("failed", dag_run)
        self._reconcile(dag_run)

    # -- the work ---------------------------------------------------------------
    @_guarded
    def _task(self, state: str, previous_state: Any, ti: Any, error: Any) -> None:
        now = datetime.now(timezone.utc)
        fields = adapter.task_fields(ti, state, previous_state, now)
        if (events := self.events) is not None:
            attrs = {} if _in_task_runner(ti) else {"recorded_by": "api-server"}
            _attempt("writing the task event", lambda: events.write(
                contract.TASK_INSTANCE, state=state, emitted_at=now, attrs=attrs,
                **fields, **adapter.error_fields(error)))
        self._push_task(state, fields)

    def _push_task(self, state: str, fields: dict[str, Any]) -> None:
        if (pusher := self.pusher) is not None:
            end = fields["end_date"]
            _attempt("pushing the task gauges", lambda: pusher.submit(
                GroupKey.task(self.config.job, fields["dag_id"], fields["task_id"], self.config.instance),
                task_gauges(state, fields["try_number"], fields["map_index"], fields["duration_s"],
                            end.timestamp() if end else None),
            ))

    @_guarded
    def _dag_run(self, state: str, dag_run: Any) -> None:
        now = datetime.now(timezone.utc)
        fields = adapter.dag_run_fields(dag_run, state, now)
        if (events := self.events) is not None:
            _attempt("writing the DAG-run event",
                     lambda: events.write(contract.DAG_RUN, state=state, emitted_at=now, **fields))
        if (pusher := self.pusher) is not None:
            end = fields["end_date"]
            _attempt("pushing the DAG-run gauges", lambda: pusher.submit(
                GroupKey.dag(self.config.job, fields["dag_id"], self.config.instance),
                dag_run_gauges(state, fields["duration_s"], end.timestamp() if end else None),
            ))

    @_guarded
    def _reconcile(self, dag_run: Any) -> None:
        """Record every task instance's final state as the metadata DB holds it.

        A task killed by SIGKILL or OOM, or one that never ran (upstream_failed),
        fires no task hook; the scheduler cannot see which hooks fired on other
        hosts, so it reports each terminal task instance once per run.  The
        deterministic event id makes a repeat of this harmless.  Where Airflow has no
        skip hook, this is also where a skipped task's gauges are set.
        """
        if self.events is None and (SKIP_HOOK or self.pusher is None):
            return
        now = datetime.now(timezone.utc)
        # In the scheduler the run is attached to the scheduler's session: read through
        # it, since a session of our own would commit, which the scheduler forbids in
        # its critical section (HA locks).  A detached run (dag.test()) lets Airflow
        # open a short session of its own.
        session = object_session(dag_run)
        instances = dag_run.get_task_instances(session=session) if session else dag_run.get_task_instances()
        for ti in instances:
            state = adapter.state_name(ti.state)
            if state not in contract.RECONCILED_STATES:
                continue
            fields = adapter.task_fields(ti, state, None, now)
            if ti.end_date is None:
                fields.update(end_date=None, duration_s=None)
            if (events := self.events) is not None:
                _attempt("writing a reconciled event", functools.partial(
                    events.write, contract.TASK_RECONCILED, state=state, emitted_at=now,
                    attrs={"recorded_by": "scheduler"}, **fields))
            if not SKIP_HOOK and state == "skipped":
                self._push_task(state, fields)

    def record_metric(self, ti: Any, name: str, value: float, unit: str, attrs: dict[str, str]) -> None:
        if self.events is None:
            return
        now = datetime.now(timezone.utc)
        fields = adapter.task_fields(ti, "running", None, now)
        fields.update(end_date=None, duration_s=None, previous_state="")
        self.events.write(contract.TASK_METRIC, emitted_at=now, metric_name=name, metric_value=float(value),
                          metric_unit=unit, attrs=attrs, **fields)

    def close(self) -> None:
        if self.pusher is not None:
            self.pusher.shutdown(self.config.exit_wait_s)
        if self.events is not None:
            self.events.spool.close()


def _in_task_runner(ti: Any) -> bool:
    return AIRFLOW_2 or type(ti).__name__ == "RuntimeTaskInstance"


def _build() -> BatchobsListener | None:
    try:
        config = ListenerConfig.from_env()
    except ConfigError as exc:
        log.error("batchobs: listener disabled: %s", exc)
        return None
    if not (config.events_enabled or config.gauges_enabled):
        return None
    return BatchobsListener(config)


_LISTENER = _build()


def get_listener() -> BatchobsListener | None:
    """This process's listener (None when switched off or misconfigured)."""
    return _LISTENER


class BatchobsPlugin(AirflowPlugin):
    name = "batchobs"
    listeners = [_LISTENER] if _LISTENER is not None else []
