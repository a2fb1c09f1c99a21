"""The main job on the embedded default: warehouse up, history in, audit out.

Until the ingester and the listener land, the history is synthetic (built from
the event contract); every step after that is the real path: the embedded
server, migrations, an idempotent JSONEachRow insert through clickhouse-connect
and audit SQL with server-side parameters.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from listener.contract import encode

from . import embedded
from .connection import DATABASE, ClickHouseSettings, home_dir
from .migrate import apply, retention_days_from_env
from .synthetic import history

__all__ = ["run"]

AUDIT_SQL = """
SELECT dag_id, run_id, task_id, map_index,
       max(try_number) AS tries,
       argMax(state, (try_number, emitted_at)) AS final_state,
       round(sum(duration_s), 1) AS duration_s
FROM events FINAL
WHERE kind = 'task_instance' AND state != 'running' AND dag_id = {dag_id:String}
GROUP BY dag_id, run_id, task_id, map_index
ORDER BY run_id, task_id, map_index
"""

FAILURE_RATE_SQL = """
SELECT task_id,
       count() AS runs,
       countIf(final_state = 'failed') AS failures,
       round(failures / runs, 3) AS failure_rate,
       countIf(tries > 1 AND final_state = 'success') AS retried_then_succeeded
FROM ({audit})
GROUP BY task_id
ORDER BY failure_rate DESC, task_id
"""


def run(runs: int = 5) -> int:
    console = Console()
    url = os.environ.get("BATCHOBS_CLICKHOUSE_URL")
    server = None
    if url:
        settings = ClickHouseSettings.from_url(url)
    else:
        data_dir = home_dir() / "demo-warehouse"
        with console.status(f"starting the embedded warehouse on {data_dir}"):
            server = embedded.start(data_dir)
        settings = ClickHouseSettings.from_url(server.url + "/" + DATABASE)
    console.print(f"[bold]warehouse[/] {settings.url}")
    try:
        with console.status("migrating"):
            admin = settings.with_database("default").client()
            applied = apply(admin, settings.database, retention_days_from_env())
        console.print(f"[bold]migrations[/] applied {len(applied)} (idempotent)")
        client = settings.client()
        lines = [encode(e) for e in history(runs)]
        body = b"".join(lines)
        with console.status(f"inserting {len(lines)} events"):
            for _ in range(2):  # twice on purpose: a replay must not double anything
                client.raw_insert(
                    "events", insert_block=body, fmt="JSONEachRow",
                    settings={"insert_deduplication_token": hashlib.sha256(body).hexdigest()},
                )
        stored = client.query("SELECT count(), uniqExact(event_id) FROM events FINAL").result_rows[0]
        console.print(f"[bold]events[/] {stored[0]} rows, {stored[1]} distinct ids "
                      "(inserted twice, stored once)")
        params = {"dag_id": "etl_orders"}
        _print(console, "Per-run audit", client.query(AUDIT_SQL, parameters=params))
        _print(console, "Failure rate by task",
               client.query(FAILURE_RATE_SQL.format(audit=AUDIT_SQL), parameters=params))
    finally:
        if server is not None:
            server.stop()
    return 0


def _print(console: Console, title: str, result: Any) -> None:
    table = Table(title=title)
    for name in result.column_names:
        table.add_column(name)
    for row in result.result_rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)
