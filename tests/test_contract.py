"""The event contract: encoding, deterministic ids, validation."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener import contract
from listener.contract import ContractError, Event, decode, encode

T0 = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def task_event(**overrides: object) -> Event:
    fields: dict[str, object] = dict(
        kind="task_instance", emitted_at=T0, instance="prod", dag_id="etl", run_id="manual__1",
        task_id="load", try_number=1, max_tries=2, state="success", start_date=T0,
        end_date=T0 + timedelta(seconds=3), duration_s=3.0, attrs={"team": "data"},
    )
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


class TestEncoding:
    def test_round_trip_every_kind(self) -> None:
        """Each kind encodes to one JSON line and decodes to an equal event."""
        events = [
            task_event(),
            task_event(kind="task_reconciled", state="upstream_failed"),
            Event(kind="dag_run", emitted_at=T0, instance="prod", dag_id="etl", run_id="r", state="running"),
            task_event(kind="task_metric", state="", metric_name="rows", metric_value=42.0, metric_unit="rows"),
        ]
        for event in events:
            line = encode(event)
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            assert event == decode(line)

    def test_every_column_is_present_in_order(self) -> None:
        """The encoded object carries every contract column, in DDL order."""
        assert list(contract.COLUMNS) == list(json.loads(encode(task_event())))

    def test_timestamps_keep_microseconds_in_utc(self) -> None:
        """A non-UTC timestamp is stored as UTC with microseconds."""
        cet = timezone(timedelta(hours=1))
        event = task_event(start_date=datetime(2026, 11, 1, 13, 0, 0, 7, tzinfo=cet))
        assert "2026-11-01 12:00:00.000007" == json.loads(encode(event))["start_date"]


class TestEventId:
    def test_same_state_change_same_id(self) -> None:
        """A replay of the same state change (emitted later) keeps its id."""
        assert task_event().event_id == task_event(emitted_at=T0 + timedelta(hours=1)).event_id

    @pytest.mark.parametrize("change", [{"try_number": 2}, {"state": "failed"}, {"map_index": 3},
                                        {"run_id": "manual__2"}, {"task_id": "other"}])
    def test_different_state_change_different_id(self, change: dict[str, object]) -> None:
        """What the event describes changes its id."""
        assert task_event().event_id != task_event(**change).event_id

    def test_claimed_id_is_kept_and_must_be_a_real_uuid(self) -> None:
        """Readers keep the producer's id; a nil or malformed id is refused."""
        raw = json.loads(encode(task_event()))
        other = "5fb97069-5f0e-5a4c-8a43-0d5f8b1e6a11"
        assert other == contract.from_dict({**raw, "event_id": other}).event_id
        for bad in ("00000000-0000-0000-0000-000000000000", "xyz"):
            with pytest.raises(ContractError) as err:
                contract.from_dict({**raw, "event_id": bad})
            assert "event_id" == err.value.field


class TestValidation:
    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"kind": "task"}, "kind"),
            ({"kind": []}, "kind"),  # found by the ingester's fuzz test: was a TypeError
            ({"state": "queued"}, "state"),
            ({"run_id": ""}, "run_id"),
            ({"try_number": 0}, "try_number"),
            ({"map_index": -2}, "map_index"),
            ({"error_message": "x" * (contract.MAX_ERROR_MESSAGE + 1)}, "error_message"),
            ({"duration_s": float("nan")}, "duration_s"),
            ({"duration_s": -1.0}, "duration_s"),
            ({"attrs": {"k": 1}}, "attrs"),
            ({"start_date": datetime(2026, 1, 1)}, "start_date"),
            ({"task_id": ""}, "task_id"),
        ],
    )
    def test_bad_field_is_named(self, change: dict[str, object], field: str) -> None:
        """Invalid values raise ContractError naming the field."""
        with pytest.raises(ContractError) as err:
            task_event(**change)
        assert field == err.value.field

    @pytest.mark.parametrize(
        ("line", "field"),
        [
            (b"not json", "line"),
            (b"[1, 2]", "line"),
            (b"\xff\xfe{}", "line"),
            (b'{"kind": "task_instance"}', "emitted_at"),
        ],
    )
    def test_bad_lines_are_named(self, line: bytes, field: str) -> None:
        """Malformed lines raise ContractError with the offending field."""
        with pytest.raises(ContractError) as err:
            decode(line)
        assert field == err.value.field

    def test_unknown_field_and_version(self) -> None:
        """Unknown fields and schema versions are refused, not ignored."""
        raw = json.loads(encode(task_event()))
        with pytest.raises(ContractError, match="unknown field"):
            contract.from_dict({**raw, "surprise": 1})
        with pytest.raises(ContractError, match="unsupported version"):
            contract.from_dict({**raw, "schema_version": 99})

    def test_dag_run_rules(self) -> None:
        """DAG-run events have DAG-run states and no task id."""
        with pytest.raises(ContractError):
            Event(kind="dag_run", emitted_at=T0, instance="p", dag_id="d", run_id="r", state="skipped")
        with pytest.raises(ContractError):
            Event(kind="dag_run", emitted_at=T0, instance="p", dag_id="d", run_id="r", state="success",
                  task_id="t")


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(
    dag_id=texts.filter(bool), run_id=texts.filter(bool), task_id=texts.filter(bool),
    try_number=st.integers(1, 100), map_index=st.integers(-1, 10_000),
    state=st.sampled_from(sorted(contract.TASK_STATES)),
    duration=st.none() | st.floats(0, 1e9, allow_nan=False),
    error=texts, attrs=st.dictionaries(texts, texts, max_size=5),
)
def test_any_valid_event_round_trips(dag_id: str, run_id: str, task_id: str, try_number: int,
                                     map_index: int, state: str, duration: float | None,
                                     error: str, attrs: dict[str, str]) -> None:
    """Every valid task event survives encode -> decode unchanged."""
    event = task_event(dag_id=dag_id, run_id=run_id, task_id=task_id, try_number=try_number,
                       map_index=map_index, state=state, duration_s=duration,
                       error_message=error, attrs=attrs)
    assert event == decode(encode(event))


