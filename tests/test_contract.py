"""The event contract: encoding, deterministic ids, validation."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
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
