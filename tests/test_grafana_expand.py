"""The expander against the documented expansions of Grafana and the ClickHouse plugin 4.20.

Expected strings are the plugin's own test expectations (pkg/macros/macros_test.go,
src/data/CHDatasource.test.ts) and Grafana's (rangeutil, formatRegistry), as recorded in
shared/reference/grafana-clickhouse-prometheus.md.
"""

from __future__ import annotations

import pytest

from .grafana_expand import (
    ALL,
    ExpandError,
    Scope,
    TimeRange,
    Variable,
    apply_conditional_all,
    clickhouse_sql,
    expand_macros,
    interpolate,
    interval_ms,
    link_url,
    prometheus_format,
    promql,
    round_interval,
    seconds_to_hms,
    strip_comments,
)

# 2014-11-12T11:45:26.371Z .. 2015-11-12T11:45:26.456Z, the plugin's test range
RANGE = TimeRange(1415792726371, 1447328726456)
TWENTY_S = 20000


class TestMacros:
    @pytest.mark.parametrize(("sql", "expected"), [
        ("$__timeFilter(cast(sth as timestamp))",
         "cast(sth as timestamp) >= toDateTime(1415792726) AND cast(sth as timestamp) <= toDateTime(1447328726)"),
        ("$__timeFilter_ms(ts)",
         "ts >= fromUnixTimestamp64Milli(1415792726371) AND ts <= fromUnixTimestamp64Milli(1447328726456)"),
        ("$__dateFilter(dateCol)", "dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')"),
        ("$__dateTimeFilter(dateCol, timeCol)",
         "(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
         "(timeCol >= toDateTime(1415792726) AND timeCol <= toDateTime(1447328726))"),
        ("$__dt(dateCol, timeCol)",
         "(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
         "(timeCol >= toDateTime(1415792726) AND timeCol <= toDateTime(1447328726))"),
        ("$__fromTime", "toDateTime(1415792726)"),
        ("$__toTime", "toDateTime(1447328726)"),
        ("$__fromTime_ms", "fromUnixTimestamp64Milli(1415792726371)"),
        ("$__toTime_ms", "fromUnixTimestamp64Milli(1447328726456)"),
        ("$__timeInterval(col)", "toStartOfInterval(toDateTime(col), INTERVAL 20 second)"),
        ("$__timeInterval_ms(col)", "toStartOfInterval(toDateTime64(col, 3), INTERVAL 20000 millisecond)"),
        ("$__interval_s", "20"),
        ("$__timeFrom(ts)", "ts >= toDateTime(1415792726)"),
        ("$__timeTo(ts)", "ts <= toDateTime(1447328726)"),
        ("$__timeGroup(col, '1h')", "toStartOfInterval(toDateTime(col), INTERVAL 3600 second)"),
        ("$__timeGroup(col, 5m)", "toStartOfInterval(toDateTime(col), INTERVAL 300 second)"),
    ])
    def test_documented_expansion(self, sql: str, expected: str) -> None:
        """Each macro expands to the plugin's documented text."""
        assert expected == expand_macros(sql, RANGE, TWENTY_S)

    def test_nested_macros_expand_innermost_first(self) -> None:
        """v4.20: a macro in another's argument is expanded first (the plugin's #2043 test)."""
        assert ("SELECT toStartOfInterval(toDateTime(toDateTime(1415792726)), INTERVAL 60 second)"
                == expand_macros("SELECT $__timeInterval($__fromTime)", RANGE, 60000))

    def test_longest_name_wins(self) -> None:
        """$__fromTime_ms is never read as $__fromTime followed by _ms."""
        assert "fromUnixTimestamp64Milli(1415792726371)" == expand_macros("$__fromTime_ms", RANGE, TWENTY_S)

    def test_unknown_macro_is_left_alone(self) -> None:
        """An unknown $__name reaches ClickHouse unchanged."""
        assert "SELECT $__nothing(x)" == expand_macros("SELECT $__nothing(x)", RANGE, TWENTY_S)

    def test_interval_is_at_least_one_second(self) -> None:
        """$__interval_s never goes below 1."""
        assert "1" == expand_macros("$__interval_s", RANGE, 10)

    @pytest.mark.parametrize("sql", ["$__timeFrom()", "$__timeFilter(a, b)", "$__table", "$__timeGroup(c, 5x)"])
    def test_bad_use_is_an_error(self, sql: str) -> None:
        """Wrong argument counts, $__table and a bad duration fail the query, as in the plugin."""
        with pytest.raises(ExpandError):
            expand_macros(sql, RANGE, TWENTY_S)

    def test_comments_are_blanked_and_strings_kept(self) -> None:
        """Comments become spaces of the same length; a -- inside a string stays."""
        sql = "SELECT '--x' -- note\nFROM t /* c */"
        assert "SELECT '--x'        \nFROM t        " == strip_comments(sql)

    def test_macro_in_a_comment_is_not_expanded(self) -> None:
        """A macro inside a comment disappears with the comment."""
        sql = "SELECT 1 -- $__timeFilter(x)"
        assert "SELECT 1" + " " * 20 == expand_macros(sql, RANGE, TWENTY_S)


