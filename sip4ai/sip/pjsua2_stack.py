"""The pjsua2 side of the backend: the Endpoint, its account, calls and audio ports, and the one
thread every command runs on.

Threads (pjsua2-python 2.15.1.post1):

* **command thread** (``sip4ai-pj``): creates the Endpoint, runs every command and the final
  ``libDestroy``. It is registered with the library (``libRegisterThread``): a call from an
  unregistered thread aborts the process. The asyncio loop thread is registered as well, so a
  library object that happens to be released there cannot abort it either.
* **pjsua worker thread**: SIP callbacks (``onRegState``, ``onIncomingCall``, ``onCallState``...).
  They may also run synchronously on the command thread inside a command.
* **media clock thread**: ``onFrameReceived``/``onFrameRequested``; they only move bytes between
  the frame and a ``PjMediaStream``.

Callbacks turn library objects into plain notices (``pjsua2_events``) and post them to the loop.
Object lifetimes: a ``Call`` wrapper is referenced only from ``_calls`` and dropped in its
DISCONNECTED callback (if it outlived it, a reused call slot would be hung up when the old wrapper
is collected); every wrapper is gone before ``libDestroy()`` (else the process aborts on exit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import itertools
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pjsua2 as pj  # type: ignore[import-untyped]

from sip4ai.sip.pjsua2_events import (
    TOO_MANY_CALLS_TEXT,
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
    dtmf_method,
)
from sip4ai.sip.pjsua2_media import PjMediaStream, VectorAccess
from sip4ai.sip.pjsua2_settings import USER_AGENT, PjPlan, codec_name
from sip4ai.sip.uri import TrustedSources


__all__ = ["PjStack", "StackError"]

logger = logging.getLogger(__name__)
lib_logger = logging.getLogger("sip4ai.sip.pjsua2_lib")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., None])
LIB_LOG_LEVEL = 3
DTMF_DURATION_MS = 160


def _callback(fn: F) -> F:
    """Library callbacks never let an exception reach the library (it would unwind through C)."""

    @functools.wraps(fn)
    def guarded(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            logger.exception("! pjsua2 callback %s failed", fn.__name__)

    return cast(F, guarded)


class StackError(Exception):
    """A library call failed (``pj.Error``), with the library's own text."""


class _LogWriter(pj.LogWriter):  # type: ignore[misc]
    """Library log lines go to ``sip4ai.sip.pjsua2_lib`` at DEBUG (they never carry passwords
    at level 3); pjsua's silent 486 for a full call table becomes a notice."""

    def __init__(self, on_too_many_calls: Callable[[], None]) -> None:
        pj.LogWriter.__init__(self)
        self._on_too_many_calls = on_too_many_calls

    def write(self, entry: Any) -> None:
        msg = str(entry.msg).rstrip()
        if TOO_MANY_CALLS_TEXT in msg:
            self._on_too_many_calls()
        lib_logger.debug("%s", msg)


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self, stack: PjStack) -> None:
        pj.Account.__init__(self)
        self._stack = stack

    @_callback
    def onRegState(self, prm: Any) -> None:  # noqa: N802 (library callback name)
        self._stack.on_reg_state(prm)

    @_callback
    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        self._stack.on_incoming(self, prm)


class _Port(pj.AudioMediaPort):  # type: ignore[misc]
    def __init__(self, stream: PjMediaStream, access: VectorAccess) -> None:
        pj.AudioMediaPort.__init__(self)
        self.stream = stream
        self._access = access
        self._vector = access.new_vector(stream.frame_bytes)

    @_callback
    def onFrameReceived(self, frame: Any) -> None:  # noqa: N802
        if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
            self.stream.deliver(self._access.to_bytes(frame.buf))

    @_callback
    def onFrameRequested(self, frame: Any) -> None:  # noqa: N802
        data = self.stream.take()
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.buf = self._access.fill(self._vector, data)
        frame.size = len(data)


