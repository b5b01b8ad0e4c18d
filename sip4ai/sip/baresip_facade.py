"""Typed facade over baresip-python 0.5.2a3: the only module that drives its control API.

The rest of ``sip4ai.sip`` talks to ``Stack``/``Agent``/``CallControl``/``AudioPort`` and sees
only sip4ai types and exceptions, so nothing untyped leaks out and the library's quirks are
handled in one place:

* Threads: the library runs SIP on its own ``baresip-re`` thread; commands are awaitables and
  events arrive on the asyncio loop through ``call_soon_threadsafe``. Audio reads and writes are
  non-blocking C calls behind one mutex. Nothing here blocks the loop or touches asyncio from
  another thread, except ``_TraceTap``, which hops to the loop with ``call_soon_threadsafe``.
* The ``dial()`` race: a call's events dispatched before ``ua.dial()`` resumes its caller never
  reach the library's ``Call`` (it subscribes only once constructed). The engine's runtime-wide
  listener buffers them; ``CallControl.reconcile`` replays them into the ``Call`` so its state
  (needed by ``transfer()``) is right.
* The SIP trace is the only place the library exposes an INVITE's packet source, the negotiated
  codec and the SIP INFO DTMF method; ``_TraceTap`` parses it (never logs it: it holds PII).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from baresip import (
    AudioNotActive,
    AudioRestarted,
    BaresipError,
    Config,
    RegistrationError,
    StaleHandleError,
    TransferFailed,
)
from baresip.audio import CallAudio
from baresip.call import Call
from baresip.events import StackEvent
from baresip.runtime import Runtime
from baresip.ua import UserAgent

from sip4ai.sip.sipmsg import TraceRecord, parse_trace


__all__ = [
    "Agent",
    "AudioCounters",
    "AudioFormat",
    "AudioPort",
    "CallControl",
    "MediaInactive",
    "MediaRestarted",
    "Notice",
    "RegistrationRefused",
    "Stack",
    "StackError",
    "StaleHandle",
    "TransferRefused",
]

logger = logging.getLogger(__name__)

#: Headers of the INVITE that every event of an inbound call carries (display name, source).
EXPOSED_HEADERS = ("From", "To", "Via")
_TRACE_LOGGER = "baresip.native.sip"
_DTMF_KEYS = frozenset("0123456789ABCD*#")


class StackError(Exception):
    """The SIP stack refused or failed a command."""


class StaleHandle(StackError):
    """The call or agent no longer exists in the stack (normal in hang-up races)."""


class RegistrationRefused(StackError):
    def __init__(self, message: str, *, status: int | None, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class TransferRefused(StackError):
    def __init__(self, message: str, *, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class MediaInactive(Exception):
    """The call has no audio (not up yet, or already torn down)."""


class MediaRestarted(Exception):
    """The call's audio streams were replaced (re-INVITE, or the teardown at hang-up)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One stack event, typed. ``kind`` is the library's event name (``CALL_INCOMING``...)."""

    kind: str
    call: int
    ua: int
    text: str
    call_id: str
    headers: Mapping[str, str]
    rx_packets: int | None
    """RTP packets received, on ``CALL_RTCP``/``CALL_CLOSED`` (None elsewhere)."""
    raw: StackEvent = field(repr=False, compare=False)


def _notice(event: StackEvent) -> Notice:
    rx = event.stats.get("rx") if event.stats else None
    packets = rx.get("packets") if isinstance(rx, dict) else None
    return Notice(
        kind=event.event.name,
        call=event.call,
        ua=event.ua,
        text=event.text or "",
        call_id=event.call_id or "",
        headers=dict(event.headers),
        rx_packets=packets if isinstance(packets, int) else None,
        raw=event,
    )


@dataclass(frozen=True, slots=True)
class AudioFormat:
    tx_ready: bool
    rx_ready: bool
    rate_hz: int
    ptime_ms: int
    tx_buffered_bytes: int
    tx_capacity_bytes: int


@dataclass(frozen=True, slots=True)
class AudioCounters:
    """The library's per-stream counters (reset when the streams are replaced)."""

    tx_silence_frames: int
    tx_starved_frames: int
    tx_rejected_bytes: int
    rx_dropped_bytes: int
    rx_discarded_bytes: int