class TestInterval:
    def test_six_hours_at_1000_points_is_20s(self) -> None:
        """The reference example: 6h / 1000 points = 21.6 s, rounded to 20 s."""
        six_h = TimeRange(0, 6 * 3600 * 1000)
        assert 20000 == interval_ms(six_h, 1000)

    def test_low_limit_floors_the_interval(self) -> None:
        """A panel interval (or the data source's timeInterval) is a floor."""
        assert 60000 == interval_ms(TimeRange(0, 6 * 3600 * 1000), 1000, "1m")

    @pytest.mark.parametrize(("raw", "rounded"), [(24999, 20000), (25000, 30000), (89999, 60000),
                                                  (209999, 120000), (449999, 300000), (10**12, 31536000000)])
    def test_round_interval_table(self, raw: int, rounded: int) -> None:
        """rangeutil.roundInterval's steps."""
        assert rounded == round_interval(raw)

    @pytest.mark.parametrize(("seconds", "text"), [(20, "20s"), (90, "1m"), (7200, "2h"), (0.5, "500ms")])
    def test_interval_text(self, seconds: float, text: str) -> None:
        """$__interval is the largest whole unit (secondsToHms)."""
        assert text == seconds_to_hms(seconds)

    def test_relative_range(self) -> None:
        """now-6h .. now at a given instant."""
        assert TimeRange(0, 21600000) == TimeRange.parse("now-6h", "now", 21600000)


def scope(**variables: Variable) -> Scope:
    return Scope(variables, RANGE, interval_ms=TWENTY_S)


DAG = Variable("dag_id", "etl")
TASKS = Variable("task_id", ["a", "b"], multi=True, include_all=True)
ALL_TASKS = Variable("task_id", ALL, multi=True, include_all=True, options=("a", "b", "c"))
ALL_CUSTOM = Variable("dag_id", ALL, multi=True, include_all=True, all_value=".*", options=("x", "y"))


