"""CallManager: turns SIP engine events and API commands into call records.

The manager owns every active call. Status changes go through ``calls.transition`` and are
persisted in the store before anyone is told. The AI side of a call is plugged in through a
``ConversationFactory`` (the audio bridge and providers); without one, a call just stays connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sip4ai.calls import (
    CallRecord,
    CallStatus,
    Direction,
    FunctionCallRecord,
    Speaker,
    new_call,
    transition,
    utc_now,
)
from sip4ai.errors import AIUnavailable, CallNotFound, CallStateError, SipUnavailable
from sip4ai.metrics import Metrics
from sip4ai.sip.interface import (
    DialRequest,
    DtmfReceived,
    EndCause,
    IncomingCall,
    LegAnswered,
    LegEnded,
    LegRinging,
    MediaReady,
    MediaStream,
    RegistrationChanged,
    RegistrationState,
    SipEngine,
    SipEvent,
    TransferResult,
)
from sip4ai.store import CallStore


if TYPE_CHECKING:
    from sip4ai.functions import TransferOutcome


logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
GOODBYE_TIMEOUT_S = 5.0
"""The longest a goodbye may take; max_duration_seconds starts it this early."""


class Conversation(Protocol):
    """The AI side of one call (bridge + provider session, or an audio file)."""

    async def prepare(self) -> None:
        """Connect to the provider before an inbound call is answered (bounded by the caller)."""
        ...

    async def run(self, media: MediaStream) -> str | None:
        """Serve the call until it should end; return an end reason to hang up, or None."""
        ...

    def inject(self, message: str, role: str) -> None: ...

    def dtmf(self, digit: str) -> None: ...

    async def goodbye(self) -> None:
        """Say a brief goodbye (bounded); the manager hangs up afterwards."""
        ...

    async def finish_speaking(self) -> None:
        """Return once the reply being generated has been played out (bounded by the caller)."""
        ...

    async def aclose(self) -> None: ...


class CallHandle(Protocol):
    """What a Conversation may do to its own call."""

    @property
    def record(self) -> CallRecord: ...

    def add_transcript(self, speaker: Speaker, text: str) -> None: ...

    def record_function_call(self, call: FunctionCallRecord) -> None: ...

    def switch_provider(self, provider: str, reason: str | None) -> None:
        """``provider`` serves the call from now on (``reason``: why the last one stopped)."""
        ...

    def end_call(self, reason: str | None) -> None:
        """End the call once the AI's current reply has been heard (returns at once)."""
        ...

    async def send_dtmf(self, digits: str) -> None: ...

    async def transfer(self, target: str) -> TransferOutcome: ...

    def report_result(self, result: Mapping[str, Any]) -> None: ...


ConversationFactory = Callable[[CallHandle], Conversation]


@dataclass(eq=False)
class ActiveCall:
    record: CallRecord
    leg_id: str | None = None
    conversation: Conversation | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    injected: list[tuple[str, str]] = field(default_factory=list)
    ending: bool = False
    end_reason: str | None = None
    """Why sip4ai is ending the call, once it decided to (API, max duration, the AI...)."""
    saves: set[asyncio.Task[None]] = field(default_factory=set)
    """Background persists of in-call updates; the final state waits for them, never cancels."""
    transfer: asyncio.Future[TransferResult] | None = None
    """Pending while a REFER sent for this call waits for its outcome."""


