"""A warehouse client for the ingester, once the warehouse answers and holds its tables."""

from __future__ import annotations

import threading
from typing import Any

from listener.tables import SCHEMA_MIGRATIONS, WRITTEN

from .config import IngestConfig
from .errors import IngestError, WarehouseRejected
from .metrics import IngestMetrics
from .retry import Retry, Target, retry_kind

__all__ = ["check_schema", "connect_when_ready"]


def connect_when_ready(settings: Any, stop: threading.Event, log: Any, *, once: bool = False,
                       schema_version: int | None = None, metrics: IngestMetrics | None = None,
                       rejected_every_s: float = IngestConfig.rejected_retry_s) -> Any:
    """A client once the warehouse answers and holds the tables the ingester writes.

    Waits with backoff while it does not answer.  A refusal (wrong password, no such
    database, not migrated up to ``schema_version``) raises WarehouseRejected with
    ``once``; otherwise it is logged, with its fix, each time it is asked again (slowly).
    """
    target = Target.of(settings)

    def told(error: IngestError, wait_s: float) -> None:
        if metrics is not None:
            metrics.retries.labels(kind=retry_kind(error)).inc()
        if isinstance(error, WarehouseRejected):
            log.error(f"warehouse refused the ingester: {error}", retry_in_s=round(wait_s, 2))
        else:
            log.warning("warehouse not reachable yet", url=settings.url, detail=str(error)[:300],
                        wait_s=round(wait_s, 2))

    def connect() -> Any:
        # On loopback, compressing costs this process more CPU than it saves in copying.
        loopback = settings.host in ("127.0.0.1", "localhost", "::1")
        client = settings.client(compress=False if loopback else "lz4", autogenerate_session_id=False)
        check_schema(client, target, schema_version)
        return client

    retry = Retry(target, stop, told, rejected_every_s=rejected_every_s, give_up_rejected=once)
    try:
        return retry(connect)
    except InterruptedError:
        raise InterruptedError("stopped before the warehouse answered") from None


def check_schema(client: Any, target: Target, schema_version: int | None) -> None:
    """WarehouseRejected unless the database is migrated (to ``schema_version`` when given)."""
    needed = (SCHEMA_MIGRATIONS, *WRITTEN)
    found = {row[0] for row in client.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND has({names:Array(String)}, name)",
        parameters={"names": list(needed)}).result_rows}
    missing = [name for name in needed if name not in found]
    if missing:
        raise WarehouseRejected(f"database {target.database!r} at {target.url} has no {missing[0]} table: "
                                "run `batchobs warehouse migrate`")
    if schema_version is not None:
        applied = client.query(f"SELECT max(version) FROM {SCHEMA_MIGRATIONS}").result_rows[0][0]  # noqa: S608
        if int(applied or 0) < schema_version:
            raise WarehouseRejected(
                f"database {target.database!r} at {target.url} is migrated to version {applied or 0}, this "
                f"ingester needs {schema_version}: run `batchobs warehouse migrate`")

