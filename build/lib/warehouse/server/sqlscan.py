"""Just enough of ClickHouse's lexer to route an HTTP query.

The server needs three facts about a query text before it runs it: its leading
keyword, its trailing ``FORMAT`` clause (the output format, which the HTTP layer
must know), and, for ``INSERT ... FORMAT x``, where the inline data begins.  A
regex gets all three wrong as soon as ``format`` appears in a string, a quoted
identifier or a comment, so this is a small tokenizer that knows ClickHouse's
literal and comment syntax.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Incomplete", "InsertHead", "Query", "SqlScanError", "parse_insert_head", "parse_query"]


class SqlScanError(ValueError):
    """The text cannot be a single ClickHouse statement (reported as SYNTAX_ERROR)."""


class Incomplete(Exception):
    """More input is needed before the head of an INSERT can be known."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # word | string | ident | number | punct
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Query:
    keyword: str  # leading keyword, upper case ("" if the text is empty)
    sql: str  # the statement without its trailing FORMAT clause and ';'
    format: str | None  # the FORMAT clause's name, if any


@dataclass(frozen=True, slots=True)
class InsertHead:
    sql: str  # "INSERT INTO t (a, b)": without SETTINGS and FORMAT
    settings: str  # "SETTINGS a = 1, ..." or ""
    format: str  # input format of the data
    data_start: int  # offset where the inline data begins


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*(?:[eEpP][+-]?[0-9]+)?")
_HEREDOC = re.compile(r"\$([A-Za-z0-9_]*)\$")
_SPACE = frozenset(" \t\n\r\f\v")


def tokens(text: str, final: bool = True) -> Iterator[Token]:
    """Tokens of ``text``; comments and white space are skipped.

    With ``final=False`` an unterminated literal or comment raises
    ``Incomplete`` (more bytes may follow) instead of ``SqlScanError``.
    """
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
        elif text.startswith("--", i) or c == "#":
            end = text.find("\n", i)
            if end < 0:
                return
            i = end + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i, final)
        elif c in "'\"`":
            end = _skip_quoted(text, i, c, final)
            yield Token("string" if c == "'" else "ident", i, end)
            i = end
        elif c == "$" and (m := _HEREDOC.match(text, i)):
            close = text.find(m.group(0), m.end())
            if close < 0:
                _unterminated("heredoc", final)
            end = close + len(m.group(0))
            yield Token("string", i, end)
            i = end
        elif m := _WORD.match(text, i):
            yield Token("word", i, m.end())
            i = m.end()
        elif m := _NUMBER.match(text, i):
            yield Token("number", i, m.end())
            i = m.end()
        else:
            yield Token("punct", i, i + 1)
            i += 1


def _unterminated(what: str, final: bool) -> None:
    if final:
        raise SqlScanError(f"unterminated {what}")
    raise Incomplete


def _skip_block_comment(text: str, i: int, final: bool) -> int:
    depth, i = 0, i
    while i < len(text):
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    _unterminated("comment", final)
    return len(text)


def _skip_quoted(text: str, i: int, quote: str, final: bool) -> int:
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
        elif c == quote:
            if text.startswith(quote, j + 1):  # doubled quote is an escaped quote
                j += 2
            else:
                return j + 1
        else:
            j += 1
    _unterminated("quoted literal", final)
    return len(text)


def _word(text: str, tok: Token) -> str:
    return text[tok.start : tok.end].upper() if tok.kind == "word" else ""


def _name(text: str, tok: Token) -> str:
    raw = text[tok.start : tok.end]
    return raw[1:-1] if tok.kind == "ident" else raw


def parse_query(text: str) -> Query:
    """Split a complete statement into keyword, SQL and trailing FORMAT clause.

    Raises SqlScanError for unterminated literals and for multi-statements.
    """
    toks = list(tokens(text))
    while toks and text[toks[-1].start] == ";" and toks[-1].kind == "punct":
        toks.pop()
    for tok in toks:
        if tok.kind == "punct" and text[tok.start] == ";":
            raise SqlScanError("Multi-statements are not allowed")
    if not toks:
        return Query("", "", None)
    keyword = _word(text, toks[0])
    depth, fmt_at = 0, -1
    for idx, tok in enumerate(toks):
        ch = text[tok.start] if tok.kind == "punct" else ""
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif (
            depth == 0
            and idx + 1 < len(toks)
            and _word(text, tok) == "FORMAT"
            and toks[idx + 1].kind in ("word", "ident")
            and (idx == 0 or _word(text, toks[idx - 1]) not in ("INTO", "TABLE", "FROM", "AS"))
            and (idx == 0 or text[toks[idx - 1].start] != ".")
        ):
            fmt_at = idx
    end = toks[-1].end
    if fmt_at < 0:
        return Query(keyword, text[:end].strip(), None)
    fmt = _name(text, toks[fmt_at + 1])
    rest = text[toks[fmt_at + 1].end : end] if fmt_at + 2 < len(toks) else ""
    sql = (text[: toks[fmt_at].start] + " " + rest).strip()
    return Query(keyword, sql, fmt)


def parse_insert_head(text: str, final: bool) -> InsertHead | None:
    """Find ``INSERT ... FORMAT name`` at the start of ``text``.

    Returns None when the INSERT carries no inline data (``VALUES`` or
    ``SELECT`` form: run it as an ordinary query).  Raises Incomplete when
    ``final`` is false and the head is not yet complete.
    """
    depth, prev, settings_at = 0, "", -1
    it = tokens(text, final)
    for tok in it:
        word = _word(text, tok)
        ch = text[tok.start] if tok.kind == "punct" else ""
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and word == "INFILE" and prev == "FROM":
            # Client-side syntax in ClickHouse; served, it would read the server's own files.
            raise SqlScanError("INSERT ... FROM INFILE is read by clients; send the data in the request body")
        elif depth == 0 and word in ("VALUES", "SELECT", "WITH") and prev not in ("INTO", "TABLE"):
            return None
        elif depth == 0 and word == "SETTINGS" and settings_at < 0 and prev not in ("INTO", "TABLE", "."):
            settings_at = tok.start
        elif depth == 0 and word == "FORMAT" and prev not in ("INTO", "TABLE", "FUNCTION", "."):
            name = next(it, None)
            if name is None or (name.end == len(text) and not final):
                if final:
                    raise SqlScanError("FORMAT clause without a format name")
                raise Incomplete
            data_start = name.end
            if data_start < len(text) and text[data_start] in _SPACE:
                data_start += 1  # one separator after the name, as ClickHouse reads it
            cut = settings_at if settings_at >= 0 else tok.start
            return InsertHead(text[:cut].strip(), text[cut : tok.start].strip(), _name(text, name),
                              data_start)
        prev = word or ch
    if final:
        return None
    raise Incomplete