class CallManager:
    def __init__(
        self,
        *,
        store: CallStore,
        metrics: Metrics,
        engine: SipEngine | None,
        default_provider: str,
        max_calls: int = 100,
        conversation_factory: ConversationFactory | None = None,
        answer_timeout_s: float = 5.0,
        ai_available: bool = True,
        task_results: Callable[[CallRecord, Mapping[str, Any]], None] | None = None,
        hangup_on_task_complete: bool = True,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.engine = engine
        self.default_provider = default_provider
        self.max_calls = max_calls
        self.conversation_factory = conversation_factory
        self.answer_timeout_s = answer_timeout_s
        self.ai_available = ai_available
        self.task_results = task_results
        """Where report_result goes (the result_webhook through the outbox)."""
        self.hangup_on_task_complete = hangup_on_task_complete
        """False when no AI can serve calls: inbound ones are refused, outbound ones not placed."""
        self.now = now
        self.active: dict[str, ActiveCall] = {}
        self._by_leg: dict[str, ActiveCall] = {}
        self.registration = RegistrationState.UNREGISTERED
        self._listeners: list[Callable[[CallRecord, str], None]] = []
        self.registration_changed = asyncio.Event()
        """Pulsed on every registration state change (set, then cleared at once)."""
        self._idle = asyncio.Event()
        """Set whenever no call is active (shutdown waits on it)."""

    # ---- observers -------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[CallRecord, str], None]) -> None:
        """Called with (record, event name) after every persisted change, on the loop."""
        self._listeners.append(listener)

    @property
    def sip_registered(self) -> bool:
        return self.registration is RegistrationState.REGISTERED

    # ---- persistence -----------------------------------------------------------------------

    async def _commit(self, call: ActiveCall, record: CallRecord, event: str) -> None:
        call.record = record
        await self.store.save(record)
        for listener in self._listeners:
            listener(record, event)

    async def _set_status(
        self, call: ActiveCall, status: CallStatus, *, reason: str | None = None, **extra: Any
    ) -> None:
        if call.record.status is status or not call.record.status.active:
            return
        if not status.active and call.saves:
            # Earlier updates (transcript segments) are persisted and announced first.
            await asyncio.gather(*call.saves, return_exceptions=True)
            if call.record.ended_at is not None:  # ended meanwhile by another path
                return
        record = transition(call.record, status, self.now(), reason=reason)
        if extra:
            record = replace(record, **extra)
        logger.info("= call %s: %s -> %s", record.id, call.record.status, status)
        await self._commit(call, record, f"call.{status.value}")
        if not status.active:
            self._finish(call)

    def _finish(self, call: ActiveCall) -> None:
        record = call.record
        self.active.pop(record.id, None)
        if call.leg_id is not None:
            self._by_leg.pop(call.leg_id, None)
        self.metrics.active_calls.set(len(self.active))
        if not self.active:
            self._idle.set()
        self.metrics.calls.labels(
            record.direction.value, record.status.value, record.end_reason or ""
        ).inc()
        self.metrics.call_duration.labels(record.direction.value).observe(record.duration or 0)
        current = asyncio.current_task()
        for task in call.tasks:
            if task is not current:
                task.cancel()

    def _spawn(self, call: ActiveCall, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"call-{call.record.id}:{name}")
        call.tasks.add(task)
        task.add_done_callback(call.tasks.discard)
        task.add_done_callback(self._log_task_failure)

    @staticmethod
    def _log_task_failure(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("! %s failed", task.get_name(), exc_info=task.exception())

    # ---- API commands ----------------------------------------------------------------------

    async def start(self) -> None:
        """Close the records of calls a crash left active (each one gets its call.failed event)."""
        for record in await self.store.mark_orphans_failed(self.now()):
            for listener in self._listeners:
                listener(record, "call.failed")

    async def get(self, call_id: str) -> CallRecord:
        call = self.active.get(call_id)
        if call is not None:
            return call.record
        record = await self.store.get(call_id)
        if record is None:
            raise CallNotFound("call not found")
        return record

    async def list_calls(
        self, *, limit: int, offset: int, status: CallStatus | None
    ) -> tuple[list[CallRecord], int]:
        return await self.store.list_page(limit=limit, offset=offset, status=status)

    def live_calls(self) -> list[CallRecord]:
        return [c.record for c in self.active.values()]

    async def create_outbound(
        self, target: str, *, provider: str | None = None, **details: Any
    ) -> CallRecord:
        if self.engine is None:
            raise SipUnavailable("SIP is not configured: set SIP_USERNAME, SIP_PASSWORD, ...")
        if not self.ai_available:
            raise AIUnavailable("no AI provider key is configured and no AUDIO_FILE is set")
        if len(self.active) >= self.max_calls:
            raise CallStateError(f"the limit of {self.max_calls} simultaneous calls is reached")
        record = new_call(
            direction=Direction.OUTBOUND,
            target=target,
            provider=provider or self.default_provider,
            now=self.now(),
            **details,
        )
        call = ActiveCall(record)
        self.active[record.id] = call
        self.metrics.active_calls.set(len(self.active))
        await self._commit(call, record, "call.initiated")
        self._spawn(call, self._dial(call), "dial")
        return record

    async def _dial(self, call: ActiveCall) -> None:
        assert self.engine is not None
        record = call.record
        request = DialRequest(target=record.target, caller_id=record.caller_id)
        try:
            leg_id = await self.engine.dial(request)
        except Exception as exc:  # the engine refused: the call fails with its reason
            logger.warning("! call %s: dial failed: %s", record.id, exc)
            await self._set_status(call, CallStatus.FAILED, reason=EndCause.ERROR.value)
            return
        call.leg_id = leg_id
        self._by_leg[leg_id] = call
        if call.ending:
            await self.engine.hangup(leg_id)

    async def inject(self, call_id: str, message: str, role: str) -> CallRecord:
        call = self._require_active(call_id)
        call.injected.append((role, message))
        if call.conversation is not None:
            call.conversation.inject(message, role)
        return call.record

    async def end(self, call_id: str) -> CallRecord:
        call = self._require_active(call_id)
        if not call.ending:
            call.ending = True
            self._spawn(call, self._end(call, "api_hangup"), "end")
        return call.record

    def _require_active(self, call_id: str) -> ActiveCall:
        call = self.active.get(call_id)
        if call is not None:
            return call
        raise CallStateError("call is not active")

    async def _end(self, call: ActiveCall, reason: str) -> None:
        call.end_reason = reason
        if call.conversation is not None and call.record.status is CallStatus.IN_PROGRESS:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.conversation.goodbye(), timeout=GOODBYE_TIMEOUT_S)
        if call.leg_id is not None and self.engine is not None:
            await self.engine.hangup(call.leg_id)
            return  # the LegEnded event completes the record
        await self._finalize(call, reason)

    async def shutdown(self) -> None:
        """Hang up every call and wait (bounded) until each one's record is final."""
        for call in list(self.active.values()):
            call.ending = True
            call.end_reason = call.end_reason or "shutdown"
            if call.leg_id is not None and self.engine is not None:
                with contextlib.suppress(Exception):
                    await self.engine.hangup(call.leg_id)
            else:
                await self._finalize(call, "shutdown")
        if self.active:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), SHUTDOWN_GRACE_S)
        for call in list(self.active.values()):
            await self._finalize(call, "shutdown")

    async def _finalize(self, call: ActiveCall, reason: str) -> None:
        status = CallStatus.COMPLETED if call.record.answered_at else CallStatus.FAILED
        await self._set_status(call, status, reason=reason)

    # ---- conversation hooks ----------------------------------------------------------------

    def handle(self, call: ActiveCall) -> CallHandle:
        from sip4ai.callhandle import ManagedCall  # it builds on this module

        return ManagedCall(self, call)

    def spawn(self, call: ActiveCall, coro: Awaitable[Any], name: str) -> None:
        self._spawn(call, coro, name)

    def update(self, call: ActiveCall, record: CallRecord, event: str) -> None:
        """Apply an in-call change at once; persist and announce it in the background.

        Saves always write the call's current record (records only move forward, and the
        store's single thread keeps submission order), so a late save never rolls a call back.
        """
        call.record = record

        async def persist() -> None:
            await self.store.save(call.record)
            for listener in self._listeners:
                listener(record, event)

        task = asyncio.create_task(persist(), name=f"call-{record.id}:save")
        call.saves.add(task)
        task.add_done_callback(call.saves.discard)
        task.add_done_callback(self._log_task_failure)

    async def end_with(self, call: ActiveCall, reason: str) -> None:
        """End the call now (no goodbye of our own) with ``reason``; idempotent."""
        if call.ending or not call.record.status.active:
            return
        call.ending = True
        call.end_reason = reason
        if call.leg_id is not None and self.engine is not None:
            await self.engine.hangup(call.leg_id)
        else:
            await self._finalize(call, reason)

    # ---- SIP events ------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume the engine's events until it stops."""
        if self.engine is None:
            return
        async for event in self.engine.events():
            try:
                await self.dispatch(event)
            except Exception:
                logger.exception("! handling %s failed", type(event).__name__)

    async def dispatch(self, event: SipEvent) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            await handler(self, event)

    async def _on_registration(self, event: RegistrationChanged) -> None:
        self.registration = event.state
        self.registration_changed.set()
        self.registration_changed.clear()
        self.metrics.sip_registered.set(1 if self.sip_registered else 0)
        if event.state is RegistrationState.FAILED:
            self.metrics.sip_registration_failures.labels(event.reason).inc()

    async def _on_incoming(self, event: IncomingCall) -> None:
        assert self.engine is not None
        if len(self.active) >= self.max_calls:
            logger.warning("! rejecting a call: %d calls active (max_calls)", len(self.active))
            await self.engine.reject(event.leg_id, 486, "Busy Here")
            return
        if not self.ai_available:
            logger.warning("! rejecting a call: no AI provider key and no AUDIO_FILE")
            await self.engine.reject(event.leg_id, 480, "Temporarily Unavailable")
            return
        record = new_call(
            direction=Direction.INBOUND,
            target=event.from_user or "anonymous",
            provider=self.default_provider,
            now=self.now(),
            status=CallStatus.RINGING,
        )
        call = ActiveCall(record, leg_id=event.leg_id)
        self.active[record.id] = call
        self._by_leg[event.leg_id] = call
        self.metrics.active_calls.set(len(self.active))
        logger.info("< incoming call %s", record.id, extra={"pii.from": event.from_user})
        await self._commit(call, record, "call.ringing")
        self._spawn(call, self._answer(call), "answer")

    async def _answer(self, call: ActiveCall) -> None:
        assert self.engine is not None and call.leg_id is not None
        if self.conversation_factory is not None:
            call.conversation = self.conversation_factory(self.handle(call))
            try:
                await asyncio.wait_for(call.conversation.prepare(), self.answer_timeout_s)
            except TimeoutError:
                logger.warning(
                    "! call %s: AI side not ready in time, answering anyway", call.record.id
                )
        await self.engine.answer(call.leg_id)

    async def _on_ringing(self, event: LegRinging) -> None:
        call = self._by_leg.get(event.leg_id)
        if call is not None and call.record.status is CallStatus.INITIATING:
            await self._set_status(call, CallStatus.RINGING)

    async def _on_answered(self, event: LegAnswered) -> None:
        call = self._by_leg.get(event.leg_id)
        if call is None:
            return
        await self._set_status(call, CallStatus.IN_PROGRESS)
        if call.conversation is None and self.conversation_factory is not None:
            call.conversation = self.conversation_factory(self.handle(call))
        self._spawn(call, self._limit_duration(call), "max-duration")

    async def _on_media(self, event: MediaReady) -> None:
        call = self._by_leg.get(event.leg_id)
        if call is None or self.engine is None:
            return
        media = self.engine.media(event.leg_id)
        if call.conversation is not None and media is not None:
            self._spawn(call, self._converse(call, call.conversation, media), "conversation")

    async def _converse(
        self, call: ActiveCall, conversation: Conversation, media: MediaStream
    ) -> None:
        try:
            reason = await conversation.run(media)
        finally:
            await conversation.aclose()
            self._count_media(media)
        if reason is not None and call.record.status.active and not call.ending:
            call.ending = True
            await self._end(call, reason)

    def _count_media(self, media: MediaStream) -> None:
        try:
            lost = media.stats().frames_lost
        except Exception:  # the stream may already be gone with the leg
            return
        if lost:
            self.metrics.audio_frames_lost.inc(lost)

    async def _limit_duration(self, call: ActiveCall) -> None:
        """Start the goodbye early enough that the call is over by max_duration_seconds."""
        await asyncio.sleep(max(0.0, call.record.max_duration_seconds - GOODBYE_TIMEOUT_S))
        if call.record.status.active and not call.ending:
            logger.info("= call %s: max_duration_seconds reached", call.record.id)
            call.ending = True
            await self._end(call, "max_duration")

    async def _on_ended(self, event: LegEnded) -> None:
        call = self._by_leg.get(event.leg_id)
        if call is None:
            return
        if call.record.status is CallStatus.IN_PROGRESS:
            reason = call.end_reason or event.cause.value
            await self._set_status(call, CallStatus.COMPLETED, reason=reason)
        else:
            reason = call.end_reason or event.cause.value
            await self._set_status(
                call, CallStatus.FAILED, reason=reason, sip_status=event.status_code
            )

    async def _on_transfer(self, event: TransferResult) -> None:
        call = self._by_leg.get(event.leg_id)
        if call is not None and call.transfer is not None and not call.transfer.done():
            call.transfer.set_result(event)

    async def _on_dtmf(self, event: DtmfReceived) -> None:
        call = self._by_leg.get(event.leg_id)
        if call is not None and call.conversation is not None:
            call.conversation.dtmf(event.digit)

    _handlers: Mapping[type, Callable[[CallManager, Any], Awaitable[None]]] = {
        RegistrationChanged: _on_registration,
        IncomingCall: _on_incoming,
        LegRinging: _on_ringing,
        LegAnswered: _on_answered,
        MediaReady: _on_media,
        LegEnded: _on_ended,
        DtmfReceived: _on_dtmf,
        TransferResult: _on_transfer,
    }
