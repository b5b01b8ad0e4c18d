"""Translation of the stack's per-call events into sip4ai's SipEvents, one leg at a time.

``CallTracker`` owns the legs. Every stack event with a call handle comes here (on the loop);
events of a handle no leg has claimed yet wait in an ``OrphanBuffer`` until the leg exists: an
inbound call is claimed from the CALL_INCOMING dispatch itself, an outbound one when
``dial()`` returns, which is how nothing is lost to the library's ``dial()`` race.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from sip4ai.sip.baresip_facade import AudioFormat, CallControl, MediaInactive, Notice, StackError
from sip4ai.sip.baresip_legs import Leg, OrphanBuffer
from sip4ai.sip.baresip_media import BaresipMediaStream
from sip4ai.sip.baresip_wire import WireIndex
from sip4ai.sip.causes import CLOSE_TRANSFERRED, classify_close, split_status
from sip4ai.sip.interface import (
    DtmfReceived,
    EndCause,
    HoldChanged,
    IncomingCall,
    LegAnswered,
    LegEnded,
    LegRinging,
    MediaReady,
    SipEvent,
    TransferResult,
)
from sip4ai.sip.sipmsg import TraceRecord
from sip4ai.sip.uri import TrustedSources, parse_name_addr, via_source


__all__ = ["CallTracker"]

logger = logging.getLogger(__name__)

MEDIA_POLL_S = 0.005
MEDIA_WAIT_S = 5.0
TRUNK_SOURCE_WAIT_S = 1.0
# DTMF is reported this long after the stack's event, so the SIP trace (another thread) can
# tell whether the digit came by SIP INFO.
DTMF_SETTLE_S = 0.04

Spawn = Callable[[Coroutine[Any, Any, None], str], None]


class CallTracker:
    def __init__(
        self,
        *,
        emit: Callable[[SipEvent], None],
        spawn: Spawn,
        trunk_mode: bool,
        codecs: tuple[str, ...],
    ) -> None:
        self._emit = emit
        self._spawn = spawn
        self._trunk_mode = trunk_mode
        self._codecs = codecs
        self.trusted = TrustedSources(())
        self._legs: dict[str, Leg] = {}
        self._by_handle: dict[int, Leg] = {}
        self._orphans = OrphanBuffer()
        self._wire = WireIndex()
        self._ids = itertools.count(1)
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- lookups ------------------------------------------------------------------------------

    def get(self, leg_id: str) -> Leg | None:
        return self._legs.get(leg_id)

    def live(self) -> list[Leg]:
        return [leg for leg in self._legs.values() if not leg.ended]

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # ---- inputs -------------------------------------------------------------------------------

    def on_notice(self, notice: Notice) -> None:
        leg = self._by_handle.get(notice.call)
        if leg is None:
            self._orphans.add(notice)
        else:
            self._apply(leg, notice)

    def on_trace(self, record: TraceRecord) -> None:
        self._wire.add(record)

    def adopt_inbound(self, control: CallControl) -> None:
        """Called from the CALL_INCOMING dispatch: the event itself is already buffered."""
        leg = self._new_leg(control, inbound=True)
        for notice in self._orphans.claim(control.handle):
            self._apply(leg, notice)

    def adopt_outbound(
        self, control: CallControl, *, timeout_s: float, on_timeout: Callable[[Leg], None]
    ) -> Leg:
        leg = self._new_leg(control, inbound=False)
        leg.announced = True
        missed = self._orphans.claim(control.handle)
        if missed:
            logger.debug(
                "= leg %s: %d events arrived before dial() returned: %s",
                leg.leg_id,
                len(missed),
                ",".join(n.kind for n in missed),
            )
        # Those events never reached the library's Call object: replay them into it (its state
        # gates transfer), then translate them like any other.
        control.reconcile(missed)
        for notice in missed:
            self._apply(leg, notice)
        if not leg.ended and not leg.answered:
            loop = asyncio.get_running_loop()
            leg.timers.append(loop.call_later(timeout_s, on_timeout, leg))
        return leg

    def end_all(self, cause: EndCause, reason: str) -> None:
        """Forget every leg now (shutdown leftovers, dead stack), reporting each as ended."""
        for leg in list(self._legs.values()):
            self._end_leg(leg)
            if leg.announced:
                self._emit(LegEnded(leg.leg_id, cause, None, reason))

    def transfer_outcome(self, leg: Leg, *, success: bool, status: int | None) -> None:
        if not leg.transfer_pending:
            return
        leg.transfer_pending = False
        logger.info("< transfer leg %s: %s (%s)", leg.leg_id, "ok" if success else "failed", status)
        self._emit(TransferResult(leg.leg_id, success, status))

    # ---- translation --------------------------------------------------------------------------

    def _apply(self, leg: Leg, notice: Notice) -> None:
        if leg.ended:
            return
        if notice.call_id and not leg.call_id:
            leg.call_id = notice.call_id
        kind = notice.kind
        if kind == "CALL_INCOMING":
            self._admit(leg, notice)
        elif kind in ("CALL_RINGING", "CALL_PROGRESS"):
            if not leg.inbound and not leg.ringing:
                leg.ringing = True
                logger.info("< ringing leg %s", leg.leg_id)
                self._emit(LegRinging(leg.leg_id))
        elif kind == "CALL_ESTABLISHED":
            self._on_established(leg)
        elif kind == "CALL_CLOSED":
            self._on_closed(leg, notice)
        elif kind == "CALL_DTMF_START" and notice.text:
            leg.pending_dtmf.append(notice.text)
            loop = asyncio.get_running_loop()
            leg.timers.append(loop.call_later(DTMF_SETTLE_S, self._flush_dtmf, leg))
        elif kind in ("CALL_HOLD", "CALL_RESUME"):
            on_hold = kind == "CALL_HOLD"
            if on_hold != leg.on_hold:
                leg.on_hold = on_hold
                logger.info("< %s leg %s", "hold" if on_hold else "resume", leg.leg_id)
                self._emit(HoldChanged(leg.leg_id, on_hold))
        elif kind == "CALL_TRANSFER_FAILED":
            self.transfer_outcome(leg, success=False, status=split_status(notice.text)[0])
        elif kind == "CALL_TRANSFER":
            # A peer asked us to call someone else: never executed (toll-fraud stance).
            self._spawn(self._refuse_transfer(leg), f"leg-{leg.leg_id}:refuse-refer")

    def _admit(self, leg: Leg, notice: Notice) -> None:
        facts = self._wire.get(notice.call_id)
        source = facts.source if facts is not None else ""
        if self._trunk_mode and not source:
            # The trace (the packet source) comes through another thread; it is rarely late.
            self._spawn(self._admit_later(leg, notice), f"leg-{leg.leg_id}:admit")
            return
        self._announce(leg, notice, source)

    async def _admit_later(self, leg: Leg, notice: Notice) -> None:
        source = await self._wire.wait_source(notice.call_id, TRUNK_SOURCE_WAIT_S)
        if not leg.ended:
            self._announce(leg, notice, source)

    def _announce(self, leg: Leg, notice: Notice, source: str) -> None:
        if self._trunk_mode and not self.trusted.allows(source):
            logger.warning(
                "! rejecting INVITE from untrusted source %s (trunk mode, sip.trusted_sources)",
                source or "unknown",
            )
            leg.local_hangup = True
            self._spawn(self._reject_untrusted(leg), f"leg-{leg.leg_id}:reject")
            return
        caller = parse_name_addr(notice.headers.get("From", "") or notice.text)
        callee = parse_name_addr(notice.headers.get("To", ""))
        remote = source or via_source(notice.headers.get("Via", ""))
        leg.announced = True
        logger.info("< INVITE leg %s from %s", leg.leg_id, remote, extra={"pii.from": caller.user})
        self._emit(IncomingCall(leg.leg_id, caller.user, caller.display, callee.user, remote))

    def _on_established(self, leg: Leg) -> None:
        if leg.answered:
            return
        leg.answered = True
        leg.cancel_timers()
        logger.info("= leg %s established", leg.leg_id)
        self._emit(LegAnswered(leg.leg_id))
        leg.media_deadline = asyncio.get_running_loop().time() + MEDIA_WAIT_S
        self._probe_media(leg)

    def _probe_media(self, leg: Leg) -> None:
        """Poll (5 ms) until the library's aumem source is up, then announce the media."""
        if leg.ended or leg.media is not None:
            return
        loop = asyncio.get_running_loop()
        port = leg.control.audio()
        try:
            info = port.info()
        except MediaInactive:
            info = None
        if info is not None and info.tx_ready:
            leg.media = BaresipMediaStream(port, info.rate_hz, leg_id=leg.leg_id)
            facts = self._wire.get(leg.call_id)
            codec = facts.codec if facts is not None and facts.codec else self._guess_codec(info)
            logger.info("= leg %s media ready: %s %d Hz", leg.leg_id, codec, info.rate_hz)
            self._emit(MediaReady(leg.leg_id, codec, info.rate_hz))
            return
        if loop.time() > leg.media_deadline:
            logger.warning("! leg %s: no audio %.0f s after answer", leg.leg_id, MEDIA_WAIT_S)
            leg.media_deadline = loop.time() + MEDIA_WAIT_S
        leg.timers.append(loop.call_later(MEDIA_POLL_S, self._probe_media, leg))

    def _guess_codec(self, info: AudioFormat) -> str:
        """Only when the SDP answer was not seen in the trace."""
        if info.rate_hz == 16000:
            return "g722"
        narrow = [c for c in self._codecs if c in ("pcmu", "pcma")]
        return narrow[0] if narrow else "pcmu"

    def _flush_dtmf(self, leg: Leg) -> None:
        while leg.pending_dtmf:
            digit = leg.pending_dtmf.pop(0)
            method = "info" if self._wire.take_info_digit(leg.call_id) else "rfc4733"
            logger.info("< DTMF leg %s (%s)", leg.leg_id, method, extra={"pii.dtmf": digit})
            self._emit(DtmfReceived(leg.leg_id, digit, method))

    def _on_closed(self, leg: Leg, notice: Notice) -> None:
        self._flush_dtmf(leg)
        if notice.text == CLOSE_TRANSFERRED:
            self.transfer_outcome(leg, success=True, status=200)
        elif leg.transfer_pending:
            self.transfer_outcome(leg, success=False, status=None)
        outcome = classify_close(
            notice.text,
            inbound=leg.inbound,
            answered=leg.answered,
            local_hangup=leg.local_hangup,
            no_answer_timeout=leg.no_answer_timeout,
        )
        self._end_leg(leg)
        if leg.announced:
            logger.info(
                "= leg %s ended: %s (%s)", leg.leg_id, outcome.cause.value, outcome.reason or "-"
            )
            self._emit(LegEnded(leg.leg_id, outcome.cause, outcome.status_code, outcome.reason))

    # ---- bookkeeping --------------------------------------------------------------------------

    def _new_leg(self, control: CallControl, *, inbound: bool) -> Leg:
        leg_id = f"{'in' if inbound else 'out'}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        leg = Leg(leg_id=leg_id, inbound=inbound, control=control, call_id=control.call_id)
        self._legs[leg_id] = leg
        self._by_handle[control.handle] = leg
        self._idle.clear()
        return leg

    def _end_leg(self, leg: Leg) -> None:
        leg.ended = True
        leg.cancel_timers()
        if leg.media is not None:
            leg.media.close()
        self._legs.pop(leg.leg_id, None)
        self._by_handle.pop(leg.handle, None)
        if leg.call_id:
            self._wire.forget(leg.call_id)
        if not self._legs:
            self._idle.set()

    async def _reject_untrusted(self, leg: Leg) -> None:
        try:
            await leg.control.reject()
        except StackError as exc:
            logger.debug("rejecting leg %s: %s", leg.leg_id, exc)

    async def _refuse_transfer(self, leg: Leg) -> None:
        logger.info("< REFER on leg %s refused (603): sip4ai never executes transfers", leg.leg_id)
        try:
            await leg.control.refuse_transfer_request()
        except StackError as exc:
            logger.debug("refusing REFER on leg %s: %s", leg.leg_id, exc)
