from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sip4ai.calls import (
    CallRecord,
    CallStatus,
    Direction,
    FunctionCallRecord,
    add_function_call,
    add_transcript,
    new_call,
    transition,
)
from sip4ai.outbox import OutboxEvent
from sip4ai.webhooks import (
    EVENT_NAMES,
    LifecycleWebhooks,
    build_payload,
    destination,
    encode,
    make_event,
    task_result_event,
)


pytestmark = pytest.mark.unit

CALL_ID = "550e8400-e29b-41d4-a716-446655440000"
T0 = datetime(2024, 1, 15, 10, 30, 0, tzinfo=UTC)
LATER = datetime(2024, 1, 15, 11, 0, 0, tzinfo=UTC)

DOCS_CALL_COMPLETED = """
{
  "event": "call.completed",
  "call_id": "550e8400-e29b-41d4-a716-446655440000",
  "timestamp": "2024-01-15T10:32:07Z",
  "data": {
    "duration": 127,
    "end_reason": "completed",
    "transcript": [
      {
        "speaker": "ai",
        "text": "Hello, this is calling about your Tuesday appointment...",
        "timestamp": 0.5
      }
    ],
    "functions_called": [
      {
        "name": "book_appointment",
        "arguments": { "date": "2024-01-16", "time": "14:00" },
        "result": { "success": true }
      }
    ]
  }
}
"""
"""Copied verbatim from the product docs, "Webhook events" -> "call.completed webhook payload"."""


def base_record() -> CallRecord:
    record = new_call(
        direction=Direction.OUTBOUND,
        target="+61400000000",
        provider="openai",
        now=T0,
        task="Confirm the appointment for Tuesday at 2pm",
    )
    return replace(record, id=CALL_ID)


def completed_record() -> CallRecord:
    record = transition(base_record(), CallStatus.IN_PROGRESS, T0)
    record = add_transcript(
        record,
        "ai",
        "Hello, this is calling about your Tuesday appointment...",
        T0 + timedelta(seconds=0.5),
    )
    record = add_function_call(
        record,
        FunctionCallRecord(
            "book_appointment", {"date": "2024-01-16", "time": "14:00"}, {"success": True}
        ),
    )
    return transition(record, CallStatus.COMPLETED, T0 + timedelta(seconds=127))


def test_call_completed_matches_the_docs_example_exactly() -> None:
    payload = build_payload(completed_record(), "call.completed", LATER)
    assert payload is not None
    assert payload == json.loads(DOCS_CALL_COMPLETED)
    assert list(payload) == ["event", "call_id", "timestamp", "data"]
    assert list(payload["data"]) == ["duration", "end_reason", "transcript", "functions_called"]


def test_the_encoded_body_is_the_same_json() -> None:
    event = make_event(completed_record(), "call.completed", default_url="https://h/w", now=LATER)
    assert event is not None
    assert json.loads(event.body) == json.loads(DOCS_CALL_COMPLETED)
    assert event.event == "call.completed"
    assert event.call_id == CALL_ID
    assert event.url == "https://h/w"


def test_manager_names_map_to_the_docs_names() -> None:
    assert EVENT_NAMES["call.in_progress"] == "call.answered"
    assert set(EVENT_NAMES.values()) == {
        "call.initiated",
        "call.ringing",
        "call.answered",
        "call.completed",
        "call.failed",
        "function.called",
        "transcript.update",
    }


def test_status_event_payloads() -> None:
    record = base_record()
    assert build_payload(record, "call.initiated", LATER) == {
        "event": "call.initiated",
        "call_id": CALL_ID,
        "timestamp": "2024-01-15T10:30:00Z",
        "data": {"direction": "outbound", "target": "+61400000000", "provider": "openai"},
    }
    ringing = transition(record, CallStatus.RINGING, T0 + timedelta(seconds=1))
    assert build_payload(ringing, "call.ringing", LATER) == {
        "event": "call.ringing",
        "call_id": CALL_ID,
        "timestamp": "2024-01-15T11:00:00Z",
        "data": {"direction": "outbound", "target": "+61400000000"},
    }
    answered = transition(ringing, CallStatus.IN_PROGRESS, T0 + timedelta(seconds=4))
    assert build_payload(answered, "call.in_progress", LATER) == {
        "event": "call.answered",
        "call_id": CALL_ID,
        "timestamp": "2024-01-15T10:30:04Z",
        "data": {"direction": "outbound", "target": "+61400000000", "provider": "openai"},
    }


