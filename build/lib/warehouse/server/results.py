"""Query results as byte chunks for the response, and the X-ClickHouse-Summary header."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from .engine import EngineError

__all__ = ["OneChunk", "result_chunks", "summary_json"]


class OneChunk:
    """A complete result shaped like a chDB stream."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def fetch(self) -> Any:
        result, self._result = self._result, None
        return result

    def close(self) -> None:
        self._result = None


def result_chunks(first: Any, stream: Any, summary: dict[str, int]) -> Iterator[bytes]:
    chunk = first
    try:
        while chunk is not None:
            data = bytes(chunk.bytes())
            summary["result_bytes"] += len(data)
            summary["read_rows"] += chunk.rows_read()
            summary["read_bytes"] += chunk.bytes_read()
            yield data
            chunk = stream.fetch()
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - engine errors carry ClickHouse codes
        raise EngineError.from_exception(exc) from None
    finally:
        stream.close()


def summary_json(summary: dict[str, int], started: int) -> str:
    out = {k: str(v) for k, v in summary.items()}
    out["total_rows_to_read"] = str(summary["read_rows"])
    out["elapsed_ns"] = str(time.perf_counter_ns() - started)
    return json.dumps(out, separators=(",", ":"))
