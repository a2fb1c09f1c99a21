"""Grafana's variable interpolation and the ClickHouse plugin's macros, as Grafana 11/12 and
grafana-clickhouse-datasource 4.20 apply them, so the tests can run each dashboard query as
Grafana would send it.

Sources (recorded in shared/reference/grafana-clickhouse-prometheus.md): the variable syntax and
formats of grafana/scenes (``VARIABLE_REGEX``, ``formatRegistry.ts``); the plugin's default
formatter and ``$__conditionalAll`` (``CHDatasource.ts``); the Prometheus data source's escaping
(``datasource.ts``, ``escaping.ts``); the backend macros of the plugin (``pkg/macros/macros.go``,
macropro v1.0.1); ``rangeutil.ts`` for the interval.  Order, as in Grafana: ``$__conditionalAll``,
then variables and Grafana's built-ins (frontend), then the plugin's macros (backend).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

ALL = "$__all"
Value = str | list[str]


class ExpandError(ValueError):
    """A query Grafana or the plugin would refuse (unknown format, bad macro arguments)."""


# ---------------------------------------------------------------- time range and interval

_RELATIVE = re.compile(r"^now(?:-(\d+)([smhdw]))?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class TimeRange:
    from_ms: int
    to_ms: int

    @classmethod
    def parse(cls, raw_from: str, raw_to: str, now_ms: int) -> TimeRange:
        """A dashboard's ``time`` (``now-6h`` .. ``now``) at ``now_ms``."""
        return cls(_relative_ms(raw_from, now_ms), _relative_ms(raw_to, now_ms))

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.from_ms / 1000, timezone.utc)

    @property
    def end(self) -> datetime:
        return datetime.fromtimestamp(self.to_ms / 1000, timezone.utc)


def _relative_ms(raw: str, now_ms: int) -> int:
    match = _RELATIVE.match(raw)
    if not match:
        raise ExpandError(f"time {raw!r}: only now and now-N[smhdw] are supported here")
    count, unit = match.groups()
    return now_ms - (int(count) * _UNIT_S[unit] * 1000 if count else 0)


# rangeutil.roundInterval: (upper bound exclusive, rounded value), both in ms
_ROUNDING = [
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
    (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000), (90000, 60000),
    (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000), (1500000, 1200000),
    (2700000, 1800000), (5400000, 3600000), (9000000, 7200000), (16200000, 10800000), (32400000, 21600000),
    (86400000, 43200000), (604800000, 86400000), (1814400000, 604800000), (3628800000, 2592000000),
]


def round_interval(ms: float) -> int:
    for bound, rounded in _ROUNDING:
        if ms < bound:
            return rounded
    return 31536000000


def interval_ms(time_range: TimeRange, max_data_points: int, low_limit: str = "") -> int:
    """rangeutil.calculateInterval: the range over the resolution, rounded, floored at the panel's
    ``interval`` (or the data source's ``timeInterval``)."""
    ms = round_interval((time_range.to_ms - time_range.from_ms) / max_data_points)
    return max(ms, duration_ms(low_limit)) if low_limit else ms


_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000, "w": 604800000, "y": 31536000000}