class AudioPort:
    """One call's PCM rings. Every method is a non-blocking C call; safe on the loop."""

    def __init__(self, audio: CallAudio) -> None:
        self._audio = audio

    def info(self) -> AudioFormat:
        try:
            info = self._audio.info()
        except AudioNotActive:
            raise MediaInactive from None
        return AudioFormat(
            tx_ready=info.tx_ready,
            rx_ready=info.rx_ready,
            rate_hz=info.tx_sample_rate or info.rx_sample_rate,
            ptime_ms=info.tx_ptime_ms or 20,
            tx_buffered_bytes=info.tx_buffered,
            tx_capacity_bytes=info.tx_capacity,
        )

    def read(self, max_bytes: int) -> bytes:
        try:
            return self._audio.read(max_bytes)
        except AudioRestarted:
            raise MediaRestarted from None
        except AudioNotActive:
            raise MediaInactive from None

    def write(self, pcm: bytes) -> int:
        try:
            return self._audio.write(pcm)
        except AudioRestarted:
            raise MediaRestarted from None
        except AudioNotActive:
            raise MediaInactive from None

    def flush(self) -> None:
        try:
            self._audio.flush_tx()
        except AudioRestarted:
            raise MediaRestarted from None
        except AudioNotActive:
            raise MediaInactive from None

    def counters(self) -> AudioCounters:
        try:
            st = self._audio.stats()
        except AudioNotActive:
            raise MediaInactive from None
        return AudioCounters(
            tx_silence_frames=st.tx_silence_frames,
            tx_starved_frames=st.tx_starved_frames,
            tx_rejected_bytes=st.tx_rejected_bytes,
            rx_dropped_bytes=st.rx_dropped_bytes,
            rx_discarded_bytes=st.rx_discarded_bytes,
        )


class CallControl:
    """Commands for one call. Every method raises StaleHandle once the call is gone."""

    def __init__(self, call: Call) -> None:
        self._call = call

    @property
    def handle(self) -> int:
        return self._call.handle

    @property
    def call_id(self) -> str:
        return self._call.call_id or ""

    def reconcile(self, missed: Sequence[Notice]) -> None:
        """Replay the events the library's Call missed (the ``dial()`` race) into it."""
        for notice in missed:
            # The library's own per-call listener: keeps Call.state truthful.
            self._call._on_stack_event(notice.raw)

    def audio(self) -> AudioPort:
        return AudioPort(self._call.audio)

    async def answer(self) -> None:
        # video=False is clean only because every account says video_codecs=none: the call then
        # has no video stream whose direction could change after answering (the stray re-INVITE).
        await self._run(self._call.answer(video=False))

    async def reject(self) -> None:
        """486 Busy Here: the only rejection status baresip-python 0.5.2a3 can send."""
        await self._run(self._call.reject())

    async def hangup(self) -> None:
        """BYE when established, CANCEL when dialling, 486 when ringing in."""
        await self._run(self._call.hangup())

    async def send_dtmf(self, digits: str) -> None:
        upper = digits.upper()
        if not upper or any(d not in _DTMF_KEYS for d in upper):
            raise ValueError("DTMF digits must be 0-9, A-D, * or #")
        await self._run(self._call.send_dtmf(upper))

    async def refuse_transfer_request(self) -> None:
        """Answer a peer's REFER (already 202-accepted by the stack) with a 603 NOTIFY."""
        await self._run(self._call.reject_transfer(603))

    async def transfer(self, uri: str, timeout_s: float) -> None:
        """Blind REFER; returns once the far end reports success (the call then closes)."""
        try:
            await self._call.transfer(uri, timeout=timeout_s)
        except TransferFailed as exc:
            raise TransferRefused(str(exc), status=exc.status) from None
        except StaleHandleError:
            raise StaleHandle("call is gone") from None
        except BaresipError as exc:
            raise StackError(str(exc)) from None

    @staticmethod
    async def _run(command: Awaitable[None]) -> None:
        try:
            await command
        except StaleHandleError:
            raise StaleHandle("call is gone") from None
        except BaresipError as exc:
            raise StackError(str(exc)) from None


class Agent:
    """One account (user agent) in the stack."""

    def __init__(self, ua: UserAgent) -> None:
        self._ua = ua

    @property
    def handle(self) -> int:
        return self._ua.handle

    async def register(self, timeout_s: float) -> None:
        try:
            await self._ua.register(timeout=timeout_s)
        except RegistrationError as exc:
            raise RegistrationRefused(str(exc), status=exc.status, reason=exc.reason) from None
        except BaresipError as exc:
            raise StackError(str(exc)) from None

    async def unregister(self, timeout_s: float) -> None:
        try:
            await self._ua.unregister(timeout=timeout_s)
        except BaresipError as exc:
            raise StackError(str(exc)) from None

    def on_incoming(self, callback: Callable[[CallControl], None]) -> None:
        def adapter(call: Call) -> None:
            callback(CallControl(call))

        self._ua.on_incoming(adapter)

    async def dial(self, uri: str, headers: Mapping[str, str]) -> CallControl:
        try:
            call = await self._ua.dial(uri, dict(headers) or None)
        except BaresipError as exc:
            raise StackError(str(exc)) from None
        return CallControl(call)