def test_call_failed_carries_reason_and_sip_status() -> None:
    record = transition(base_record(), CallStatus.RINGING, T0)
    record = transition(record, CallStatus.FAILED, T0 + timedelta(seconds=20), reason="busy")
    record = replace(record, sip_status=486)
    assert build_payload(record, "call.failed", LATER) == {
        "event": "call.failed",
        "call_id": CALL_ID,
        "timestamp": "2024-01-15T10:30:20Z",
        "data": {
            "duration": 0,
            "end_reason": "busy",
            "transcript": [],
            "functions_called": [],
            "sip_status": 486,
        },
    }


def test_transcript_update_reports_the_latest_segment() -> None:
    record = transition(base_record(), CallStatus.IN_PROGRESS, T0)
    record = add_transcript(record, "ai", "Hello", T0 + timedelta(seconds=1))
    record = add_transcript(record, "user", "Hi there", T0 + timedelta(seconds=2.25))
    assert build_payload(record, "transcript.update", LATER) == {
        "event": "transcript.update",
        "call_id": CALL_ID,
        "timestamp": "2024-01-15T11:00:00Z",
        "data": {"index": 1, "speaker": "user", "text": "Hi there", "timestamp": 2.25},
    }


def test_function_called_reports_the_latest_call() -> None:
    record = add_function_call(
        base_record(), FunctionCallRecord("lookup", {"phone": "+1"}, {"name": "Ann"})
    )
    assert build_payload(record, "function.called", LATER) == {
        "event": "function.called",
        "call_id": CALL_ID,
        "timestamp": "2024-01-15T11:00:00Z",
        "data": {"name": "lookup", "arguments": {"phone": "+1"}, "result": {"name": "Ann"}},
    }


@pytest.mark.parametrize(
    "manager_event", ["call.unknown", "transcript.update", "function.called", "provider.status"]
)
def test_events_without_content_or_unknown_are_not_built(manager_event: str) -> None:
    assert build_payload(base_record(), manager_event, LATER) is None


def test_destination_prefers_the_call_then_the_default() -> None:
    record = base_record()
    assert destination(record, None) is None
    assert destination(record, "https://default/w") == "https://default/w"
    own = replace(record, event_webhook="https://own/w")
    assert destination(own, "https://default/w") == "https://own/w"
    assert make_event(record, "call.initiated", default_url=None, now=LATER) is None


def test_encode_is_compact_utf8() -> None:
    assert encode({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()


def test_task_result_event() -> None:
    event = task_result_event(
        base_record(), {"success": True, "summary": "confirmed"}, url="https://r/w", now=LATER
    )
    assert event.url == "https://r/w"
    assert event.event == "task.result"
    assert json.loads(event.body) == {
        "event": "task.result",
        "call_id": CALL_ID,
        "timestamp": "2024-01-15T11:00:00Z",
        "data": {
            "task": "Confirm the appointment for Tuesday at 2pm",
            "target": "+61400000000",
            "result": {"success": True, "summary": "confirmed"},
        },
    }


class Sink:
    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    def enqueue(self, event: OutboxEvent) -> None:
        self.events.append(event)


def test_listener_queues_each_webhook_event_with_a_unique_id() -> None:
    sink = Sink()
    hooks = LifecycleWebhooks(sink, default_url="https://d/w", now=lambda: LATER)
    record = base_record()
    hooks.on_call_event(record, "call.initiated")
    hooks.on_call_event(record, "call.not_a_webhook")
    answered = transition(record, CallStatus.IN_PROGRESS, T0)
    hooks.on_call_event(answered, "call.in_progress")
    names = [e.event for e in sink.events]
    assert names == ["call.initiated", "call.answered"]
    assert len({e.event_id for e in sink.events}) == 2
    bodies: list[dict[str, Any]] = [json.loads(e.body) for e in sink.events]
    assert [b["event"] for b in bodies] == names


def test_listener_never_raises_into_the_manager() -> None:
    sink = Sink()
    hooks = LifecycleWebhooks(sink, default_url="https://d/w", now=lambda: LATER)
    broken = replace(base_record(), functions_called=(object(),))  # type: ignore[arg-type]
    hooks.on_call_event(broken, "call.function_called_is_not_mapped")
    hooks.on_call_event(broken, "function.called")
    assert sink.events == []
