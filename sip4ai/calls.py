"""The Call record and its state machine: pure, no I/O.

Status changes go through ``transition()`` only, which checks the table of allowed transitions.
A record is immutable; every change returns a new record (the store persists it).
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from sip4ai.errors import InvalidTransition


E164 = re.compile(r"\+[1-9][0-9]{1,14}")

Speaker = Literal["ai", "user"]


class CallStatus(enum.StrEnum):
    INITIATING = "initiating"
    RINGING = "ringing"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        return self not in (CallStatus.COMPLETED, CallStatus.FAILED)


TRANSITIONS: Mapping[CallStatus, frozenset[CallStatus]] = {
    CallStatus.INITIATING: frozenset(
        {CallStatus.RINGING, CallStatus.IN_PROGRESS, CallStatus.FAILED}
    ),
    CallStatus.RINGING: frozenset({CallStatus.IN_PROGRESS, CallStatus.FAILED}),
    CallStatus.IN_PROGRESS: frozenset({CallStatus.COMPLETED, CallStatus.FAILED}),
    CallStatus.COMPLETED: frozenset(),
    CallStatus.FAILED: frozenset(),
}
"""Allowed status changes. A call that never connected ends as ``failed`` (with its reason)."""


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


def is_e164(number: str) -> bool:
    return E164.fullmatch(number) is not None


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix and whole seconds, as the product docs show."""
    if ts is None:
        return None
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    speaker: Speaker
    text: str
    timestamp: float
    """Seconds since the call was answered (or created, if it never was)."""

    def to_json(self) -> dict[str, Any]:
        return {"speaker": self.speaker, "text": self.text, "timestamp": round(self.timestamp, 2)}


@dataclass(frozen=True, slots=True)
class FunctionCallRecord:
    name: str
    arguments: Mapping[str, Any]
    result: Any

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": dict(self.arguments), "result": self.result}


@dataclass(frozen=True, slots=True)
class ProviderSegment:
    """One provider's part of a call (several when failover moved the call on)."""

    provider: str
    started: float
    """Seconds since the call was answered (or created), like transcript timestamps."""
    ended: float | None = None
    end_reason: str | None = None
    """Why this provider stopped serving the call (None while it does)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "started": round(self.started, 2),
            "ended": None if self.ended is None else round(self.ended, 2),
            "end_reason": self.end_reason,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ProviderSegment:
        ended = raw.get("ended")
        return cls(
            str(raw["provider"]),
            float(raw["started"]),
            None if ended is None else float(ended),
            raw.get("end_reason"),
        )


@dataclass(frozen=True, slots=True)
class CallRecord:
    id: str
    direction: Direction
    target: str
    """The far party: the number dialled (outbound) or the caller (inbound)."""
    provider: str
    created_at: datetime
    status: CallStatus = CallStatus.INITIATING
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    transcript: tuple[TranscriptEntry, ...] = ()
    functions_called: tuple[FunctionCallRecord, ...] = ()
    task: str | None = None
    instructions: str | None = None
    caller_id: str | None = None
    max_duration_seconds: int = 300
    event_webhook: str | None = None
    functions: tuple[Mapping[str, Any], ...] = ()
    """Per-call function definitions from POST /api/calls, as validated JSON objects."""
    sip_status: int | None = None
    """The SIP final response code of a failed outbound attempt (486, 404...)."""
    providers: tuple[ProviderSegment, ...] = ()
    """Who served the call, in order ("provider" is the one it started with)."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> int | None:
        """Talk time in whole seconds once the call has ended; None while it is active."""
        if self.ended_at is None:
            return None
        if self.answered_at is None:
            return 0
        return max(0, int((self.ended_at - self.answered_at).total_seconds()))

    def elapsed(self, now: datetime) -> int:
        """Seconds since answer (or creation) for a live call, as /status shows."""
        start = self.answered_at or self.created_at
        return max(0, int((now - start).total_seconds()))

    def clock_offset(self, now: datetime) -> float:
        start = self.answered_at or self.created_at
        return max(0.0, (now - start).total_seconds())

    def to_json(self) -> dict[str, Any]:
        """The product docs' Call object plus end_reason."""
        return {
            "id": self.id,
            "status": self.status.value,
            "direction": self.direction.value,
            "target": self.target,
            "provider": self.provider,
            "duration": self.duration,
            "transcript": [entry.to_json() for entry in self.transcript],
            "created_at": iso(self.created_at),
            "ended_at": iso(self.ended_at),
            "end_reason": self.end_reason,
            "providers": [segment.to_json() for segment in self.providers],
        }


def new_call(
    *,
    direction: Direction,
    target: str,
    provider: str,
    now: datetime,
    status: CallStatus = CallStatus.INITIATING,
    **details: Any,
) -> CallRecord:
    return CallRecord(
        id=str(uuid.uuid4()),
        direction=direction,
        target=target,
        provider=provider,
        created_at=now,
        status=status,
        **details,
    )


def transition(
    record: CallRecord, new: CallStatus, now: datetime, *, reason: str | None = None
) -> CallRecord:
    """The single place a call's status changes. Raises InvalidTransition when not allowed."""
    if new not in TRANSITIONS[record.status]:
        raise InvalidTransition(f"call {record.id}: {record.status} -> {new} is not allowed")
    changes: dict[str, Any] = {"status": new}
    if new is CallStatus.IN_PROGRESS:
        changes["answered_at"] = now
    if not new.active:
        changes["ended_at"] = now
        changes["end_reason"] = reason or new.value
    return replace(record, **changes)


def add_transcript(record: CallRecord, speaker: Speaker, text: str, now: datetime) -> CallRecord:
    entry = TranscriptEntry(speaker, text, record.clock_offset(now))
    return replace(record, transcript=(*record.transcript, entry))


def switch_provider(
    record: CallRecord, provider: str | None, reason: str | None, now: datetime
) -> CallRecord:
    """Close the serving provider's segment with ``reason``; open one for ``provider``."""
    offset = record.clock_offset(now)
    segments = list(record.providers)
    if segments and segments[-1].ended is None:
        segments[-1] = replace(segments[-1], ended=offset, end_reason=reason)
    if provider is not None:
        segments.append(ProviderSegment(provider, offset))
    return replace(record, providers=tuple(segments))


def add_function_call(record: CallRecord, call: FunctionCallRecord) -> CallRecord:
    return replace(record, functions_called=(*record.functions_called, call))


def format_uptime(seconds: float) -> str:
    """``2h15m30s`` style, as /status shows; days are folded into hours."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
