"""ClickHouse's own one-statement load of a JSONEachRow file, for comparison.

The embedded server refuses ``file()`` to its clients (README, Security), so the
engine's own load runs here: the same chDB engine in a process of its own, on a data
directory of its own, into a table made by the same statements, with the ingester's
JSON settings: ``INSERT INTO events SELECT * FROM file(..., JSONEachRow, <contract
columns>)``.  Prints {"seconds", "cpu_s", "rows"} of the INSERT alone (not chDB's import).

Usage: python benchmarks/native_load.py DATA_DIR JSONL_FILE DDL_JSON
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.writer import EVENT_SETTINGS
from listener.contract import COLUMNS


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    data_dir, source, ddl_file = sys.argv[1:4]
    import chdb

    conn = chdb.connect(data_dir)
    conn.query("CREATE DATABASE IF NOT EXISTS batchobs")
    conn.query("USE batchobs")
    for statement in json.loads(Path(ddl_file).read_text()):
        conn.query(statement)
    conn.query("SET " + ", ".join(f"{name} = {value}" for name, value in EVENT_SETTINGS.items()
                                  if isinstance(value, int)) + ", date_time_input_format = 'basic'")
    structure = ", ".join(f"{name} {ch_type}" for name, ch_type in COLUMNS.items()).replace("'", "\\'")
    cpu, started = _cpu(), time.perf_counter()
    conn.query(f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT * FROM file('{source}', JSONEachRow, "
               f"'{structure}')")
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    rows = int(bytes(conn.query("SELECT count() FROM events", "TabSeparated").bytes()))
    conn.close()
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "rows": rows}))


if __name__ == "__main__":
    main()
