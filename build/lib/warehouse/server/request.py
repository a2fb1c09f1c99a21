"""Reading a request: the body (sized or chunked, decompressed) and where its statement ends.

An INSERT with inline data is routed by its head alone (``INSERT ... FORMAT x``), read
incrementally from the stream; any other statement is read whole, up to a bound.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from . import codecs, sqlscan
from .engine import CANNOT_DECOMPRESS, SYNTAX_ERROR, UNKNOWN_FORMAT, EngineConnection, EngineError, quote

__all__ = ["MAX_QUERY_BYTES", "Body", "decoded", "first_keyword", "insert_head", "is_utf8", "land_insert",
           "read_head", "read_rest"]

MAX_QUERY_BYTES = 16 << 20  # a statement without inline data


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


def decoded(raw: Iterator[bytes], decoder: codecs.Decoder) -> Iterator[bytes]:
    for chunk in raw:
        try:
            out = decoder.decompress(chunk)
        except Exception as exc:  # noqa: BLE001 - each codec raises its own type
            raise EngineError.of(CANNOT_DECOMPRESS, f"Cannot decompress request body: {exc}") from None
        if out:
            yield out


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