def duration_ms(text: str) -> int:
    match = _DURATION.match(text.strip().strip("'\""))
    if not match:
        raise ExpandError(f"duration {text!r}: expected a number and one of {', '.join(_UNIT_MS)}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def seconds_to_hms(seconds: float) -> str:
    """rangeutil.secondsToHms: the largest whole unit (``$__interval``)."""
    for unit, size in (("y", 31536000), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    if seconds >= 1:
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms" if seconds > 0 else "less than a millisecond"


# ---------------------------------------------------------------- variables (frontend)

@dataclass(frozen=True)
class Variable:
    """A dashboard variable's current value; ``options`` are every value its query returned."""

    name: str
    value: Value
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    options: tuple[str, ...] = ()

    @property
    def is_all(self) -> bool:
        return self.value == ALL or self.value == [ALL]

    def resolved(self) -> Value:
        """What formatters see: All without a custom allValue is every option (scenes)."""
        return list(self.options) if self.is_all else self.value


# ${var}, ${var.field}, ${var:fmt}, $var, [[var]], [[var:fmt]]  (scenes VARIABLE_REGEX)
VARIABLE_REGEX = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")

_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def _regex_escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _as_list(value: Value) -> list[str]:
    return value if isinstance(value, list) else [value]


def _regex_join(values: list[str]) -> str:
    escaped = [_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _percent(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.!~*'()")  # encodeURIComponent


FORMATS: dict[str, Callable[[Value, str], str]] = {
    "raw": lambda v, n: ",".join(_as_list(v)),
    "csv": lambda v, n: ",".join(_as_list(v)),
    "singlequote": lambda v, n: ",".join("'" + s.replace("'", "\\'") + "'" for s in _as_list(v)),
    "sqlstring": lambda v, n: ",".join(
        "'" + s.replace("'", "''").replace('"', '\\"') + "'" for s in _as_list(v)),
    "doublequote": lambda v, n: ",".join('"' + s.replace('"', '\\"') + '"' for s in _as_list(v)),
    "pipe": lambda v, n: "|".join(_as_list(v)),
    "regex": lambda v, n: _regex_join(_as_list(v)),
    "glob": lambda v, n: ("{" + ",".join(v) + "}" if isinstance(v, list) and len(v) > 1
                          else ",".join(_as_list(v))),
    "percentencode": lambda v, n: (",".join(_percent(s) for s in v) if isinstance(v, list)
                                   else _percent(v)),
    "queryparam": lambda v, n: "&".join(f"var-{n}={_percent(s)}" for s in _as_list(v)),
    "text": lambda v, n: " + ".join(_as_list(v)),
}

Formatter = Callable[[Value, Variable], str]


def clickhouse_format(value: Value, variable: Variable) -> str:
    """CHDatasource.format: an array becomes ``'a','b'`` (no escaping); anything else is raw."""
    if isinstance(value, list):
        return ",".join(f"'{v}'" for v in value)
    return value


def prometheus_format(value: Value, variable: Variable) -> str:
    """The Prometheus data source's interpolateQueryExpr."""
    if not variable.multi and not variable.include_all:
        text = value if isinstance(value, str) else ",".join(value)
        return text.replace("\\", "\\\\").replace("'", "\\\\'")
    return _regex_join(_as_list(value))


def uri_format(value: Value, variable: Variable) -> str:
    """Data links: the default format is encodeURI (``&``, ``=``, ``/``, ``?`` kept)."""
    return ",".join(urllib.parse.quote(v, safe="-_.!~*'();/?:@&=+$,#") for v in _as_list(value))


@dataclass
class Scope:
    """What a query is interpolated with: the dashboard's variables, the range and the interval."""

    variables: Mapping[str, Variable]
    time_range: TimeRange
    interval_ms: int = 60000
    scrape_interval_s: int = 15  # the Prometheus data source's timeInterval
    extra: Mapping[str, str] = field(default_factory=dict)  # data-link values: __data.fields.x

    def builtins(self) -> dict[str, str]:
        r = self.time_range
        range_s = (r.to_ms - r.from_ms) // 1000
        rate_s = max(self.interval_ms // 1000 + self.scrape_interval_s, 4 * self.scrape_interval_s)
        return {
            "__from": str(r.from_ms), "__to": str(r.to_ms),
            "__interval": seconds_to_hms(self.interval_ms / 1000), "__interval_ms": str(self.interval_ms),
            "__range": f"{range_s}s", "__range_s": str(range_s), "__range_ms": str(r.to_ms - r.from_ms),
            "__rate_interval": f"{rate_s}s", "__url_time_range": f"from={r.from_ms}&to={r.to_ms}",
        }


def interpolate(text: str, scope: Scope, default: Formatter) -> str:
    """templateSrv.replace: variables and built-ins; unknown names are left as they are."""
    builtins = scope.builtins()

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        path, fmt = match.group(5), match.group(3) or match.group(6)
        if path is not None:
            name = f"{name}.{path}"
        if name in scope.extra:
            variable = Variable(name, scope.extra[name])
            return _format(variable.value, variable, fmt, default)
        if name in builtins:
            return builtins[name]
        variable = scope.variables.get(name)  # type: ignore[assignment]
        if variable is None:
            return match.group(0)
        if variable.is_all and variable.all_value is not None and fmt not in ("text", "percentencode",
                                                                                "queryparam"):
            return variable.all_value
        return _format(variable.resolved(), variable, fmt, default)

    return VARIABLE_REGEX.sub(replace, text)


def _format(value: Value, variable: Variable, fmt: str | None, default: Formatter) -> str:
    if fmt is None:
        return default(value, variable)
    if fmt not in FORMATS:
        raise ExpandError(f"${{{variable.name}:{fmt}}}: unknown format; known: {', '.join(sorted(FORMATS))}")
    return FORMATS[fmt](value, variable.name)


# ---------------------------------------------------------------- $__conditionalAll (plugin frontend)

_CONDITIONAL_ALL = "$__conditionalAll("
_VAR_NAME = re.compile(r"(?<=\$\{)[\w\d]+(?=\})|(?<=\$)[\w\d]+")


def apply_conditional_all(sql: str, variables: Mapping[str, Variable]) -> str:
    """CHDatasource.applyConditionalAll: ``1=1`` when the variable is All or empty."""
    while (start := sql.rfind(_CONDITIONAL_ALL)) != -1:
        depth, i, params, last = 1, start + len(_CONDITIONAL_ALL), [], start + len(_CONDITIONAL_ALL)
        while depth and i < len(sql):
            ch = sql[i]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            if (ch == "," and depth == 1) or depth == 0:
                params.append(sql[last:i])
                last = i + 1
            i += 1
        if depth or len(params) != 2:
            raise ExpandError(f"$__conditionalAll needs two arguments: {sql[start:i]!r}")
        found = _VAR_NAME.search(params[1])
        variable = variables.get(found.group(0)) if found else None
        value = "" if variable is None else variable.value
        text = ",".join(value) if isinstance(value, list) else value
        phrase = "1=1" if text in ("", ALL) else params[0]
        sql = sql[:start] + phrase + sql[i:]
    return sql


# ---------------------------------------------------------------- macros (plugin backend)

def strip_comments(sql: str) -> str:
    """Comments become spaces of the same length; quoted text, identifiers and heredocs stay."""
    out, i, n = list(sql), 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            i += 1
            while i < n and sql[i] != ch:
                i += 2 if sql[i] == "\\" else 1
            i += 1
        elif ch == "$" and (heredoc := re.match(r"\$([A-Za-z0-9_]*)\$", sql[i:])):
            close = sql.find(heredoc.group(0), i + len(heredoc.group(0)))
            i = n if close == -1 else close + len(heredoc.group(0))
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end == -1 else end
            out[i:end] = " " * (end - i)
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end == -1 else end + 2
            out[i:end] = " " * (end - i)
            i = end
        else:
            i += 1
    return "".join(out)


def _to_datetime(ms: int) -> str:
    return f"toDateTime({ms // 1000})"


def _to_datetime64(ms: int) -> str:
    return f"fromUnixTimestamp64Milli({ms})"


def _to_date(ms: int) -> str:
    return "toDate('" + datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d") + "')"


def _args(name: str, args: Sequence[str], count: int) -> Sequence[str]:
    if len(args) != count:
        raise ExpandError(f"$__{name}: expected {count} argument(s), got {len(args)}")
    return args


MacroHandler = Callable[[TimeRange, int, Sequence[str]], str]


def _interval_s(interval: int) -> int:
    return max(interval // 1000, 1)


MACROS: dict[str, MacroHandler] = {
    "timeFilter": lambda r, iv, a: (f"{_args('timeFilter', a, 1)[0]} >= {_to_datetime(r.from_ms)} AND "
                                    f"{a[0]} <= {_to_datetime(r.to_ms)}"),
    "timeFilter_ms": lambda r, iv, a: (f"{_args('timeFilter_ms', a, 1)[0]} >= {_to_datetime64(r.from_ms)} AND "
                                       f"{a[0]} <= {_to_datetime64(r.to_ms)}"),
    "dateFilter": lambda r, iv, a: (f"{_args('dateFilter', a, 1)[0]} >= {_to_date(r.from_ms)} AND "
                                    f"{a[0]} <= {_to_date(r.to_ms)}"),
    "dateTimeFilter": lambda r, iv, a: _date_time_filter("dateTimeFilter", r, a),
    "dt": lambda r, iv, a: _date_time_filter("dt", r, a),
    "fromTime": lambda r, iv, a: _to_datetime(r.from_ms),
    "toTime": lambda r, iv, a: _to_datetime(r.to_ms),
    "fromTime_ms": lambda r, iv, a: _to_datetime64(r.from_ms),
    "toTime_ms": lambda r, iv, a: _to_datetime64(r.to_ms),
    "timeInterval": lambda r, iv, a: (f"toStartOfInterval(toDateTime({_args('timeInterval', a, 1)[0]}), "
                                      f"INTERVAL {_interval_s(iv)} second)"),
    "timeInterval_ms": lambda r, iv, a: (f"toStartOfInterval(toDateTime64({_args('timeInterval_ms', a, 1)[0]}, 3), "
                                         f"INTERVAL {max(iv, 1)} millisecond)"),
    "interval_s": lambda r, iv, a: str(_interval_s(iv)),
    "timeFrom": lambda r, iv, a: f"{_args('timeFrom', a, 1)[0]} >= {_to_datetime(r.from_ms)}",
    "timeTo": lambda r, iv, a: f"{_args('timeTo', a, 1)[0]} <= {_to_datetime(r.to_ms)}",
    "timeGroup": lambda r, iv, a: (f"toStartOfInterval(toDateTime({_args('timeGroup', a, 2)[0]}), "
                                   f"INTERVAL {duration_ms(a[1]) // 1000} second)"),
    "table": lambda r, iv, a: _no_context("table"),
    "column": lambda r, iv, a: _no_context("column"),
}


def _date_time_filter(name: str, r: TimeRange, args: Sequence[str]) -> str:
    date, time = _args(name, args, 2)
    return (f"({date} >= {_to_date(r.from_ms)} AND {date} <= {_to_date(r.to_ms)}) AND "
            f"({time} >= {_to_datetime(r.from_ms)} AND {time} <= {_to_datetime(r.to_ms)})")


def _no_context(name: str) -> str:
    raise ExpandError(f"$__{name}: no {name} name in query context (the plugin never sets one)")


_NAMES = sorted(MACROS, key=len, reverse=True)


def _unquoted(text: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """(index, character, parenthesis depth after it) of each character outside quotes."""
    depth, quote = 0, ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        else:
            depth += (ch == "(") - (ch == ")")
            yield i, ch, depth


def _split_args(text: str) -> list[str]:
    args, last = [], 0
    for i, ch, depth in _unquoted(text):
        if ch == "," and depth == 0:
            args.append(text[last:i].strip())
            last = i + 1
    tail = text[last:].strip()
    return [*args, tail] if args or tail else []


def _closing(sql: str, open_at: int) -> int:
    """Index of the parenthesis closing the one at ``open_at``, or -1."""
    return next((i for i, ch, depth in _unquoted(sql, open_at) if ch == ")" and depth == 0), -1)


def expand_macros(sql: str, time_range: TimeRange, interval: int) -> str:
    """The plugin backend (v4.20, macropro): comments blanked, then macros expanded, the last
    occurrence first, so a macro inside another's arguments is expanded before it."""
    sql = strip_comments(sql)
    while True:
        found = None
        for match in re.finditer(r"\$__", sql):
            for name in _NAMES:
                end = match.start() + 3 + len(name)
                if sql.startswith(name, match.start() + 3) and not re.match(r"[_a-zA-Z0-9]", sql[end:end + 1]):
                    found = (match.start(), name)
                    break
        if found is None:
            return sql
        start, name = found
        end = start + 3 + len(name)
        args: list[str] = []
        if sql[end:end + 1] == "(" and (close := _closing(sql, end)) != -1:
            args, end = _split_args(sql[end + 1:close]), close + 1
        sql = sql[:start] + MACROS[name](time_range, interval, args) + sql[end:]


# ---------------------------------------------------------------- the whole pipeline

def clickhouse_sql(raw_sql: str, scope: Scope) -> str:
    """What the ClickHouse plugin sends for a target's ``rawSql``."""
    sql = apply_conditional_all(raw_sql, scope.variables)
    sql = interpolate(sql, scope, clickhouse_format)
    return expand_macros(sql, scope.time_range, scope.interval_ms)


def promql(expr: str, scope: Scope) -> str:
    """What the Prometheus data source sends for a target's ``expr``."""
    return interpolate(expr, scope, prometheus_format)


def link_url(url: str, scope: Scope) -> str:
    """A data link's URL as Grafana renders it."""
    return interpolate(url, scope, uri_format)
