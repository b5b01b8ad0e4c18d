from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sip4ai.calls import (
    TRANSITIONS,
    CallStatus,
    Direction,
    ProviderSegment,
    add_transcript,
    format_uptime,
    is_e164,
    iso,
    new_call,
    switch_provider,
    transition,
)
from sip4ai.errors import InvalidTransition


pytestmark = pytest.mark.unit

T0 = datetime(2024, 1, 15, 10, 30, 0, tzinfo=UTC)


@pytest.mark.parametrize("number", ["+61400000000", "+12025550123", "+4420", "+999999999999999"])
def test_valid_e164(number: str) -> None:
    assert is_e164(number)


@pytest.mark.parametrize(
    "number", ["61400000000", "+0123456", "+1", "+1234567890123456", "+61 400 000 000", "", "+61a"]
)
def test_invalid_e164(number: str) -> None:
    assert not is_e164(number)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m0s"), (8130, "2h15m30s"), (90061, "25h1m1s"), (-3, "0s")],
)
def test_uptime_format(seconds: float, text: str) -> None:
    assert format_uptime(seconds) == text


def test_iso_is_utc_with_z() -> None:
    assert iso(T0) == "2024-01-15T10:30:00Z"
    assert iso(None) is None


def call() -> object:
    return new_call(direction=Direction.OUTBOUND, target="+61400000000", provider="openai", now=T0)


def test_outbound_happy_path() -> None:
    record = new_call(
        direction=Direction.OUTBOUND, target="+61400000000", provider="openai", now=T0
    )
    assert record.status is CallStatus.INITIATING and record.duration is None
    record = transition(record, CallStatus.RINGING, T0 + timedelta(seconds=1))
    record = transition(record, CallStatus.IN_PROGRESS, T0 + timedelta(seconds=3))
    assert record.answered_at == T0 + timedelta(seconds=3)
    record = add_transcript(record, "ai", "Hello", T0 + timedelta(seconds=3.5))
    record = transition(
        record, CallStatus.COMPLETED, T0 + timedelta(seconds=130), reason="remote_hangup"
    )
    assert record.duration == 127
    assert record.end_reason == "remote_hangup"
    assert record.transcript[0].timestamp == 0.5
    body = record.to_json()
    assert body["status"] == "completed"
    assert body["ended_at"] == "2024-01-15T10:32:10Z"
    assert body["transcript"] == [{"speaker": "ai", "text": "Hello", "timestamp": 0.5}]


def test_never_answered_call_fails_with_zero_duration() -> None:
    record = new_call(
        direction=Direction.OUTBOUND, target="+61400000000", provider="openai", now=T0
    )
    record = transition(record, CallStatus.FAILED, T0 + timedelta(seconds=30), reason="busy")
    assert record.duration == 0
    assert record.end_reason == "busy"


ALL = list(CallStatus)


@pytest.mark.parametrize("old", ALL)
@pytest.mark.parametrize("new", ALL)
def test_transition_table_is_enforced(old: CallStatus, new: CallStatus) -> None:
    record = new_call(
        direction=Direction.INBOUND, target="+61400000000", provider="openai", now=T0, status=old
    )
    if new in TRANSITIONS[old]:
        assert transition(record, new, T0).status is new
    else:
        with pytest.raises(InvalidTransition):
            transition(record, new, T0)


def test_final_states_have_no_exit() -> None:
    assert TRANSITIONS[CallStatus.COMPLETED] == frozenset()
    assert TRANSITIONS[CallStatus.FAILED] == frozenset()
    assert all(s.active for s in TRANSITIONS if TRANSITIONS[s])


def test_failover_closes_the_serving_segment_and_opens_the_next() -> None:
    record = new_call(direction=Direction.INBOUND, target="+61400000001", provider="openai", now=T0)
    record = transition(record, CallStatus.IN_PROGRESS, T0)
    record = switch_provider(record, "openai", None, T0)
    record = switch_provider(record, "gemini", "openai: 1011", T0 + timedelta(seconds=12.345))
    assert record.to_json()["providers"] == [
        {"provider": "openai", "started": 0.0, "ended": 12.35, "end_reason": "openai: 1011"},
        {"provider": "gemini", "started": 12.35, "ended": None, "end_reason": None},
    ]
    assert [ProviderSegment.from_json(s.to_json()) for s in record.providers] == [
        ProviderSegment("openai", 0.0, 12.35, "openai: 1011"),
        ProviderSegment("gemini", 12.35),
    ]
