"""Pushes gauges off the task's critical path.

One daemon worker per process, woken by new work.  Pending pushes are coalesced
per group (only the newest registry of a group is pushed), each push has a
timeout, a failed push is retried with backoff unless a newer state replaced it,
and at process exit the worker gets a bounded wait; whatever is still pending
then is abandoned and counted.  A budget caps the number of distinct groups.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - imported before any worker exists; see below
import logging
import os
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, pushadd_to_gateway

from ._forks import rebuild_after_fork
from .gauges import GroupKey

__all__ = ["GaugePusher"]

log = logging.getLogger("batchobs.listener")

# A push imports the IDNA codec on first use (socket.getaddrinfo encodes the host name).
# A child forked while the worker was inside that import would wait on the module's import
# lock forever, so it is imported with this module, before there is any worker thread.
# tests/test_listener_forks.py checks that a push imports nothing new.

PushFn = Callable[[str, str, CollectorRegistry, dict[str, str], float], None]


def _pushadd(url: str, job: str, registry: CollectorRegistry, labels: dict[str, str], timeout: float) -> None:
    pushadd_to_gateway(url, job=job, registry=registry, grouping_key=labels, timeout=timeout)


class GaugePusher:
    def __init__(self, url: str, timeout_s: float = 2.0, max_groups: int = 10_000,
                 push: PushFn = _pushadd, max_backoff_s: float = 30.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_groups < 1:
            raise ValueError(f"max_groups must be at least 1, got {max_groups}")
        self._url = url
        self._timeout = timeout_s
        self._max_groups = max_groups
        self._push = push
        self._max_backoff = max_backoff_s
        self._cond = threading.Condition()
        self._pending: dict[GroupKey, CollectorRegistry] = {}
        self._known: set[GroupKey] = set()
        self._worker: threading.Thread | None = None  # started on the first submit
        self._pid = os.getpid()
        self._stopping = False
        self._in_flight = 0
        self.pushed = 0
        self.failed = 0
        self.refused = 0
        self.abandoned = 0
        rebuild_after_fork(self)

    def submit(self, key: GroupKey, registry: CollectorRegistry) -> bool:
        """Queue the newest state of a group; False if the group budget refused it."""
        with self._cond:
            if key not in self._known:
                if len(self._known) >= self._max_groups:
                    self.refused += 1
                    if self.refused == 1:
                        log.warning("batchobs: more than %d Pushgateway groups in this process; "
                                    "pushes for new groups are refused (BATCHOBS_MAX_GROUPS)", self._max_groups)
                    return False
                self._known.add(key)
            self._pending[key] = registry
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="batchobs-pusher", daemon=True)
                self._worker.start()
            self._cond.notify()
        return True

    def after_fork_in_child(self) -> None:
        # Threads do not survive fork, and the parent's worker may have held the condition's
        # lock: a child starts with its own lock, queue and (on its first submit) worker.
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._pending, self._known, self._worker = {}, set(), None
        self._stopping, self._in_flight = False, 0
        self.pushed = self.failed = self.refused = self.abandoned = 0

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                if backoff:
                    self._cond.wait_for(lambda: self._stopping, timeout=backoff)
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                key = next(iter(self._pending))
                registry = self._pending.pop(key)
                self._in_flight = 1
            ok = False
            try:
                self._push(self._url, key.job, registry, dict(key.labels), self._timeout)
                ok = True
            except Exception as exc:  # noqa: BLE001 - a push failure must never reach the task
                log.debug("batchobs: push to the Pushgateway failed: %s", type(exc).__name__)
            with self._cond:
                self._in_flight = 0
                if ok:
                    self.pushed += 1
                    backoff = 0.0
                else:
                    self.failed += 1
                    backoff = min(self._max_backoff, max(0.1, backoff * 2))
                    self._pending.setdefault(key, registry)  # a newer state of the group wins
                self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every pending push; True if all were pushed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._in_flight,
                                       timeout=max(0.0, deadline - time.monotonic()))

    def shutdown(self, timeout_s: float) -> None:
        """Bounded wait for pending pushes, then abandon and count the rest."""
        if self._pid != os.getpid() or self._worker is None or self._stopping:
            return  # not ours (forked), never started, or already shut down
        self.flush(timeout_s)
        with self._cond:
            self._stopping = True
            self.abandoned += len(self._pending) + self._in_flight
            self._pending.clear()
            self._cond.notify_all()
        if self.abandoned:
            log.warning("batchobs: %d gauge push(es) abandoned at exit after %.1fs", self.abandoned, timeout_s)