def test_contract_needs_only_the_standard_library() -> None:
    """Importing the contract pulls in neither Airflow nor ClickHouse libraries."""
    code = ("import sys, listener.contract; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('airflow', 'clickhouse_connect', 'chdb', 'structlog', 'prometheus_client')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 0 == proc.returncode, proc.stdout + proc.stderr


# -- hostile input: decoding any line raises ContractError or gives an event the warehouse holds --

_GOOD = json.loads(encode(task_event()))
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(10**400), 10**400)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_times = (st.datetimes(timezones=st.timezones() | st.none()).map(lambda t: t.isoformat())
          | st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999-14:00",
                             "1899-12-31 23:59:59", "2299-12-31 00:00:00", "1970-01-01 00:00:00", "Z"]))


def _deep(depth: int, opener: bytes, closer: bytes) -> bytes:
    return opener * depth + closer * depth


@st.composite
def hostile_lines(draw: st.DrawFn) -> bytes:
    """A line an operator's disk or a hostile writer could produce."""
    choice = draw(st.integers(0, 5))
    if choice == 0:  # one field of a good event replaced by any JSON value
        name = draw(st.sampled_from(sorted(_GOOD)))
        value = draw(_times) if name.endswith(("_at", "_date", "_start", "_end")) and draw(st.booleans()) \
            else draw(_json_values)
        return json.dumps({**_GOOD, name: value}, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if choice == 1:  # deep nesting, in a field or at the top
        depth = draw(st.sampled_from([3, 999, 1000, 5000, 100_000]))
        nested = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        body = _deep(depth, *nested) if nested[0] == b"[" else nested[0] * depth + b"1" + nested[1] * depth
        return body if draw(st.booleans()) else b'{"attrs":' + body + b"}"
    if choice == 2:  # huge numbers
        digits = draw(st.sampled_from([20, 309, 4300, 4301, 100_000]))
        return json.dumps({**_GOOD, draw(st.sampled_from(["duration_s", "try_number", "metric_value"])): 0}
                          ).replace(": 0", ": " + "9" * digits, 1).encode()
    if choice == 3:  # a good line with hostile bytes spliced in
        good = encode(task_event())
        at = draw(st.integers(0, len(good)))
        junk = draw(st.sampled_from([b"\xef\xbb\xbf", b"\r", b"\x00", b"\xff", b"\xed\xa0\x80", b"\\ud800",
                                     b"\x00\x00\xfe\xff", b"\n"]))
        return good[:at] + junk + good[at:]
    if choice == 4:  # text in other encodings
        return json.dumps(_GOOD).encode(draw(st.sampled_from(["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])))
    return draw(st.binary(max_size=200))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_lines())
def test_any_line_decodes_or_raises_contract_error(line: bytes) -> None:
    """No line makes decode raise anything but ContractError; what it accepts encodes, within bounds, stably."""
    try:
        event = decode(line)
    except ContractError:
        return
    again = encode(event)  # raises nothing: every string is encodable, every number finite
    assert event == decode(again)
    for name in ("emitted_at", "logical_date", "data_interval_start", "data_interval_end", "queued_at",
                 "start_date", "end_date"):
        value = getattr(event, name)
        assert value is None or contract.EARLIEST <= value < contract.LATEST


@pytest.mark.parametrize("line", [
    _deep(100_000, b"[", b"]"),
    b'{"attrs":' + _deep(100_000, b"[", b"]") + b"}",
    json.dumps({**_GOOD, "duration_s": 0}).replace(": 0", ": " + "9" * 400, 1).encode(),
    json.dumps({**_GOOD, "emitted_at": "0001-01-01T00:00:00+01:00"}).encode(),
    json.dumps({**_GOOD, "error_message": "\udc00"}).encode(),  # ensure_ascii writes the escape "\\udc00"
    json.dumps(_GOOD).encode("utf-16-be"),
])
def test_hostile_line_is_a_contract_error(line: bytes) -> None:
    """Deep nesting, a number past float's range, a time past the calendar, a lone surrogate,
    UTF-16 text: each is a ContractError."""
    with pytest.raises(ContractError):
        decode(line)


@pytest.mark.parametrize(("when", "ok"), [
    ("1850-01-01T00:00:00Z", False), ("1900-01-01T23:59:59.999999Z", False), ("1900-01-02T00:00:00Z", True),
    ("1969-12-31T23:59:59Z", True), ("1970-01-01T00:00:00Z", False), ("1970-01-01T00:00:00.000001Z", True),
    ("2262-04-12T00:00:00Z", True), ("2299-12-30T23:59:59.999999Z", True), ("2299-12-31T00:00:00Z", False),
    ("9999-12-31T23:59:59Z", False),
])
@pytest.mark.parametrize("name", ["emitted_at", "start_date"])
def test_times_within_what_the_warehouse_holds(when: str, ok: bool, name: str) -> None:
    """Times are accepted exactly within [EARLIEST, LATEST) (emitted_at also not the epoch)."""
    line = json.dumps({**_GOOD, name: when}).encode()
    if ok or (name != "emitted_at" and when == "1970-01-01T00:00:00Z"):
        assert decode(line)
    else:
        with pytest.raises(ContractError) as err:
            decode(line)
        assert name == err.value.field
