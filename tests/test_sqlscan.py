"""The query router's tokenizer: FORMAT clauses and INSERT heads."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warehouse.server.sqlscan import Incomplete, SqlScanError, parse_insert_head, parse_query


class TestParseQuery:
    @pytest.mark.parametrize(
        ("sql", "fmt", "rest"),
        [
            ("SELECT 1 FORMAT JSON", "JSON", "SELECT 1"),
            ("select 1 format JSONEachRow;", "JSONEachRow", "select 1"),
            ("SELECT 'x FORMAT CSV' AS s", None, "SELECT 'x FORMAT CSV' AS s"),
            ("SELECT 1 -- FORMAT CSV\n", None, "SELECT 1"),
            ("SELECT 1 /* FORMAT CSV /* nested */ */ FORMAT TSV", "TSV", "SELECT 1 /* FORMAT CSV /* nested */ */"),
            ('SELECT "format" FROM t FORMAT Native', "Native", 'SELECT "format" FROM t'),
            ("SELECT * FROM format(CSV, 'a\n1') FORMAT `TabSeparated`", "TabSeparated",
             "SELECT * FROM format(CSV, 'a\n1')"),
            ("SELECT 'it''s' FORMAT CSV", "CSV", "SELECT 'it''s'"),
            ("SELECT 'a\\'b' FORMAT CSV", "CSV", "SELECT 'a\\'b'"),
            ("SELECT $$ FORMAT CSV $$ AS h", None, "SELECT $$ FORMAT CSV $$ AS h"),
        ],
    )
    def test_trailing_format_clause(self, sql: str, fmt: str | None, rest: str) -> None:
        """Only a top-level FORMAT clause counts; strings, comments and quotes hide it."""
        parsed = parse_query(sql)
        assert (fmt, rest) == (parsed.format, parsed.sql)

    def test_keyword(self) -> None:
        """The leading keyword is found past comments."""
        assert "INSERT" == parse_query("/* c */ -- x\n insert into t values (1)").keyword

    @pytest.mark.parametrize("sql", ["SELECT 1; SELECT 2", "SELECT 'open", "SELECT /* open"])
    def test_rejects(self, sql: str) -> None:
        """Multi-statements and unterminated literals are syntax errors."""
        with pytest.raises(SqlScanError):
            parse_query(sql)


class TestInsertHead:
    def test_head_and_data_offset(self) -> None:
        """The data starts right after the format name and one separator."""
        text = 'INSERT INTO t (a, "format") SETTINGS x=1 FORMAT JSONEachRow\n{"a":1}\n'
        head = parse_insert_head(text, final=True)
        assert head is not None
        assert ('INSERT INTO t (a, "format")', "SETTINGS x=1", "JSONEachRow") == (
            head.sql, head.settings, head.format)
        assert '{"a":1}\n' == text[head.data_start:]

    def test_values_and_select_have_no_inline_data(self) -> None:
        """INSERT ... VALUES / SELECT run as ordinary queries."""
        assert parse_insert_head("INSERT INTO t VALUES (1)", final=True) is None
        assert parse_insert_head("INSERT INTO t SELECT 1", final=True) is None

    def test_incomplete_head_asks_for_more(self) -> None:
        """A head cut mid-name or mid-string is incomplete, not wrong."""
        for partial in ("INSERT INTO t FORMAT JSONEach", "INSERT INTO t ('a", "INSERT INTO"):
            with pytest.raises(Incomplete):
                parse_insert_head(partial, final=False)

    def test_from_infile_is_refused(self) -> None:
        """A client may not make the server read its own files."""
        with pytest.raises(SqlScanError, match="INFILE"):
            parse_insert_head("INSERT INTO t FROM INFILE '/etc/passwd' FORMAT CSV", final=True)

    def test_table_named_format(self) -> None:
        """A table called `format` is not a FORMAT clause."""
        head = parse_insert_head("INSERT INTO format FORMAT CSV\n1\n", final=True)
        assert head is not None and ("INSERT INTO format", "CSV") == (head.sql, head.format)


@given(st.text(max_size=200))
def test_scanner_never_crashes(text: str) -> None:
    """Any text is either parsed or refused with SqlScanError."""
    with contextlib.suppress(SqlScanError):
        parse_query(text)
