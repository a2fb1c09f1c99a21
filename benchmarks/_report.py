"""Where benchmark scripts leave their figures: stdout and benchmarks/results/NAME.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(ordered: Sequence[float], q: float) -> float:
    """The value at rank ``q`` (0..1) of sorted values, nearest rank below."""
    return ordered[int(q * (len(ordered) - 1))]


def save(name: str, report: dict[str, Any]) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text)