class TestVariables:
    def test_single_value_is_raw_for_clickhouse(self) -> None:
        """The plugin's formatter leaves a single value unquoted."""
        assert "WHERE dag_id = etl" == clickhouse_sql("WHERE dag_id = $dag_id", scope(dag_id=DAG))

    def test_array_is_quoted_for_clickhouse(self) -> None:
        """A multi value becomes 'a','b' (no space, no escaping)."""
        assert "IN ('a','b')" == clickhouse_sql("IN ($task_id)", scope(task_id=TASKS))

    def test_all_without_custom_value_is_every_option(self) -> None:
        """All with no allValue gives every option's value."""
        assert "IN ('a','b','c')" == clickhouse_sql("IN (${task_id:sqlstring})", scope(task_id=ALL_TASKS))

    def test_all_with_custom_value_is_inserted_raw(self) -> None:
        """A custom allValue goes in as it is (Prometheus regex .*)."""
        assert 'task_status{dag_id=~".*"}' == promql('task_status{dag_id=~"$dag_id"}', scope(dag_id=ALL_CUSTOM))

    @pytest.mark.parametrize(("fmt", "expected"), [
        ("singlequote", "'it\\'s','b'"), ("sqlstring", "'it''s','b'"), ("csv", "it's,b"), ("raw", "it's,b"),
        ("pipe", "it's|b"), ("regex", "(it's|b)"), ("glob", "{it's,b}"), ("doublequote", '"it\'s","b"'),
        ("queryparam", "var-v=it's&var-v=b"), ("percentencode", "it's,b"),
    ])
    def test_named_formats(self, fmt: str, expected: str) -> None:
        """scenes formatRegistry, for a two-value variable."""
        variable = Variable("v", ["it's", "b"], multi=True)
        assert expected == interpolate(f"${{v:{fmt}}}", scope(v=variable), prometheus_format)

    def test_sqlstring_single_value(self) -> None:
        """${dag_id:sqlstring} is one quoted, escaped literal."""
        bad = Variable("dag_id", "x' OR '1'='1")
        assert "dag_id = 'x'' OR ''1''=''1'" == clickhouse_sql("dag_id = ${dag_id:sqlstring}", scope(dag_id=bad))

    def test_unknown_format_is_an_error(self) -> None:
        """A typo in a format name is caught."""
        with pytest.raises(ExpandError):
            clickhouse_sql("${dag_id:singlequotes}", scope(dag_id=DAG))

    def test_prometheus_escaping(self) -> None:
        """Multi values are regex-escaped and joined; a plain variable escapes quotes."""
        dots = Variable("d", ["a.b", "c"], multi=True)
        assert "(a\\.b|c)" == promql("$d", scope(d=dots))
        assert "it\\\\'s" == promql("$d", scope(d=Variable("d", "it's")))

    def test_macros_are_not_variables(self) -> None:
        """$__timeFilter and $__interval_s pass the frontend untouched and expand in the backend."""
        sql = clickhouse_sql("WHERE $__timeFilter(ts) GROUP BY $__interval_s", scope())
        assert "WHERE ts >= toDateTime(1415792726) AND ts <= toDateTime(1447328726) GROUP BY 20" == sql

    def test_frontend_builtins(self) -> None:
        """$__from/$__to are epoch ms; $__interval is Grafana's text."""
        assert "1415792726371 1447328726456 20s 20000" == clickhouse_sql("$__from $__to $__interval $__interval_ms",
                                                                         scope())

    def test_unknown_variable_is_left_alone(self) -> None:
        """A name that is no variable stays in the text."""
        assert "x = $nope" == clickhouse_sql("x = $nope", scope())


class TestConditionalAll:
    def test_all_gives_1_eq_1(self) -> None:
        """The plugin's test: All becomes 1=1."""
        sql = "select stuff from table where $__conditionalAll(fieldVal in ($fieldVal), $fieldVal);"
        variables = {"fieldVal": Variable("fieldVal", ALL, multi=True, include_all=True)}
        assert "select stuff from table where 1=1;" == apply_conditional_all(sql, variables)

    def test_values_keep_the_condition(self) -> None:
        """With values selected the condition stays, then is interpolated."""
        sql = "where $__conditionalAll(fieldVal in ($fieldVal), $fieldVal);"
        variables = {"fieldVal": Variable("fieldVal", ["val1", "val2"], multi=True)}
        assert "where fieldVal in ('val1','val2');" == clickhouse_sql(sql, Scope(variables, RANGE))


class TestLinks:
    def test_data_link_values_and_time_range(self) -> None:
        """Row values by field name, explicit percent-encoding, and the time range."""
        url = "/d/x/x?var-dag_id=${__data.fields.dag_id:percentencode}&${__url_time_range}"
        rendered = link_url(url, Scope({}, RANGE, extra={"__data.fields.dag_id": "a/b c"}))
        assert "/d/x/x?var-dag_id=a%2Fb%20c&from=1415792726371&to=1447328726456" == rendered
