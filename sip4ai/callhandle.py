"""What a conversation may do to its own call: transcripts, function records, and the call
control behind the AI's built-in tools (end_call, send_dtmf, transfer, report_result)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from sip4ai.calls import (
    CallRecord,
    FunctionCallRecord,
    Speaker,
    add_function_call,
    add_transcript,
    switch_provider,
)
from sip4ai.functions import TransferOutcome
from sip4ai.manager import ActiveCall, CallManager
from sip4ai.sip.interface import EndCause


logger = logging.getLogger(__name__)

TRANSFER_TIMEOUT_S = 30.0
FINISH_SPEAKING_TIMEOUT_S = 8.0


class ManagedCall:
    """The CallHandle a CallManager gives each conversation."""

    def __init__(self, manager: CallManager, call: ActiveCall) -> None:
        self._manager = manager
        self._call = call

    @property
    def record(self) -> CallRecord:
        return self._call.record

    def _update(self, record: CallRecord, event: str) -> None:
        self._manager.update(self._call, record, event)

    def add_transcript(self, speaker: Speaker, text: str) -> None:
        if self._call.record.status.active:
            self._update(
                add_transcript(self._call.record, speaker, text, self._manager.now()),
                "transcript.update",
            )

    def record_function_call(self, call: FunctionCallRecord) -> None:
        if self._call.record.status.active:
            self._update(add_function_call(self._call.record, call), "function.called")

    def switch_provider(self, provider: str, reason: str | None) -> None:
        if self._call.record.status.active:
            record = switch_provider(self._call.record, provider, reason, self._manager.now())
            self._update(record, "call.provider")

    def end_call(self, reason: str | None) -> None:
        self._manager.spawn(self._call, self._end_after_reply(reason or "ai_ended"), "end")

    async def _end_after_reply(self, reason: str) -> None:
        conversation = self._call.conversation
        if conversation is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conversation.finish_speaking(), FINISH_SPEAKING_TIMEOUT_S)
        await self._manager.end_with(self._call, reason)

    async def send_dtmf(self, digits: str) -> None:
        engine, leg = self._manager.engine, self._call.leg_id
        if engine is None or leg is None:
            raise RuntimeError("the call has no SIP leg")
        await engine.send_dtmf(leg, digits)

    async def transfer(self, target: str) -> TransferOutcome:
        engine, call = self._manager.engine, self._call
        if engine is None or call.leg_id is None:
            return TransferOutcome(False, None, "the call has no SIP leg")
        call.transfer = asyncio.get_running_loop().create_future()
        call.end_reason = EndCause.TRANSFERRED.value  # the leg ends once the REFER succeeds
        try:
            await engine.transfer(call.leg_id, target)
            result = await asyncio.wait_for(call.transfer, TRANSFER_TIMEOUT_S)
        except TimeoutError:
            call.end_reason = None
            return TransferOutcome(False, None, "no answer to the transfer request")
        except Exception as exc:  # the engine refused to send the REFER
            call.end_reason = None
            return TransferOutcome(False, None, str(exc))
        finally:
            call.transfer = None
        if not result.success:
            call.end_reason = None
            return TransferOutcome(False, result.status_code, "transfer refused")
        logger.info("= call %s: transferred", call.record.id)
        return TransferOutcome(True, result.status_code, "transferred")

    def report_result(self, result: Mapping[str, Any]) -> None:
        sink = self._manager.task_results
        if sink is not None:
            sink(self._call.record, result)
        if self._manager.hangup_on_task_complete:
            self.end_call("task_complete")
