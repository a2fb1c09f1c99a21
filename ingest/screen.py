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


def _keys(predicate: str) -> bytes:
    return b"|".join(re.escape(name).encode() for name, ch_type in COLUMNS.items() if predicate in ch_type)


# What ClickHouse's JSONEachRow parser accepts but the contract does not: quoted or
# overlong integers (ClickHouse wraps 70000 into a UInt16 silently), quoted floats,
# timestamps in any but the contract's own form, escaped lone surrogates and null
# attribute values.  (Not caught: an impossible date in the contract's own form,
# "2026-02-30 00:00:00", which ClickHouse rolls over and the contract refuses.)  A
# value that could be any of these sends the chunk to the line-by-line path.
_SUSPECT = re.compile(
    rb'"(?:' + _keys("UInt16") + rb')"\s*:\s*(?!null\b|-?\d{1,4}\s*[,}])'
    rb'|"(?:' + _keys("Int32") + rb')"\s*:\s*(?!null\b|-?\d{1,9}\s*[,}])'
    rb'|"(?:' + _keys("Float64") + rb')"\s*:\s*"'
    rb'|"(?:' + _keys("DateTime64") + rb')"\s*:\s*'
    rb'(?!null\b|"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?")'
    rb'|\\u[dD][89abcdefABCDEF]'
    rb'|"attrs"\s*:\s*\{[^\n]*?:\s*null\s*[,}]'  # ClickHouse reads a null map value as ''
)


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
    if b"\r" in data or b"\x00" in data or BOM in data or b"\n\n" in data or data.startswith(b"\n"):
        return False
    if _SUSPECT.search(data):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return max(map(len, data.split(b"\n"))) <= max_line


def lines_of(source: str, start: int, data: bytes) -> list[Line]:
    out, position = [], start
    for raw in data.splitlines(keepends=True):
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
