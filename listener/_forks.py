"""Rebuilding, in a forked child, what the listener's threads held at the fork.

``fork()`` copies only the calling thread: a lock another thread held at that moment
stays held in the child forever, and a worker thread is gone while its queue still
says work is under way.  Airflow forks task runners, so every owner of a lock, queue
or thread registers here, and in the child each live owner rebuilds them before any
code of the child runs (``os.register_at_fork``, as OpenTelemetry's BatchProcessor does).
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "rebuild_after_fork"]


class ForkAware(Protocol):
    def after_fork_in_child(self) -> None:
        """Drop what the parent's threads held: new locks, empty queues, no worker."""


_OWNERS: weakref.WeakSet[ForkAware] = weakref.WeakSet()  # weak: a closed spool is not kept alive


def rebuild_after_fork(owner: ForkAware) -> None:
    """Have ``owner.after_fork_in_child()`` run in every child forked from now on."""
    _OWNERS.add(owner)


def _in_child() -> None:
    for owner in list(_OWNERS):
        owner.after_fork_in_child()


os.register_at_fork(after_in_child=_in_child)
