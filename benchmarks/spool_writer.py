"""Append contract events to a spool at a steady rate, as many Airflow processes would.

Each event is a synthetic one (listener.testing, many DAGs) stamped with the
time it is written, so ``now - emitted_at`` in the warehouse is its freshness.

Usage: python benchmarks/spool_writer.py SPOOL_DIR COUNT [--rate EVENTS_PER_S] [--max-bytes N]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from listener.contract import Event, encode, replace
from listener.spool import Spool
from listener.testing import history


def fleet(count: int) -> Iterator[Event]:
    """``count`` distinct events: 30 daily runs of as many DAGs as it takes."""
    dag = 0
    while True:
        for event in history(30, dag_id=f"dag_{dag:05d}"):
            if count == 0:
                return
            count -= 1
            yield event
        dag += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spool_dir", type=Path)
    parser.add_argument("count", type=int)
    parser.add_argument("--rate", type=float, default=0, help="events per second (0: as fast as possible)")
    parser.add_argument("--max-bytes", type=int, default=4 << 20)
    args = parser.parse_args()
    spool = Spool(args.spool_dir, socket.gethostname(), max_bytes=args.max_bytes)
    started = time.monotonic()
    for i, event in enumerate(fleet(args.count)):
        if args.rate:
            due = started + i / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            event = replace(event, emitted_at=datetime.now(timezone.utc))
        spool.append(encode(event))
    spool.close()


if __name__ == "__main__":
    main()
