"""A CallHandle for conversation tests: the record lives here, call control is recorded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sip4ai.calls import (
    CallRecord,
    Direction,
    FunctionCallRecord,
    Speaker,
    add_function_call,
    add_transcript,
    new_call,
    switch_provider,
)
from sip4ai.functions import TransferOutcome


@dataclass
class FakeHandle:
    record: CallRecord = field(
        default_factory=lambda: new_call(
            direction=Direction.INBOUND,
            target="+61400000001",
            provider="openai",
            now=datetime.now(UTC),
        )
    )
    ended: list[str | None] = field(default_factory=list)
    dtmf: list[str] = field(default_factory=list)
    results: list[Mapping[str, Any]] = field(default_factory=list)

    @classmethod
    def for_provider(cls, provider: str) -> FakeHandle:
        return cls(
            new_call(
                direction=Direction.INBOUND,
                target="+61400000001",
                provider=provider,
                now=datetime.now(UTC),
            )
        )

    def add_transcript(self, speaker: Speaker, text: str) -> None:
        self.record = add_transcript(self.record, speaker, text, datetime.now(UTC))

    def said(self, speaker: Speaker) -> list[str]:
        return [e.text for e in self.record.transcript if e.speaker == speaker]

    def record_function_call(self, call: FunctionCallRecord) -> None:
        self.record = add_function_call(self.record, call)

    def switch_provider(self, provider: str, reason: str | None) -> None:
        self.record = switch_provider(self.record, provider, reason, datetime.now(UTC))

    def served_by(self) -> list[str]:
        return [segment.provider for segment in self.record.providers]

    def end_call(self, reason: str | None) -> None:
        self.ended.append(reason)

    async def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    async def transfer(self, target: str) -> TransferOutcome:
        return TransferOutcome(False, None, "not in this test")

    def report_result(self, result: Mapping[str, Any]) -> None:
        self.results.append(result)
