"""SipEngine on the pjsua2-python 2.15.1.post1 wheel (pjproject 2.15.1).

The library runs SIP on its own worker thread and audio on its clock thread; ``PjStack`` runs
every command on one registered thread and posts plain notices to the loop, where this class
keeps the legs and turns the notices into SipEvents. Nothing here holds a library object.

Limits of the wheel (README, /status): at most 4 simultaneous calls per process (pjsua answers
a fifth INVITE with 486 itself; a warning says why), Linux x86_64 and Python <= 3.12, TLS 1.2
through the bundled OpenSSL 1.0.2k.

Log prefixes: ``>`` sent, ``<`` received, ``=`` state, ``x`` teardown, ``!`` error. Caller and
callee numbers only ever go into ``extra={"pii.<name>": ...}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sip4ai.config import SipConfig
from sip4ai.errors import CallError, CallStateError, SipUnavailable
from sip4ai.sip.interface import (
    DialRequest,
    DtmfReceived,
    EndCause,
    HoldChanged,
    IncomingCall,
    LegAnswered,
    LegEnded,
    LegRinging,
    MediaReady,
    MediaStream,
    RegistrationState,
    SipEvent,
    TransferResult,
)
from sip4ai.sip.pjsua2_events import (
    CallAnswered,
    CallEnded,
    CallIncoming,
    CallMedia,
    CallRinging,
    DtmfDigit,
    PjNotice,
    RegState,
    TooManyCalls,
    TransferStatus,
    end_outcome,
)
from sip4ai.sip.pjsua2_media import PjMediaStream
from sip4ai.sip.pjsua2_registration import BackoffPolicy, DefaultBackoff, PjRegistration
from sip4ai.sip.pjsua2_settings import PJSUA_MAX_CALLS, caller_uri, plan_pjsua2
from sip4ai.sip.pjsua2_stack import PjStack, StackError
from sip4ai.sip.uri import TrustedSources, parse_name_addr, request_uri


__all__ = ["Pjsua2Engine"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
STOP_HANGUP_WAIT_S = 3.0
MEDIA_TIMEOUT_POLL_S = 0.5
DTMF_DIGIT_S = 0.2
"""Time one RFC 4733 digit takes on the wire (160 ms tone, end packets, gap)."""


@dataclass(eq=False, slots=True)
class _Leg:
    leg_id: str
    inbound: bool
    announced: bool = False
    ringing: bool = False
    answered: bool = False
    local_hangup: bool = False
    no_answer_timeout: bool = False
    media_timeout: bool = False
    transferred: bool = False
    transfer_pending: bool = False
    ended: bool = False
    on_hold: bool = False
    media: PjMediaStream | None = None
    pending_media: CallMedia | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class Pjsua2Engine:
    """One SIP user agent process-wide (pjsua2 allows one Endpoint per process)."""

    def __init__(self, config: SipConfig, *, backoff: BackoffPolicy | None = None) -> None:
        self._config = config
        self._plan = plan_pjsua2(config)
        self._backoff = backoff or DefaultBackoff()
        self._queue: asyncio.Queue[SipEvent | None] = asyncio.Queue()
        self._stack: PjStack | None = None
        self._legs: dict[str, _Leg] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._registration: PjRegistration | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._state = "new"
        self._stopped: asyncio.Future[None] | None = None

    # ---- SipEngine: lifecycle -----------------------------------------------------------------

    @property
    def registration(self) -> RegistrationState:
        if self._registration is None:
            return RegistrationState.UNREGISTERED
        return self._registration.state

    @property
    def name(self) -> str:
        return "pjsua2"

    async def start(self) -> None:
        if self._state != "new":
            raise SipUnavailable(f"engine cannot start in state {self._state}")
        self._state = "starting"
        password = self._config.password.reveal() if self._config.password else ""
        stack = PjStack(
            self._plan,
            password=password,
            trusted=await self._resolve_trusted_sources(),
            sink=self._on_notice,
        )
        try:
            await stack.start()
        except (StackError, OSError) as exc:
            self._state = "stopped"
            raise SipUnavailable(f"SIP stack failed to start: {exc}") from exc
        self._stack = stack
        self._state = "running"
        logger.info(
            "= SIP stack up (pjsua2): listen %s (%s), account %s, max %d calls",
            self._config.listen,
            self._config.transport,
            self._plan.id_uri,
            self._plan.max_calls,
        )
        if self._plan.capped:
            logger.warning(
                "! sip.max_calls=%d but the pjsua2 backend handles at most %d simultaneous calls "
                "per process (PJSUA_MAX_CALLS of the pjsua2-python wheel): further INVITEs get "
                "486 Busy Here; run more processes or use sip.engine=baresip for more",
                self._plan.requested_max_calls,
                PJSUA_MAX_CALLS,
            )
        if self._plan.registers:
            self._registration = PjRegistration(
                set_registration=self._set_registration,
                registrar=self._plan.registrar,
                registrar_host=self._plan.registrar_host,
                emit=self._emit,
                backoff=self._backoff,
            )
            self._spawn(self._registration.run(), "sip-registration")
        elif self._plan.trunk_mode:
            logger.info("= trunk mode: no registration, INVITEs accepted from trusted sources")

    async def stop(self) -> None:
        if self._stopped is not None:
            await self._stopped
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            if self._state == "running" and self._stack is not None:
                self._state = "stopping"
                await self._hangup_all()
                for task in list(self._tasks):
                    if task.get_name() == "sip-registration":
                        task.cancel()
                if self._registration is not None:
                    await self._registration.unregister()
                await self._cancel_tasks()
                await self._stack.close()
            await self._cancel_tasks()
        finally:
            self._state = "stopped"
            self._queue.put_nowait(None)
            self._stopped.set_result(None)
            logger.info("x SIP stack stopped")

    def events(self) -> AsyncIterator[SipEvent]:
        return self._event_stream()

    async def _event_stream(self) -> AsyncIterator[SipEvent]:
        while (event := await self._queue.get()) is not None:
            yield event

    # ---- SipEngine: call commands ---------------------------------------------------------------

    async def answer(self, leg_id: str) -> None:
        leg = self._live_leg(leg_id)
        if leg is None or not leg.inbound or leg.answered or leg.local_hangup:
            return
        logger.info("> 200 OK leg %s", leg_id)
        await self._command(leg, lambda s: s.answer(leg_id, 200), "answer")

    async def reject(self, leg_id: str, status_code: int = 486, reason: str = "Busy Here") -> None:
        leg = self._live_leg(leg_id)
        if leg is None or leg.answered or leg.local_hangup:
            return
        leg.local_hangup = True
        logger.info("> %d %s leg %s", status_code, reason, leg_id)
        await self._command(leg, lambda s: s.hangup(leg_id, status_code, reason), "reject")

    async def hangup(self, leg_id: str) -> None:
        leg = self._live_leg(leg_id)
        if leg is None or leg.local_hangup:
            return
        leg.local_hangup = True
        if leg.answered or not leg.inbound:
            logger.info("> %s leg %s", "BYE" if leg.answered else "CANCEL", leg_id)
            await self._command(leg, lambda s: s.hangup(leg_id), "hangup")
        else:
            logger.info("> 486 leg %s", leg_id)
            await self._command(leg, lambda s: s.hangup(leg_id, 486, "Busy Here"), "hangup")

    async def dial(self, request: DialRequest) -> str:
        stack = self._stack
        if self._state != "running" or stack is None:
            raise SipUnavailable("the SIP engine is not running")
        try:
            uri = request_uri(request.target, self._plan.domain)
            local = ""
            if request.caller_id or request.display_name:
                user = request.caller_id or self._config.username or "sip4ai"
                local = caller_uri(self._plan, user=user, display=request.display_name or "")
        except ValueError as exc:
            raise CallError(f"cannot dial: {exc}") from None
        headers: dict[str, str] = {}
        if self._config.p_asserted_identity and request.caller_id:
            name = f'"{request.display_name}" ' if request.display_name else ""
            headers["P-Asserted-Identity"] = f"{name}<sip:{request.caller_id}@{self._plan.domain}>"
        leg = _Leg(leg_id=stack.new_leg_id("out"), inbound=False, announced=True)
        self._add_leg(leg)
        try:
            await stack.run(lambda: stack.dial(leg.leg_id, uri, local, headers))
        except StackError as exc:
            self._end_leg(leg)
            if "too many" in str(exc).lower() or len(self._legs) >= self._plan.max_calls:
                logger.warning(
                    "! INVITE not sent: all %d call slots in use (the pjsua2 backend allows at "
                    "most %d simultaneous calls per process)",
                    self._plan.max_calls,
                    PJSUA_MAX_CALLS,
                )
            else:
                logger.warning("! INVITE refused by the stack: %s", exc, extra={"pii.to": uri})
            raise CallError(f"the SIP stack refused to dial: {exc}") from None
        if not leg.ended and not leg.answered:
            loop = asyncio.get_running_loop()
            leg.timers.append(loop.call_later(request.timeout_s, self._on_dial_timeout, leg))
        logger.info("> INVITE leg %s", leg.leg_id, extra={"pii.to": uri})
        return leg.leg_id

    async def send_dtmf(self, leg_id: str, digits: str) -> None:
        leg = self._require_answered(leg_id)
        logger.info("> DTMF leg %s (%d digits)", leg_id, len(digits), extra={"pii.dtmf": digits})
        await self._command(leg, lambda s: s.send_dtmf(leg_id, digits), "send DTMF")
        # The library queues the digits on the stream; they take this long to go out.
        await asyncio.sleep(DTMF_DIGIT_S * len(digits) + 0.1)

    async def transfer(self, leg_id: str, target: str) -> None:
        leg = self._require_answered(leg_id)
        if leg.transfer_pending:
            raise CallStateError("a transfer is already in progress on this leg")
        try:
            uri = request_uri(target, self._plan.domain)
        except ValueError as exc:
            raise CallError(f"cannot transfer: {exc}") from None
        leg.transfer_pending = True
        logger.info("> REFER leg %s", leg_id, extra={"pii.refer_to": uri})
        try:
            await self._command(leg, lambda s: s.transfer(leg_id, uri), "transfer")
        except CallError:
            self._transfer_outcome(leg, success=False, status=None)

    def media(self, leg_id: str) -> MediaStream | None:
        leg = self._legs.get(leg_id)
        return leg.media if leg is not None else None

    # ---- notices from the stack (on the loop) -------------------------------------------------

    def _on_notice(self, notice: PjNotice) -> None:
        if isinstance(notice, RegState):
            if self._registration is not None:
                self._registration.on_reg_state(notice)
            return
        if isinstance(notice, TooManyCalls):
            logger.warning(
                "! INVITE rejected with 486 Busy Here: all %d call slots are in use (sip.max_calls"
                "=%d; the pjsua2 backend allows at most %d simultaneous calls per process)",
                self._plan.max_calls,
                self._plan.requested_max_calls,
                PJSUA_MAX_CALLS,
            )
            return
        if isinstance(notice, CallIncoming):
            self._on_incoming(notice)
            return
        leg = self._legs.get(notice.leg_id)
        if leg is None or leg.ended:
            return
        if isinstance(notice, CallRinging):
            if not leg.ringing:
                leg.ringing = True
                logger.info("< ringing leg %s", leg.leg_id)
                self._emit(LegRinging(leg.leg_id))
        elif isinstance(notice, CallAnswered):
            self._on_answered(leg)
        elif isinstance(notice, CallMedia):
            self._on_media(leg, notice)
        elif isinstance(notice, DtmfDigit):
            logger.info(
                "< DTMF leg %s (%s)", leg.leg_id, notice.method, extra={"pii.dtmf": notice.digit}
            )
            self._emit(DtmfReceived(leg.leg_id, notice.digit, notice.method))
        elif isinstance(notice, TransferStatus):
            self._on_transfer_status(leg, notice)
        elif isinstance(notice, CallEnded):
            self._on_ended(leg, notice)

    def _on_incoming(self, notice: CallIncoming) -> None:
        leg = _Leg(leg_id=notice.leg_id, inbound=True, announced=True)
        self._add_leg(leg)
        caller = parse_name_addr(notice.remote_uri)
        callee = parse_name_addr(notice.local_uri)
        logger.info(
            "< INVITE leg %s from %s", leg.leg_id, notice.source, extra={"pii.from": caller.user}
        )
        self._emit(
            IncomingCall(leg.leg_id, caller.user, caller.display, callee.user, notice.source)
        )

    def _on_answered(self, leg: _Leg) -> None:
        if leg.answered:
            return
        leg.answered = True
        leg.cancel_timers()
        logger.info("= leg %s established", leg.leg_id)
        self._emit(LegAnswered(leg.leg_id))
        if leg.pending_media is not None:
            pending, leg.pending_media = leg.pending_media, None
            self._on_media(leg, pending)

    def _on_media(self, leg: _Leg, notice: CallMedia) -> None:
        if not leg.answered:
            leg.pending_media = notice  # the 200 OK carries the SDP: media precedes the ACK
            return
        stream = self._stack.stream(leg.leg_id) if self._stack is not None else None
        if stream is not None and stream is not leg.media:
            first = leg.media is None
            leg.media = stream
            if first:
                logger.info(
                    "= leg %s media ready: %s %d Hz", leg.leg_id, notice.codec, notice.rate_hz
                )
                self._emit(MediaReady(leg.leg_id, notice.codec, notice.rate_hz))
                if self._plan.rtp_timeout_s > 0:
                    self._spawn(self._watch_rtp(leg), f"leg-{leg.leg_id}:rtp-timeout")
        if notice.on_hold != leg.on_hold:
            leg.on_hold = notice.on_hold
            logger.info("< %s leg %s", "hold" if notice.on_hold else "resume", leg.leg_id)
            self._emit(HoldChanged(leg.leg_id, notice.on_hold))

    def _on_transfer_status(self, leg: _Leg, notice: TransferStatus) -> None:
        if not notice.final or not leg.transfer_pending:
            return
        success = 200 <= notice.status_code < 300
        self._transfer_outcome(leg, success=success, status=notice.status_code)
        if success and not leg.local_hangup:
            leg.transferred = True
            leg.local_hangup = True
            logger.info("> BYE leg %s (transferred)", leg.leg_id)
            stack = self._stack
            if stack is not None:
                self._spawn(
                    self._quiet(stack.run(lambda: stack.hangup(leg.leg_id)), "hangup"),
                    f"leg-{leg.leg_id}:bye",
                )

    def _on_ended(self, leg: _Leg, notice: CallEnded) -> None:
        if leg.transfer_pending:
            self._transfer_outcome(leg, success=False, status=None)
        outcome = end_outcome(
            inbound=leg.inbound,
            answered=leg.answered,
            status_code=notice.status_code,
            reason=notice.reason,
            local_hangup=leg.local_hangup,
            no_answer_timeout=leg.no_answer_timeout,
            media_timeout=leg.media_timeout,
            transferred=leg.transferred,
        )
        self._end_leg(leg)
        logger.info(
            "= leg %s ended: %s (%s)", leg.leg_id, outcome.cause.value, outcome.reason or "-"
        )
        self._emit(LegEnded(leg.leg_id, outcome.cause, outcome.status_code, outcome.reason))

    def _transfer_outcome(self, leg: _Leg, *, success: bool, status: int | None) -> None:
        if not leg.transfer_pending:
            return
        leg.transfer_pending = False
        logger.info("< transfer leg %s: %s (%s)", leg.leg_id, "ok" if success else "failed", status)
        self._emit(TransferResult(leg.leg_id, success, status))

    # ---- timers -------------------------------------------------------------------------------

    def _on_dial_timeout(self, leg: _Leg) -> None:
        if leg.ended or leg.answered or leg.local_hangup or self._stack is None:
            return
        logger.info("= leg %s: no answer before the dial timeout, cancelling", leg.leg_id)
        leg.no_answer_timeout = True
        leg.local_hangup = True
        stack = self._stack
        self._spawn(
            self._quiet(stack.run(lambda: stack.hangup(leg.leg_id)), "cancel"),
            f"leg-{leg.leg_id}:cancel",
        )

    async def _watch_rtp(self, leg: _Leg) -> None:
        """End the call when no RTP arrived for ``rtp_timeout_s`` (not while held)."""
        stack = self._stack
        assert stack is not None
        loop = asyncio.get_running_loop()
        last_count, last_change = -1, loop.time()
        while not leg.ended and not leg.local_hangup:
            await asyncio.sleep(MEDIA_TIMEOUT_POLL_S)
            try:
                count = await stack.run(lambda: stack.rx_packets(leg.leg_id))
            except StackError:
                count = None
            now = loop.time()
            if count is None or count != last_count or leg.on_hold:
                last_count, last_change = (count if count is not None else last_count), now
                continue
            if now - last_change >= self._plan.rtp_timeout_s and not leg.ended:
                logger.warning(
                    "! leg %s: no RTP for %d s (sip.rtp_timeout_s), hanging up",
                    leg.leg_id,
                    self._plan.rtp_timeout_s,
                )
                leg.media_timeout = True
                leg.local_hangup = True
                await self._quiet(stack.run(lambda: stack.hangup(leg.leg_id)), "hangup")
                return

    # ---- helpers ------------------------------------------------------------------------------

    async def _set_registration(self, on: bool) -> None:
        stack = self._stack
        assert stack is not None
        await stack.run(lambda: stack.set_registration(on))

    def _live_leg(self, leg_id: str) -> _Leg | None:
        leg = self._legs.get(leg_id)
        if leg is None or leg.ended:
            logger.debug("leg %s is gone; command ignored", leg_id)
            return None
        return leg

    def _require_answered(self, leg_id: str) -> _Leg:
        leg = self._live_leg(leg_id)
        if leg is None:
            raise CallStateError(f"leg {leg_id} has ended")
        if not leg.answered:
            raise CallStateError(f"leg {leg_id} is not answered")
        return leg

    async def _command(self, leg: _Leg, command: Callable[[PjStack], None], what: str) -> None:
        stack = self._stack
        if stack is None:
            raise SipUnavailable("the SIP engine is not running")
        try:
            await stack.run(lambda: command(stack))
        except StackError as exc:
            if leg.ended:
                logger.debug("%s on leg %s: call already gone", what, leg.leg_id)
                return
            logger.warning("! %s on leg %s failed: %s", what, leg.leg_id, exc)
            raise CallError(f"{what} failed: {exc}") from None

    async def _quiet(self, command: Awaitable[T], what: str) -> None:
        try:
            await command
        except StackError as exc:
            logger.debug("%s: %s", what, exc)

    async def _resolve_trusted_sources(self) -> TrustedSources:
        """Host names in trusted_sources are resolved once, at start."""
        loop = asyncio.get_running_loop()
        entries: list[str] = []
        for entry in self._config.trusted_sources:
            try:
                TrustedSources([entry])
            except ValueError:
                pass
            else:
                entries.append(entry)
                continue
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(entry, None), 5.0)
            except (OSError, TimeoutError) as exc:
                raise SipUnavailable(
                    f"sip.trusted_sources: cannot resolve {entry}: {exc}"
                ) from None
            entries.extend(str(info[4][0]) for info in infos)
        return TrustedSources(entries)

    async def _hangup_all(self) -> None:
        stack = self._stack
        assert stack is not None
        for leg in self._legs.values():
            leg.local_hangup = True
        if self._legs:
            await self._quiet(stack.run(stack.hangup_all), "hangup at stop")
        try:
            await asyncio.wait_for(self._idle.wait(), STOP_HANGUP_WAIT_S)
        except TimeoutError:
            logger.warning("! %d legs did not close in time at stop", len(self._legs))
        for leg in list(self._legs.values()):
            self._end_leg(leg)
            self._emit(LegEnded(leg.leg_id, EndCause.LOCAL_HANGUP, None, "shutdown"))

    def _add_leg(self, leg: _Leg) -> None:
        self._legs[leg.leg_id] = leg
        self._idle.clear()

    def _end_leg(self, leg: _Leg) -> None:
        leg.ended = True
        leg.cancel_timers()
        if leg.media is not None:
            leg.media.close()
        self._legs.pop(leg.leg_id, None)
        if not self._legs:
            self._idle.set()

    def _emit(self, event: SipEvent) -> None:
        self._queue.put_nowait(event)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("! task %s failed: %r", task.get_name(), exc)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
