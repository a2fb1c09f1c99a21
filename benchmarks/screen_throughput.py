"""The fast path's screen (ingest/screen.py ``looks_clean``): time per chunk of clean lines.

CPU of the ingester's own process, spent while the previous batch lands (the stages
overlap).  Best of ``--repeat`` over one chunk of ``--lines`` contract events.

Usage: python benchmarks/screen_throughput.py [--lines 10000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import save
from ingest.screen import looks_clean
from listener.contract import encode
from listener.testing import history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    lines: list[bytes] = []
    days = 1
    while len(lines) < args.lines:
        lines = [encode(e) for e in history(days)]
        days *= 2
    data = b"".join(lines[: args.lines])
    assert looks_clean(data, 1 << 20, args.lines)
    best = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        looks_clean(data, 1 << 20, args.lines)
        best = min(best, time.perf_counter() - started)
    save("screen_throughput", {"lines": args.lines, "bytes": len(data), "best_ms": round(best * 1000, 2),
                               "lines_per_s": round(args.lines / best)})


if __name__ == "__main__":
    main()
