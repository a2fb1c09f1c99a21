"""Telling good lines from bad ones.

The fast path never decodes a line into Python objects: whole-chunk byte scans and a
compiled decoder (msgspec, in C) of the columns where ClickHouse's reader is lenient
prove a chunk free of what ClickHouse would accept silently but the contract forbids
(invalid UTF-8, a BOM, CR, NUL bytes, lines over the limit, wrong JSON types).  The
table's constraints and ClickHouse's strict parser check everything else.  Only a chunk
that fails a check or an insert is split and decoded line by line against the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec

from listener.contract import COLUMNS, ContractError, decode, encode

__all__ = ["DeadLetter", "Line", "lines_of", "looks_clean", "validate"]

BOM = b"\xef\xbb\xbf"
RAW_LIMIT = 4096  # bytes of a bad line kept in dead_letters


# What ClickHouse's JSONEachRow parser accepts silently but the contract does not:
# quoted or overlong integers (ClickHouse wraps 70000 into a UInt16), quoted floats,
# timestamps in other forms or impossible dates, a lone low surrogate escape (stored as
# invalid UTF-8), invalid UTF-8 itself.  The screen refuses these: a typed, compiled
# decoder (msgspec, in C) of the columns where ClickHouse is lenient (it checks the
# escapes of every string, also those it skips), and byte scans.
# Where ClickHouse is strict it is left to refuse loudly, which sends the batch down the
# line-by-line path: UUIDs, unknown fields, the table's constraints (kinds, states, bounds).
# Text columns are strict in ClickHouse too under EVENT_SETTINGS (a number, bool, object or
# array is refused; a null is read as '', as the contract reads it; tests/test_ingest.py
# holds it to that), but the decoder reads them as text (or null) all the same: a string
# costs it less than a raw slice, and a wrong type takes the careful path one insert sooner.
# A chunk the screen refuses is not necessarily bad: it just takes the line-by-line
# path, where the contract decides.
_TEXT = ("String", "LowCardinality(String)", "UUID")


def _json_type(ch_type: str) -> Any:
    nullable = ch_type.startswith("Nullable(")
    base: Any = {
        "UInt16": Annotated[int, msgspec.Meta(ge=0, le=2**16 - 1)],
        "Int32": Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)],
        "Nullable(Float64)": float,
        "Map(String, String)": dict[str, str],
    }.get(ch_type, datetime if "DateTime64" in ch_type else str)
    return base | None if nullable else base


# Every column is named, so that a field the contract does not know is refused here:
# ClickHouse matches a field to a column regardless of case ("queued_At" fills queued_at)
# even with input_format_skip_unknown_fields=0.
_Row = msgspec.defstruct(
    "_Row", [(name, _json_type(ch_type) if ch_type not in _TEXT else str | None, msgspec.field(default=None))
             for name, ch_type in COLUMNS.items()],
    forbid_unknown_fields=True,
    gc=False,  # rows hold scalars, raw slices and a dict of strings: no cycles
)
_DECODER = msgspec.json.Decoder(_Row)


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

    def __post_init__(self) -> None:
        # A reason quoting an exception may hold lone surrogates, which no client can send:
        # the dead letter would be retried forever.  Escaped, it is stored.
        for name in ("source", "reason"):
            text = getattr(self, name)
            object.__setattr__(self, name, text.encode("utf-8", "backslashreplace").decode("utf-8"))

    @classmethod
    def of(cls, line: Line, reason: str, full_length: int | None = None) -> DeadLetter:
        return cls(line.source, line.position, reason, line.raw[:RAW_LIMIT],
                   full_length if full_length is not None else len(line.raw))


def looks_clean(data: bytes | bytearray, max_line: int, lines: int | None = None) -> bool:
    """True if ClickHouse may take ``data`` (complete lines) as it is: no line can be
    refused for its bytes alone, and every line is one object of the contract's JSON types.

    ``lines`` is the number of newlines in ``data`` when the caller has counted them.
    CR and NUL are searched for (ClickHouse would read them as whitespace).  The decoder
    reads the chunk a few megabytes at a time (cut at line ends) and refuses raw control
    characters inside strings, so
    every newline is whitespace between tokens; one between ``}`` and ``{`` can only
    separate two top-level objects.  With all newlines so placed and as many objects as
    lines, each line holds exactly one object: no empty line, no BOM at a line's start,
    no object spread over lines, no two on one.
    """
    if not (data.startswith(b"{") and data.endswith(b"}\n")) or b"\r" in data or b"\x00" in data:
        return False
    count = data.count(b"\n") if lines is None else lines
    if data.count(b"}\n{") != count - 1 or not _lines_within(data, max_line):
        return False
    try:
        return _objects(data) == count
    except Exception:  # noqa: BLE001 - DecodeError, UnicodeDecodeError or any surprise: the careful path decides
        return False


SCREEN_PIECE = 4 << 20  # bytes decoded at once: the decoder's objects stay bounded however large a batch


def _objects(data: bytes | bytearray) -> int:
    """The JSON objects in ``data`` (whose lines are complete), decoded piece by piece at line ends."""
    view, objects, start = memoryview(data), 0, 0
    ascii = data.isascii()  # then valid UTF-8 throughout (a scan of the high bits, ~4x faster than decoding)
    while start < len(data):
        end = len(data)
        if start + SCREEN_PIECE < end:
            end = data.rfind(b"\n", start, start + SCREEN_PIECE) + 1 or data.find(b"\n", start + SCREEN_PIECE) + 1
        piece = view[start:end]
        if not ascii:
            str(piece, "utf-8")  # UTF-8 everywhere, not only in the strings the decoder reads
        objects += len(_DECODER.decode_lines(piece))
        start = end
    return objects


def _lines_within(data: bytes | bytearray, max_line: int) -> bool:
    """No line of ``data`` is longer than ``max_line`` bytes (without its newline).

    Each step jumps to the last newline within reach of a line start: a few steps per
    chunk, however many lines it holds.
    """
    start = 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + max_line + 1)
        if end < 0:
            return False
        start = end + 1
    return True


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
    """The canonical JSONEachRow row of a good line, or why it is bad; never raises.

    Whatever the decoding of one line raises (a nesting too deep for the parser, a
    value no check foresaw) makes that line a dead letter naming the error: one line
    can never stop the lines after it.
    """
    try:
        return _validate(line, max_line)
    except Exception as exc:  # noqa: BLE001 - any failure on one line is that line's dead letter
        return DeadLetter.of(line, f"could not be decoded: {type(exc).__name__}: {str(exc)[:200]}")


def _validate(line: Line, max_line: int) -> bytes | DeadLetter:
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
