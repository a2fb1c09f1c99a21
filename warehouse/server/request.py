"""Reading a request: the body (sized or chunked, decompressed) and where its statement ends.

An INSERT with inline data is routed by its head alone (``INSERT ... FORMAT x``), read
incrementally from the stream; any other statement is read whole, up to a bound.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import codecs, sqlscan
from .engine import (
    CANNOT_DECOMPRESS,
    SYNTAX_ERROR,
    TOO_MANY_BYTES,
    UNKNOWN_FORMAT,
    EngineConnection,
    EngineError,
    quote,
)

__all__ = ["MAX_QUERY_BYTES", "READ_CHUNK", "Body", "BodyLimits", "decoded", "first_keyword", "insert_head",
           "is_utf8", "land_insert", "read_head", "read_rest"]

MAX_QUERY_BYTES = 16 << 20  # a statement without inline data
READ_CHUNK = 1 << 20  # body read size: large appends are what make chDB inserts fast


class Body:
    """The request body as an iterator that knows whether it was read to the end."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.exhausted = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            self.exhausted = True
            raise


@dataclass(frozen=True)
class BodyLimits:
    """Bounds on one request body, after decompression."""

    max_bytes: int = 1 << 30  # an insert body; a statement alone is bounded by MAX_QUERY_BYTES
    max_ratio: int = 1000  # decompressed / compressed; lz4 cannot exceed ~255, gzip ~1030
    ratio_floor: int = 16 << 20  # small bodies may compress as well as they like


def decoded(raw: Iterator[bytes], encoding: str | None, limits: BodyLimits) -> Iterator[bytes]:
    """The body decompressed in bounded pieces, refused once it passes a limit."""
    if encoding is None:
        total = 0
        for chunk in raw:
            total += len(chunk)
            _check_size(total, limits)
            yield chunk
        return
    source = codecs.RawBody(raw)
    stream = codecs.reader(encoding, source)
    total = 0
    while True:
        try:
            out = stream.read(READ_CHUNK)
        except (EngineError, ConnectionError, TimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001 - each codec raises its own type
            raise EngineError.of(CANNOT_DECOMPRESS, f"Cannot decompress request body: {exc}") from None
        if not out:
            return
        total += len(out)
        _check_size(total, limits)
        if total > limits.ratio_floor and total > limits.max_ratio * max(source.consumed, 1):
            raise EngineError.of(
                CANNOT_DECOMPRESS,
                f"Request body decompresses more than {limits.max_ratio} times its size; "
                "send it uncompressed or split it",
            )
        yield out


def _check_size(total: int, limits: BodyLimits) -> None:
    if total > limits.max_bytes:
        raise EngineError.of(TOO_MANY_BYTES, f"Request body exceeds {limits.max_bytes} bytes; split the insert")


def read_head(url_query: bytes, body: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """The URL query (if any) joined with the first body chunk, and the rest of the body."""
    first = next(body, b"")
    if url_query and first:
        return url_query + b"\n" + first, body
    return url_query or first, body


def _more(head: bytes, rest: Iterator[bytes], limit: int) -> bytes | None:
    chunk = next(rest, None)
    if chunk is None:
        return None
    if len(head) + len(chunk) > limit:
        raise EngineError.of(SYNTAX_ERROR, f"Max query size exceeded ({limit} bytes)")
    return head + chunk


def first_keyword(head: bytes, final: bool) -> str | None:
    """The statement's leading keyword; None if more input is needed to know it."""
    text = head.decode("latin-1")  # 1:1 bytes->chars, so offsets stay byte offsets
    try:
        for tok in sqlscan.tokens(text, final=final):
            return text[tok.start : tok.end].upper() if tok.kind == "word" else ""
    except sqlscan.Incomplete:
        return None
    except sqlscan.SqlScanError as exc:
        raise EngineError.of(SYNTAX_ERROR, f"Syntax error: {exc}") from None
    return ""


def insert_head(head: bytes, rest: Iterator[bytes]) -> tuple[sqlscan.InsertHead | None, bytes]:
    """Parse ``INSERT ... FORMAT x``, pulling more body until the head is complete.

    Returns the head (None for an INSERT without inline data) and the bytes read so far.
    """
    text = head.decode("latin-1")
    while True:
        try:
            found = sqlscan.parse_insert_head(text, final=False)
        except sqlscan.Incomplete:
            grown = _more(head, rest, MAX_QUERY_BYTES)
            if grown is None:
                try:
                    found = sqlscan.parse_insert_head(text, final=True)
                except sqlscan.SqlScanError as exc:
                    raise EngineError.of(SYNTAX_ERROR, f"Syntax error: {exc}") from None
            else:
                head, text = grown, grown.decode("latin-1")
                continue
        except sqlscan.SqlScanError as exc:
            raise EngineError.of(SYNTAX_ERROR, f"Syntax error: {exc}") from None
        if found is None:
            return None, head
        return sqlscan.InsertHead(_utf8(found.sql), _utf8(found.settings), _utf8(found.format),
                                  found.data_start), head


def _utf8(part: str) -> str:
    """Undo the latin-1 view of the head: the SQL text is UTF-8."""
    return part.encode("latin-1").decode("utf-8", "replace")


def read_rest(head: bytes, rest: Iterator[bytes]) -> bytes:
    while (grown := _more(head, rest, MAX_QUERY_BYTES)) is not None:
        head = grown
    return head


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_FORMAT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def land_insert(conn: EngineConnection, insert: sqlscan.InsertHead, head: bytes,
            rest: Iterator[bytes], spool_dir: Path) -> dict[str, int]:
    """Land the inline data: spool the body to a file, then one INSERT ... FROM INFILE.

    chDB 26.9's streaming inserter (``send_insert``) reports rows as written when
    the table rejects them (constraint violations, too many partitions): the rows
    are silently lost.  ``FROM INFILE`` raises those errors, and the file keeps
    memory bounded however large the body.
    """
    if not _FORMAT_NAME.match(insert.format):
        raise EngineError.of(UNKNOWN_FORMAT, f"Unknown input format {insert.format[:64]!r}")
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, suffix=".insert")
    try:
        with os.fdopen(fd, "wb") as out:
            if head:
                out.write(head)
            for chunk in rest:
                out.write(chunk)
        sql = f"{insert.sql} FROM INFILE {quote(name)} {insert.settings} FORMAT {insert.format}"
        result = conn.query(sql)
    finally:
        os.unlink(name)
    written = result.rows_written()
    return {"read_rows": 0, "read_bytes": 0, "written_rows": written,
            "written_bytes": result.bytes_written(), "result_rows": written, "result_bytes": 0}