class _Call(pj.Call):  # type: ignore[misc]
    def __init__(self, stack: PjStack, account: _Account, call_id: int, leg_id: str) -> None:
        pj.Call.__init__(self, account, call_id)
        self._stack = stack
        self.leg_id = leg_id
        self.port: _Port | None = None
        self.ringing = False

    @_callback
    def onCallState(self, prm: Any) -> None:  # noqa: N802
        self._stack.on_call_state(self)

    @_callback
    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        self._stack.on_call_media(self)

    @_callback
    def onDtmfDigit(self, prm: Any) -> None:  # noqa: N802
        self._stack.post(DtmfDigit(self.leg_id, str(prm.digit), dtmf_method(int(prm.method))))

    @_callback
    def onCallTransferRequest(self, prm: Any) -> None:  # noqa: N802
        logger.info("< REFER on leg %s refused (603): sip4ai never executes transfers", self.leg_id)
        prm.statusCode = 603

    @_callback
    def onCallTransferStatus(self, prm: Any) -> None:  # noqa: N802
        final = bool(prm.finalNotify)
        self._stack.post(TransferStatus(self.leg_id, int(prm.statusCode), final))
        prm.cont = not final


class PjStack:
    """One pjsua2 Endpoint per process; every method except ``post``/callbacks is awaited."""

    def __init__(
        self,
        plan: PjPlan,
        *,
        password: str,
        trusted: TrustedSources,
        sink: Callable[[PjNotice], None],
    ) -> None:
        self._plan = plan
        self._password = password
        self.trusted = trusted
        self._sink = sink
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sip4ai-pj")
        self._ep: Any = None
        self._writer: _LogWriter | None = None
        self._account: _Account | None = None
        self._calls: dict[str, _Call] = {}
        self._lock = threading.Lock()
        self._access: VectorAccess | None = None
        self._streams: dict[str, PjMediaStream] = {}
        self._ids = itertools.count(1)

    # ---- threads ------------------------------------------------------------------------------

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the registered command thread; library errors become StackError."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, fn)

    def _guarded(self, fn: Callable[[], T]) -> T:
        ep = self._ep
        if ep is not None and not ep.libIsThreadRegistered():
            ep.libRegisterThread("sip4ai-pj")
        try:
            return fn()
        except pj.Error as exc:
            raise StackError(f"{exc.title}: {exc.reason}".strip(": ")) from None

    def post(self, notice: PjNotice) -> None:
        """From any thread: hand a notice to the loop."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._sink, notice)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self.run(self._start)
        except Exception:
            await self.close()
            raise
        # The loop thread only releases objects (never calls commands) but must be known too.
        if not self._ep.libIsThreadRegistered():
            self._ep.libRegisterThread("sip4ai-loop")

    def _start(self) -> None:
        plan = self._plan
        ep = pj.Endpoint()
        self._ep = ep
        ep.libCreate()
        self._writer = _LogWriter(lambda: self.post(TooManyCalls()))
        # libDestroy() deletes the writer itself: hand it over, or Python frees it a second time
        # later (a crash at some later collection or at exit).
        self._writer.__disown__()
        cfg = pj.EpConfig()
        cfg.uaConfig.maxCalls = plan.max_calls
        cfg.uaConfig.userAgent = USER_AGENT
        cfg.uaConfig.threadCnt = 1
        cfg.logConfig.level = LIB_LOG_LEVEL
        cfg.logConfig.consoleLevel = LIB_LOG_LEVEL  # the writer gets what the console would
        cfg.logConfig.msgLogging = False
        cfg.logConfig.writer = self._writer
        cfg.medConfig.clockRate = plan.clock_rate
        cfg.medConfig.sndClockRate = plan.clock_rate
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0
        if plan.low_latency_jb:
            cfg.medConfig.jbInit = 0
            cfg.medConfig.jbMinPre = 0
            cfg.medConfig.jbMaxPre = 60
            cfg.medConfig.jbMax = 500
        elif plan.jb_max_ms > 0:
            cfg.medConfig.jbMax = plan.jb_max_ms
        ep.libInit(cfg)
        for kind in ("udp", "tcp"):
            tcfg = pj.TransportConfig()
            tcfg.port = plan.sip_port
            tcfg.boundAddress = plan.bind_host
            ep.transportCreate(
                pj.PJSIP_TRANSPORT_UDP if kind == "udp" else pj.PJSIP_TRANSPORT_TCP, tcfg
            )
        if plan.transport == "tls":
            tcfg = pj.TransportConfig()
            tcfg.port = plan.tls_port
            tcfg.boundAddress = plan.bind_host
            tcfg.tlsConfig.CaListFile = plan.tls_ca_file
            tcfg.tlsConfig.verifyServer = plan.tls_verify_server
            tcfg.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
            ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tcfg)
        ep.libStart()
        ep.audDevManager().setNullDev()
        for codec in ep.codecEnum2():
            ep.codecSetPriority(codec.codecId, 0)
        for codec_id, priority in plan.codec_priorities:
            ep.codecSetPriority(codec_id, priority)
        self._access = VectorAccess(pj.ByteVector)
        account = _Account(self)
        account.create(self._account_config())
        self._account = account

    def _account_config(self) -> Any:
        plan = self._plan
        acfg = pj.AccountConfig()
        acfg.idUri = plan.id_uri
        if plan.registers:
            acfg.regConfig.registrarUri = plan.registrar_uri
            acfg.regConfig.timeoutSec = plan.register_expires_s
            acfg.regConfig.retryIntervalSec = 0  # the engine retries with its own backoff
            acfg.regConfig.registerOnAdd = False
            acfg.regConfig.dropCallsOnFail = False
            acfg.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", "*", plan.auth_user, 0, self._password)
            )
        for proxy in plan.proxies:
            acfg.sipConfig.proxies.append(proxy)
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_INACTIVE
        acfg.mediaConfig.lockCodecEnabled = False
        acfg.mediaConfig.transportConfig.port = plan.rtp_port
        acfg.mediaConfig.transportConfig.portRange = plan.rtp_port_range
        acfg.mediaConfig.transportConfig.boundAddress = plan.bind_host
        acfg.natConfig.sipOutboundUse = 0
        acfg.natConfig.contactRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.videoConfig.autoTransmitOutgoing = False
        return acfg

    def destroy(self) -> None:
        """On the command thread: release every wrapper, then the library."""
        with self._lock:
            calls = list(self._calls.values())
            self._calls.clear()
        for call in calls:
            call.port = None
        del calls
        if self._account is not None:
            try:
                self._account.shutdown()
            except pj.Error as exc:
                logger.debug("x account shutdown: %s", exc.reason)
            self._account = None
        gc.collect()
        if self._ep is not None:
            self._ep.libDestroy()  # deletes the log writer too
            self._ep = None
            self._writer = None
        gc.collect()

    async def close(self) -> None:
        """Destroy the library (if started) and stop the command thread. Idempotent."""
        if self._ep is not None or self._account is not None:
            await self.run(self.destroy)
        self._executor.shutdown(wait=True)
        self._loop = None
        self._writer = None

    # ---- commands (command thread) ------------------------------------------------------------

    def set_registration(self, on: bool) -> None:
        assert self._account is not None
        self._account.setRegistration(on)

    def answer(self, leg_id: str, status_code: int, reason: str = "") -> None:
        call = self._call(leg_id)
        if call is None:
            return
        op = pj.CallOpParam(True)
        op.statusCode = status_code
        if reason:
            op.reason = reason
        call.answer(op)

    def hangup(self, leg_id: str, status_code: int = 0, reason: str = "") -> None:
        call = self._call(leg_id)
        if call is None:
            return
        op = pj.CallOpParam()
        if status_code:
            op.statusCode = status_code
            op.reason = reason
        call.hangup(op)

    def hangup_all(self) -> None:
        assert self._ep is not None
        self._ep.hangupAllCalls()

    def dial(self, leg_id: str, uri: str, local_uri: str, headers: dict[str, str]) -> None:
        assert self._account is not None
        call = _Call(self, self._account, pj.PJSUA_INVALID_ID, leg_id)
        op = pj.CallOpParam(True)
        op.opt.audioCount = 1
        op.opt.videoCount = 0
        if local_uri:
            op.txOption.localUri = local_uri
        for name, value in headers.items():
            header = pj.SipHeader()
            header.hName = name
            header.hValue = value
            op.txOption.headers.append(header)
        with self._lock:
            self._calls[leg_id] = call  # before makeCall: its callbacks may run inside it
        try:
            call.makeCall(uri, op)
        except pj.Error:
            with self._lock:
                self._calls.pop(leg_id, None)
            raise

    def send_dtmf(self, leg_id: str, digits: str) -> None:
        call = self._call(leg_id)
        if call is None:
            raise StackError("the call has ended")
        param = pj.CallSendDtmfParam()
        param.method = pj.PJSUA_DTMF_METHOD_RFC2833
        param.digits = digits
        param.duration = DTMF_DURATION_MS
        call.sendDtmf(param)

    def transfer(self, leg_id: str, uri: str) -> None:
        call = self._call(leg_id)
        if call is None:
            raise StackError("the call has ended")
        call.xfer(uri, pj.CallOpParam(True))

    def rx_packets(self, leg_id: str) -> int | None:
        """RTP packets received on the leg's audio stream so far (None: no stream now)."""
        call = self._call(leg_id)
        if call is None:
            return None
        info = call.getInfo()  # kept in a variable: its media vector dies with it
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status != pj.PJSUA_CALL_MEDIA_NONE:
                stat = call.getStreamStat(index)  # a variable too: .rtcp points into it
                return int(stat.rtcp.rxStat.pkt)
        return None

    def _call(self, leg_id: str) -> _Call | None:
        with self._lock:
            return self._calls.get(leg_id)

    # ---- callbacks (worker thread, or the command thread inside a command) --------------------

    def on_reg_state(self, prm: Any) -> None:
        error = ""
        if prm.status != 0 and self._ep is not None:
            try:
                error = str(self._ep.utilStrError(prm.status))
            except pj.Error:
                error = ""
        from_wire = bool(prm.rdata.wholeMsg)  # a 401 after failed auth has status != 0
        self.post(
            RegState(
                code=int(prm.code),
                reason=str(prm.reason),
                error=error,
                from_wire=from_wire,
                expires_s=int(prm.expiration),
            )
        )

    def on_incoming(self, account: _Account, prm: Any) -> None:
        leg_id = self.new_leg_id("in")
        call = _Call(self, account, prm.callId, leg_id)
        source = str(prm.rdata.srcAddress)
        with self._lock:
            self._calls[leg_id] = call
        if self._plan.trunk_mode and not self.trusted.allows(source):
            logger.warning(
                "! rejecting INVITE from untrusted source %s (trunk mode, sip.trusted_sources)",
                source or "unknown",
            )
            op = pj.CallOpParam(True)
            op.statusCode = 403
            call.hangup(op)
            return
        info = call.getInfo()
        remote, local = str(info.remoteUri), str(info.localUri)
        op = pj.CallOpParam(True)
        op.statusCode = 180
        try:
            call.answer(op)  # before the loop hears of the call: its 200 OK must come second
        except pj.Error as exc:
            logger.debug("180 on leg %s: %s", leg_id, exc.reason)
        self.post(CallIncoming(leg_id, remote, local, source))

    def on_call_state(self, call: _Call) -> None:
        info = call.getInfo()
        state = info.state
        if state == pj.PJSIP_INV_STATE_EARLY and not call.ringing:
            if info.role == pj.PJSIP_ROLE_UAC and info.lastStatusCode in (180, 183):
                call.ringing = True
                self.post(CallRinging(call.leg_id))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.post(CallAnswered(call.leg_id))
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            with self._lock:
                if self._calls.get(call.leg_id) is call:
                    del self._calls[call.leg_id]
            stream = self._streams.pop(call.leg_id, None)
            if stream is not None:
                stream.close()
            call.port = None
            self.post(CallEnded(call.leg_id, int(info.lastStatusCode), str(info.lastReason)))

    def on_call_media(self, call: _Call) -> None:
        info = call.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            on_hold = media.status == pj.PJSUA_CALL_MEDIA_REMOTE_HOLD
            if media.status not in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                continue
            stream_info = call.getStreamInfo(index)
            rate = int(stream_info.codecClockRate)
            codec = codec_name(str(stream_info.codecName))
            if call.port is None or call.port.stream.rate_hz != rate:
                assert self._access is not None
                stream = PjMediaStream(rate, leg_id=call.leg_id)
                port = _Port(stream, self._access)
                fmt = pj.MediaFormatAudio()
                fmt.init(pj.PJMEDIA_FORMAT_PCM, rate, 1, 20000, 16)
                port.createPort(f"sip4ai-{call.leg_id}", fmt)
                call.port = port
                self._streams[call.leg_id] = stream
            audio = call.getAudioMedia(index)
            audio.startTransmit(call.port)
            call.port.startTransmit(audio)
            self.post(CallMedia(call.leg_id, codec, rate, on_hold))
            return

    def stream(self, leg_id: str) -> PjMediaStream | None:
        return self._streams.get(leg_id)

    def new_leg_id(self, direction: str) -> str:
        """``in-7-1a2b3c4d``: unique in the process, readable in logs."""
        return f"{direction}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
