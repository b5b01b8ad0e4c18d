"""Lifecycle webhook events: the docs' payloads built from call records, queued in the outbox.

Every payload is ``{"event", "call_id", "timestamp", "data"}`` (product docs, "Webhook events").
``data`` per event:

=================  ===============================================================================
call.initiated     ``direction``, ``target``, ``provider``
call.ringing       ``direction``, ``target``
call.answered      ``direction``, ``target``, ``provider``
call.completed     ``duration``, ``end_reason``, ``transcript``, ``functions_called`` (docs example)
call.failed        as call.completed, plus ``sip_status`` (the final SIP code of a failed dial)
function.called    ``name``, ``arguments``, ``result`` (the call's latest function call)
transcript.update  ``index``, ``speaker``, ``text``, ``timestamp`` (the latest transcript segment;
                   ``timestamp`` is seconds since answer, as in the transcript)
task.result        ``task``, ``target``, ``result`` (report_result's arguments; sent to the
                   outbound ``result_webhook``)
=================  ===============================================================================

The envelope ``timestamp`` is when the event happened (created / answered / ended for the status
events), not when it was sent, so a redelivered event carries the same payload byte for byte.
The manager's event names are mapped to the docs' names (``call.in_progress`` is
``call.answered``). Events go to the call's own ``event_webhook`` or else the configured default;
with neither, nothing is queued.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, Protocol

from sip4ai.calls import CallRecord, iso, utc_now
from sip4ai.outbox import OutboxEvent


__all__ = [
    "EVENT_NAMES",
    "TASK_RESULT",
    "EventSink",
    "LifecycleWebhooks",
    "build_payload",
    "destination",
    "encode",
    "make_event",
    "task_result_event",
]

logger = logging.getLogger(__name__)

EVENT_NAMES: Final[Mapping[str, str]] = {
    "call.initiated": "call.initiated",
    "call.ringing": "call.ringing",
    "call.in_progress": "call.answered",
    "call.completed": "call.completed",
    "call.failed": "call.failed",
    "function.called": "function.called",
    "transcript.update": "transcript.update",
}
"""Manager event name -> the docs' webhook event name. Unlisted manager events are not sent."""

TASK_RESULT: Final = "task.result"


def _ended(record: CallRecord) -> dict[str, Any]:
    return {
        "duration": record.duration,
        "end_reason": record.end_reason,
        "transcript": [entry.to_json() for entry in record.transcript],
        "functions_called": [call.to_json() for call in record.functions_called],
    }


def _data(record: CallRecord, event: str) -> dict[str, Any] | None:
    """The event's ``data``; None when the record does not hold what the event reports."""
    if event == "call.initiated" or event == "call.answered":
        return {
            "direction": record.direction.value,
            "target": record.target,
            "provider": record.provider,
        }
    if event == "call.ringing":
        return {"direction": record.direction.value, "target": record.target}
    if event == "call.completed":
        return _ended(record)
    if event == "call.failed":
        data = _ended(record)
        data["sip_status"] = record.sip_status
        return data
    if event == "transcript.update":
        if not record.transcript:
            return None
        return {"index": len(record.transcript) - 1, **record.transcript[-1].to_json()}
    if event == "function.called":
        return record.functions_called[-1].to_json() if record.functions_called else None
    return None


def _event_time(record: CallRecord, event: str, now: datetime) -> datetime:
    if event == "call.initiated":
        return record.created_at
    if event == "call.answered" and record.answered_at is not None:
        return record.answered_at
    if event in ("call.completed", "call.failed") and record.ended_at is not None:
        return record.ended_at
    return now


def build_payload(record: CallRecord, manager_event: str, now: datetime) -> dict[str, Any] | None:
    """The docs' payload for a manager event, or None if that event is not a webhook event."""
    event = EVENT_NAMES.get(manager_event)
    if event is None:
        return None
    data = _data(record, event)
    if data is None:
        return None
    return {
        "event": event,
        "call_id": record.id,
        "timestamp": iso(_event_time(record, event, now)),
        "data": data,
    }


def destination(record: CallRecord, default_url: str | None) -> str | None:
    """The call's own ``event_webhook``, else the configured default, else None."""
    return record.event_webhook or default_url or None


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the exact bytes that are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def make_event(
    record: CallRecord, manager_event: str, *, default_url: str | None, now: datetime
) -> OutboxEvent | None:
    """The outbox entry for a manager event, or None (not a webhook event, or no destination)."""
    url = destination(record, default_url)
    if url is None:
        return None
    payload = build_payload(record, manager_event, now)
    if payload is None:
        return None
    return OutboxEvent(call_id=record.id, event=payload["event"], url=url, body=encode(payload))


def task_result_event(
    record: CallRecord, result: Mapping[str, Any], *, url: str, now: datetime
) -> OutboxEvent:
    """An outbound task's result (report_result's arguments) for the ``result_webhook``."""
    payload = {
        "event": TASK_RESULT,
        "call_id": record.id,
        "timestamp": iso(now),
        "data": {"task": record.task, "target": record.target, "result": dict(result)},
    }
    return OutboxEvent(call_id=record.id, event=TASK_RESULT, url=url, body=encode(payload))


class EventSink(Protocol):
    """Where events go (the Outbox)."""

    def enqueue(self, event: OutboxEvent) -> None: ...


class LifecycleWebhooks:
    """The manager listener: ``manager.subscribe(webhooks.on_call_event)``.

    Runs on the loop right after each persisted change; it only builds JSON and calls the sink's
    non-blocking ``enqueue``. It never raises into the manager.
    """

    def __init__(
        self,
        sink: EventSink,
        *,
        default_url: str | None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._sink = sink
        self._default_url = default_url
        self._now = now

    def on_call_event(self, record: CallRecord, manager_event: str) -> None:
        try:
            event = make_event(
                record, manager_event, default_url=self._default_url, now=self._now()
            )
        except Exception:  # a bad record must not break the call flow that reported it
            logger.exception("! building webhook %s for call %s failed", manager_event, record.id)
            return
        if event is not None:
            self._sink.enqueue(event)

    def task_result(self, record: CallRecord, result: Mapping[str, Any], url: str) -> None:
        self._sink.enqueue(task_result_event(record, result, url=url, now=self._now()))
