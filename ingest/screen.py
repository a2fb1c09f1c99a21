"""Telling good lines from bad ones.

The fast path never looks at single lines: a few whole-chunk byte scans (in C)
prove a chunk is free of what ClickHouse would accept silently but the contract
forbids (invalid UTF-8, a BOM, CR, NUL bytes, lines over the limit).  Everything
else the table's constraints and ClickHouse's parser check.  Only a chunk that
fails a scan or an insert is split and decoded line by line against the contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from listener.contract import COLUMNS, ContractError, decode, encode

__all__ = ["DeadLetter", "Line", "lines_of", "looks_clean", "validate"]

BOM = b"\xef\xbb\xbf"
RAW_LIMIT = 4096  # bytes of a bad line kept in dead_letters


def _names(predicate: str) -> list[str]:
    return [name for name, ch_type in COLUMNS.items() if predicate in ch_type]


# What ClickHouse's JSONEachRow parser accepts but the contract does not: quoted or
# overlong integers (ClickHouse wraps 70000 into a UInt16 silently), quoted floats,
# timestamps in any but the contract's own form, escaped keys or lone surrogates, and
# null attribute values.  (Not caught: an impossible date in the contract's own form,
# "2026-02-30 00:00:00", which ClickHouse rolls over and the contract refuses.)
#
# The encoder writes every column, in COLUMNS order, with no spaces.  So each run of
# adjacent numeric / timestamp columns is one pattern of literal keys and strict
# values, and a clean chunk has exactly one match of each per line.  A line in any
# other shape (a foreign writer's key order, spaces, escapes) is not "clean": it only
# takes the slow path, where the contract itself decides.
_TS = rb'"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?"'
_STRICT = {"UInt16": rb"-?\d{1,4}", "Int32": rb"-?\d{1,9}", "Nullable(Float64)": rb"(?:null|-?[\d.eE+-]+)",
           "DateTime64(6, 'UTC')": _TS, "Nullable(DateTime64(6, 'UTC'))": rb"(?:null|" + _TS + rb")"}


def _runs() -> list[re.Pattern[bytes]]:
    runs: list[list[str]] = [[]]
    for name, ch_type in COLUMNS.items():
        if ch_type in _STRICT:
            runs[-1].append(name)
        elif runs[-1]:
            runs.append([])
    return [re.compile(b",".join(re.escape(f'"{n}":'.encode()) + _STRICT[COLUMNS[n]] for n in run) + rb"[,}]")
            for run in runs if run]


_CANONICAL_RUNS = _runs()
_NULL_ATTR = re.compile(rb'"attrs":\{[^\n]*?:null[,}]')  # ClickHouse reads a null map value as ''


@dataclass(frozen=True)
class Line:
    source: str
    position: int  # byte offset of the line in its spool file
    raw: bytes  # with its trailing newline (absent only for a truncated tail)


@dataclass(frozen=True)
class DeadLetter:
    source: str
    position: int
    reason: str
    raw: bytes  # bounded to RAW_LIMIT
    raw_bytes: int  # the line's full length

    @classmethod
    def of(cls, line: Line, reason: str, full_length: int | None = None) -> DeadLetter:
        return cls(line.source, line.position, reason, line.raw[:RAW_LIMIT],
                   full_length if full_length is not None else len(line.raw))


def looks_clean(data: bytes, max_line: int) -> bool:
    """True if no line of ``data`` can be refused for its bytes alone."""
    # (Spaces around a screened key need no scan: such a line lacks its canonical run
    # below, or repeats the key, which ClickHouse refuses.)
    if any(marker in data for marker in (b"\r", b"\x00", BOM, b"\n\n", b"\\u")):
        return False
    if data.startswith(b"\n"):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    lines = data.count(b"\n")
    if max(map(len, data.split(b"\n"))) > max_line:
        return False
    if any(len(run.findall(data)) != lines for run in _CANONICAL_RUNS):
        return False
    return not _NULL_ATTR.search(data)


def lines_of(source: str, start: int, data: bytes) -> list[Line]:
    """The lines of ``data`` (from byte ``start`` of ``source``); only LF ends a line, never CR."""
    out, position = [], start
    while position - start < len(data):
        end = data.find(b"\n", position - start)
        raw = data[position - start :] if end < 0 else data[position - start : end + 1]
        out.append(Line(source, position, raw))
        position += len(raw)
    return out


def validate(line: Line, max_line: int) -> bytes | DeadLetter:
    """The canonical JSONEachRow row of a good line, or why it is bad."""
    raw = line.raw
    if not raw.endswith(b"\n"):
        return DeadLetter.of(line, "truncated line: its writer stopped before the newline")
    body = raw[:-1]
    if len(body) > max_line:
        return DeadLetter.of(line, f"line longer than {max_line} bytes")
    if body.endswith(b"\r"):
        return DeadLetter.of(line, "CRLF line ending (the spool writes LF only)")
    if body.startswith(BOM):
        return DeadLetter.of(line, "byte order mark at the start of the line")
    if b"\x00" in body:
        return DeadLetter.of(line, "NUL byte in the line")
    if not body.strip():
        return DeadLetter.of(line, "empty line")
    try:
        return encode(decode(body))
    except ContractError as exc:
        return DeadLetter.of(line, f"contract: {exc}")
    except UnicodeEncodeError:
        return DeadLetter.of(line, "contract: a string holds a lone surrogate (not encodable as UTF-8)")
