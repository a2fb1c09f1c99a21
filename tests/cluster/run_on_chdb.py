"""Run the cluster form of the migrations on chDB, as far as one process can hold a cluster.

Usage: ``python -m tests.cluster.run_on_chdb CONFIG DATA_DIR`` prints one JSON object.  Run in a
child process by tests/test_cluster.py: a chDB process that held Distributed tables can hang at
exit, so this one leaves with ``os._exit``.

What chDB cannot do is taken out of each statement, and nothing else: ``ON CLUSTER`` (chDB runs
no distributed DDL queue) and the replicated engines' Keeper arguments (chDB's replicated tables
stay read-only).  What runs is the rest as written: the local tables, the Distributed tables in
front of them (columns and sharding keys checked by the engine), the bookkeeping, the TTL, and
inserts through the Distributed tables as the ingester makes them, on a one-shard cluster
(``CONFIG``) whose shard is this process.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

ON_CLUSTER = re.compile(r" ON CLUSTER '[^']*'")
REPLICATED = re.compile(r"\bReplicated(?P<engine>\w*MergeTree)\('[^']*', '[^']*'(?P<sep>, )?")


def single_process_form(sql: str) -> str:
    """``sql`` without ON CLUSTER and with its replicated engines' Keeper arguments taken out."""
    return REPLICATED.sub(lambda m: f"{m['engine']}(", ON_CLUSTER.sub("", sql))


def main(config: str, data_dir: str) -> dict[str, Any]:
    import chdb

    from ingest.writer import DISTRIBUTED_SETTINGS, EVENT_SETTINGS
    from listener.contract import encode
    from listener.testing import history
    from warehouse.layout import ClusterLayout
    from warehouse.migrate import dry_run

    session = chdb.connect(f"file:{data_dir}?config-file={config}")
    plan = dry_run(None, "batchobs", 400, ClusterLayout("batchobs"))
    ran = []
    for step in plan.steps:
        sql = single_process_form(step.display())
        session.query(f"USE batchobs; {sql}" if step.in_database and "CREATE DATABASE" not in sql else sql)
        ran.append(sql)

    def insert(table: str, body: bytes, settings: dict[str, Any]) -> str:
        pairs = ", ".join(f"{k} = {v!r}" for k, v in settings.items())
        try:
            session.query(f"INSERT INTO batchobs.{table} SETTINGS {pairs} FORMAT JSONEachRow\n{body.decode()}")
        except Exception as exc:  # noqa: BLE001 - the refusal is the result
            return str(exc)
        return ""

    events = list(history(3))
    good = b"".join(encode(e) for e in events)
    settings = {**EVENT_SETTINGS, **DISTRIBUTED_SETTINGS, "insert_deduplication_token": "batch-1"}
    bad = encode(events[0]).replace(b'"schema_version":1', b'"schema_version":7')
    def scalar(sql: str) -> str:
        return str(session.query(sql, "TSVRaw")).strip()

    result = {
        "ran": ran,
        "engines": dict(line.split("\t") for line in scalar(
            "SELECT name, engine FROM system.tables WHERE database = 'batchobs' ORDER BY name").splitlines()),
        "refused": insert("events", good + bad, {**settings, "insert_deduplication_token": "batch-0"}),
        "rows_after_refusal": int(scalar("SELECT count() FROM batchobs.events")),
        "clean": insert("events", good, settings),
        "dead": insert("dead_letters", json.dumps({"received_at": "2026-11-01 00:00:00", "source": "f.jsonl",
                                                   "position": 1, "reason": "r", "raw": "x", "raw_bytes": 1}).encode(),
                       {**DISTRIBUTED_SETTINGS, "insert_deduplication_token": "dead-1"}),
        "events": len(events),
        "rows": int(scalar("SELECT count() FROM batchobs.events")),
        # the staging models' read: FINAL and PREWHERE through the Distributed table
        "task_events_read": int(scalar("SELECT count() FROM batchobs.events FINAL PREWHERE kind = 'task_instance'")),
        "task_events": sum(1 for e in events if e.kind == "task_instance"),
        "dead_letters": int(scalar("SELECT count() FROM batchobs.dead_letters")),
        "applied": scalar("SELECT arraySort(groupArray(version)) FROM batchobs.schema_migrations FINAL"),
        "local_engine": scalar("SELECT engine_full FROM system.tables WHERE database = 'batchobs' "
                               "AND name = 'events_local'"),
    }
    return result


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
    except BaseException as exc:  # noqa: BLE001 - reported, then the same quick exit
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    os._exit(0)
