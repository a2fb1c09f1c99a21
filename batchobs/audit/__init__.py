"""``batchobs audit``: named, parameterized run-level audit queries.

``ask()`` binds a question's parameters (never formats them into SQL), picks the
source (the dbt marts when built, else raw events) and returns the rows;
``render()`` writes them as a table, JSON or CSV.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import IO, Any

from warehouse.errors import WarehouseError

from .questions import QUESTIONS, Param, Question
from .sources import EVENTS, MARTS, MODELS

__all__ = ["QUESTIONS", "Answer", "AuditError", "Param", "Question", "ask", "marts_built", "render"]

DEFAULT_WINDOW = timedelta(days=7)


class AuditError(WarehouseError, ValueError):
    """A question asked with a missing or malformed parameter."""


@dataclass(frozen=True)
class Answer:
    question: str
    source: str  # "marts" or "events"
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def marts_built(client: Any, marts: str) -> bool:
    """Whether dbt has built the models the audit reads, in database ``marts``."""
    found = client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND has({models:Array(String)}, name)",
        parameters={"db": marts, "models": list(MODELS.values())},
    ).result_rows[0][0]
    return int(found) == len(MODELS)


def ask(client: Any, name: str, params: Mapping[str, Any], marts: str, source: str = "auto",
        now: datetime | None = None) -> Answer:
    """Ask question ``name`` with ``params``; ``source`` is auto, marts or events."""
    question = QUESTIONS.get(name)
    if question is None:
        raise AuditError(f"unknown question {name!r}; one of {', '.join(QUESTIONS)}")
    bound = _bind(question, params, now or datetime.now(timezone.utc))
    if source == "auto":
        source = "marts" if marts_built(client, marts) else "events"
    if source == "marts":
        relations, bound["marts"] = MARTS, marts
    elif source == "events":
        relations = EVENTS
    else:
        raise AuditError(f"source must be auto, marts or events, not {source!r}")
    sql = f"WITH {relations} {question.sql}"
    result = client.query(sql, parameters=bound)
    columns = tuple(result.column_names)
    if not columns:  # over HTTP an empty result comes without a block, so without names
        columns = tuple(row[0] for row in client.query(f"DESCRIBE ({sql})", parameters=bound).result_rows)
    return Answer(name, source, columns, list(result.result_rows))


def _bind(question: Question, given: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    names = {p.name for p in question.params}
    unknown = set(k for k, v in given.items() if v is not None) - names
    if unknown:
        raise AuditError(f"{question.name}: unexpected parameter(s) {', '.join(sorted(unknown))}")
    bound: dict[str, Any] = {}
    for param in question.params:
        value = given.get(param.name)
        if value is None:
            value = param.default
        if value is None and param.required:
            raise AuditError(f"{question.name}: --{param.name.replace('_', '-')} is required ({param.help})")
        bound[param.name] = value if value is None else _coerce(param, value)
    if "until" in names:
        bound["until"] = bound["until"] or now.astimezone(timezone.utc).date() + timedelta(days=1)
        bound["since"] = bound["since"] or bound["until"] - DEFAULT_WINDOW
        if bound["since"] >= bound["until"]:
            raise AuditError(f"{question.name}: --since must be before --until")
    return bound


def _coerce(param: Param, value: Any) -> Any:
    """A parameter's value as the Python type its ClickHouse type binds from."""
    try:
        if param.type == "Date":
            return value if isinstance(value, date) else date.fromisoformat(str(value))
        if param.type == "UInt32":
            number = int(value)
            if not 0 <= number < 2**32:
                raise ValueError("out of range")
            return number
        if param.type == "Float64":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"--{param.name.replace('_', '-')}: {value!r} is not a valid {param.type} ({exc})") from None


def render(answer: Answer, fmt: str, out: IO[str]) -> None:
    """Write the answer as ``table``, ``json`` (a list of objects) or ``csv``."""
    if fmt == "json":
        records = [dict(zip(answer.columns, (_plain(v) for v in row), strict=True)) for row in answer.rows]
        json.dump(records, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(answer.columns)
        writer.writerows([_text(v) for v in row] for row in answer.rows)
    elif fmt == "table":
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{answer.question} (from {answer.source})")
        for column in answer.columns:
            table.add_column(column)
        for row in answer.rows:
            table.add_row(*(_text(v) for v in row))
        # Drawn into a buffer: rich handles a closed pipe itself (exit 1), the CLI does it for all formats.
        text = io.StringIO()
        Console(file=text, width=200, force_terminal=out.isatty()).print(table)
        out.write(text.getvalue())
        if not answer.rows:
            out.write("no rows\n")
    else:
        raise AuditError(f"format must be table, json or csv, not {fmt!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:  # every timestamp in the schema is UTC
        return value.replace(tzinfo=timezone.utc).isoformat()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    plain = _plain(value)
    return plain if isinstance(plain, str) else str(plain)