class Stack:
    """The process-wide SIP stack (baresip allows one running Runtime per process)."""

    def __init__(
        self,
        *,
        net_interface: str | None,
        config_text: str,
        max_calls: int,
        rtp_timeout_s: int,
    ) -> None:
        self._config = Config(
            net_interface=net_interface,
            # The library's default is 2 (!); beyond the cap inbound calls get "486 Max Calls".
            max_concurrent_calls=max_calls,
            rtp_timeout=rtp_timeout_s,
            expose_headers=EXPOSED_HEADERS,
            sip_trace=True,
            extra_config_text=config_text,
        )
        self._runtime: Runtime | None = None
        self._tap: _TraceTap | None = None
        self._noise = _RegistrationNoise()
        self._trace_logger = logging.getLogger(_TRACE_LOGGER)
        self._saved_trace_logger = (self._trace_logger.level, self._trace_logger.propagate)

    @property
    def rendered_config(self) -> str:
        """The full configuration text the stack parses (for tests and diagnostics)."""
        return self._config.render()

    async def start(
        self,
        on_notice: Callable[[Notice], None],
        on_trace: Callable[[TraceRecord], None],
        on_dead: Callable[[], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self._tap = _TraceTap(loop, on_trace)
        self._trace_logger.addHandler(self._tap)
        self._trace_logger.setLevel(logging.DEBUG)
        self._trace_logger.propagate = False  # full SIP messages: PII, never to the app's logs
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).addFilter(self._noise)
        runtime = Runtime()
        # The library declares the hook as None-valued; it is a zero-argument callback.
        runtime.on_dead = on_dead  # type: ignore[assignment]

        def listener(event: StackEvent) -> None:
            on_notice(_notice(event))

        try:
            await runtime.start(self._config)
        except BaresipError as exc:
            self._untap()
            raise StackError(str(exc)) from None
        runtime.subscribe(listener)
        self._runtime = runtime

    async def new_agent(self, aor: str) -> Agent:
        runtime = self._require()
        try:
            ua = await UserAgent.create(runtime, aor)
        except BaresipError as exc:
            raise StackError(str(exc)) from None
        return Agent(ua)

    async def close(self) -> None:
        runtime, self._runtime = self._runtime, None
        try:
            if runtime is not None:
                await runtime.close()
        except BaresipError as exc:
            logger.error("! SIP stack did not close cleanly: %s", exc)
        finally:
            self._untap()

    def _untap(self) -> None:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).removeFilter(self._noise)
        if self._tap is not None:
            self._trace_logger.removeHandler(self._tap)
            self._tap = None
        level, propagate = self._saved_trace_logger
        self._trace_logger.setLevel(level)
        self._trace_logger.propagate = propagate

    def _require(self) -> Runtime:
        if self._runtime is None:
            raise StackError("the SIP stack is not running")
        return self._runtime


_NOISY_LOGGERS = ("baresip.ua", "baresip.native")


class _RegistrationNoise(logging.Filter):
    """Drops the library's per-attempt registration failure lines (ERROR from ``baresip.ua``,
    WARNING ``reg: ...`` from the stack): the engine logs one clear line per failure instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (
            message.startswith(("registration failed", "unregistration failed"))
            or (record.name == "baresip.native" and record.getMessage().startswith("reg: "))
        )


class _TraceTap(logging.Handler):
    """Receives the stack's SIP trace on its log thread and hands the useful records to the loop.

    Kept: INVITE and INFO requests received (packet source, SIP INFO DTMF) and 2xx responses
    with SDP (the negotiated codec). Everything else is dropped here, off the loop.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sink: Callable[[TraceRecord], None]
    ) -> None:
        super().__init__(logging.DEBUG)
        self._loop = loop
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            trace = parse_trace(record.getMessage())
        except Exception:  # a malformed record must never disturb the log thread
            return
        if trace is None or not _interesting(trace):
            return
        try:
            self._loop.call_soon_threadsafe(self._sink, trace)
        except RuntimeError:  # loop closed during shutdown
            pass


def _interesting(trace: TraceRecord) -> bool:
    if trace.received and trace.method in ("INVITE", "INFO"):
        return True
    return 200 <= trace.status < 300 and trace.cseq_method == "INVITE" and bool(trace.body)
