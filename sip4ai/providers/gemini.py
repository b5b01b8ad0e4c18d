"""Gemini Live session: one call, PCM16 16 kHz in, PCM16 24 kHz out (the bridge resamples).

A call may span several websocket connections: Gemini closes each one after about ten minutes
(announced by ``goAway``) and links drop. The session keeps the latest resumption handle and
reconnects inside ``run()`` with it; the caller hears a short gap, queued caller audio is kept,
and no ``Closed``/second ``Ready`` is emitted. Only a failed resumption ends the session.

Greeting and ``say``: Gemini has no field for a literal greeting, so the instruction goes in as
``realtimeInput.text`` right after ``setupComplete`` (works on 2.5 and 3.x models, which reject
mid-session ``clientContent`` at times). ``inject`` uses an ordered ``clientContent`` user turn.
Reference: providers.md section 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import websockets
from websockets.asyncio.client import ClientConnection, connect

from sip4ai.config import GeminiConfig
from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import gemini_wire as wire
from sip4ai.providers.base import (
    Capabilities,
    Closed,
    ProviderEvent,
    Ready,
    SessionSettings,
)


logger = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    input_format=wire.INPUT_FORMAT,
    output_format=wire.OUTPUT_FORMAT,
    server_vad=True,
    truncation=False,
)
CONNECT_TIMEOUT_S = 10.0
SETUP_TIMEOUT_S = 10.0
"""Longest wait for ``setupComplete`` after sending ``setup``."""
CLOSE_TIMEOUT_S = 2.0
SEND_QUEUE_FRAMES = 500
"""About 10 s of 20 ms audio; beyond that the link is dead and old audio is worthless."""
MAX_RESUMPTIONS = 20
"""Reconnections per call (a 10-minute lifetime gives 6 per hour); guards against loops."""
GO_AWAY_MARGIN_S = 2.0
"""After ``goAway`` wait for the reply in progress to end, but reconnect this long (at most a
quarter of the notice) before the announced end at the latest."""


@dataclass(frozen=True, slots=True)
class _Resume:
    """The connection ended in a way the next one can continue (goAway, dropped link)."""

    why: str


class GeminiLiveSession:
    def __init__(self, config: GeminiConfig, settings: SessionSettings) -> None:
        self._config = config
        self._settings = settings
        self._outgoing: asyncio.Queue[str] = asyncio.Queue(maxsize=SEND_QUEUE_FRAMES)
        self._unsent: str | None = None
        """A message taken from the queue whose send failed; sent first on the next link."""
        self._events: asyncio.Queue[ProviderEvent | None] = asyncio.Queue()
        self._decoder = wire.Decoder()
        self._ws: ClientConnection | None = None
        self._ready = False
        self._link_up = False
        """The current connection got ``setupComplete``."""
        self._closed = False
        self.dropped_frames = 0
        self.resumptions = 0
        """Connections continued from a resumption handle (for tests and metrics)."""

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            reason = await self._serve()
        except asyncio.CancelledError:
            self._finish(Closed("cancelled"))
            raise
        logger.info("x gemini session closed: %s", reason.reason)
        self._finish(reason)

    def _finish(self, reason: Closed) -> None:
        for event in self._decoder.abort_turn():
            self._events.put_nowait(event)
        self._events.put_nowait(reason)
        self._events.put_nowait(None)

    async def _serve(self) -> Closed:
        handle: str | None = None
        while True:
            self._link_up = False
            try:
                outcome = await self._connection(handle)
            except ProviderProtocolError as exc:
                outcome = Closed(str(exc), retryable=True)
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
                outcome = Closed(
                    f"gemini: HTTP {status} at connect", retryable=status >= 500 or status == 429
                )
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                outcome = Closed(f"gemini: connection failed: {exc}", retryable=True)
            if handle is not None and not self._link_up and not self._closed:
                # The resumed connection did not get going: another provider must take over.
                why = outcome.reason if isinstance(outcome, Closed) else outcome.why
                return Closed(f"gemini: session resumption failed: {why}", retryable=True)
            if isinstance(outcome, Closed):
                return outcome
            if self._closed:
                return Closed("gemini: closed by sip4ai")
            if self._decoder.handle is None or self.resumptions >= MAX_RESUMPTIONS:
                return Closed(f"gemini: {outcome.why}, cannot resume", retryable=True)
            handle = self._decoder.handle
            self.resumptions += 1
            logger.info("= gemini resuming session (%s)", outcome.why)

    async def _connection(self, handle: str | None) -> Closed | _Resume:
        """One websocket: setup, wait for setupComplete, then serve until it ends."""
        key = self._config.api_key.reveal() if self._config.api_key else ""
        ws = await connect(
            self._config.base_url,
            additional_headers={"x-goog-api-key": key},
            open_timeout=CONNECT_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=2**24,
        )
        self._ws = ws
        self._decoder.new_connection()
        async with ws:
            if self._closed:  # aclose() ran while connecting
                return Closed("gemini: closed by sip4ai")
            try:
                await ws.send(wire.setup(self._config, self._settings, handle))
                async with asyncio.timeout(SETUP_TIMEOUT_S):
                    await self._await_setup(ws)
                self._link_up = True
            except websockets.ConnectionClosed as exc:
                return self._on_close(exc, resumable=False)
            if handle is None and self._settings.greeting:
                self.say(self._settings.greeting)
            sender = asyncio.create_task(self._send_loop(ws), name="gemini-send")
            try:
                return await self._receive_loop(ws)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def _await_setup(self, ws: ClientConnection) -> None:
        while True:
            events = self._decoder.decode(await ws.recv())
            if any(isinstance(e, Ready) for e in events):
                if not self._ready:
                    self._ready = True
                    self._events.put_nowait(Ready())
                for event in events:
                    if not isinstance(event, Ready):
                        self._events.put_nowait(event)
                return
            for event in events:
                self._events.put_nowait(event)

    async def _send_loop(self, ws: ClientConnection) -> None:
        """Until the link fails; the receiver then learns why (close code) and decides."""
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                if self._unsent is None:
                    self._unsent = await self._outgoing.get()
                await ws.send(self._unsent)
                self._unsent = None

    async def _receive_loop(self, ws: ClientConnection) -> Closed | _Resume:
        leave_at: float | None = None  # once goAway came: when to move on at the latest
        try:
            while True:
                try:
                    async with asyncio.timeout_at(leave_at):
                        raw = await ws.recv()
                except TimeoutError:
                    return _Resume("goAway, reply still running")
                for event in self._decoder.decode(raw):
                    if not isinstance(event, Ready):  # a repeated setupComplete means nothing
                        self._events.put_nowait(event)
                left = self._decoder.go_away_s
                if left is None:
                    continue
                if not self._decoder.in_turn:
                    return _Resume("goAway")
                if leave_at is None:
                    margin = min(GO_AWAY_MARGIN_S, left / 4)
                    leave_at = asyncio.get_running_loop().time() + left - margin
        except websockets.ConnectionClosed as exc:
            return self._on_close(exc, resumable=True)

    def _on_close(self, exc: websockets.ConnectionClosed, *, resumable: bool) -> Closed | _Resume:
        code = exc.rcvd.code if exc.rcvd else 1006
        reason = exc.rcvd.reason if exc.rcvd else ""
        for event in self._decoder.abort_turn():
            self._events.put_nowait(event)
        if self._closed:
            return Closed("gemini: closed by sip4ai")
        closed = wire.close_event(code, reason)
        going_away = self._decoder.go_away_s is not None and code not in wire.FATAL_CLOSE_CODES
        if resumable and self._decoder.handle is not None and (closed.retryable or going_away):
            return _Resume(f"connection closed ({code})")
        if going_away:
            return Closed(closed.reason, retryable=True)
        return closed

    # --- the interface ------------------------------------------------------------------------

    def events(self) -> AsyncIterator[ProviderEvent]:
        return self._iter_events()

    async def _iter_events(self) -> AsyncIterator[ProviderEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    def _send(self, message: str) -> None:
        try:
            self._outgoing.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped_frames += 1

    def send_audio(self, audio: bytes) -> None:
        self._send(wire.realtime_audio(audio))

    def truncate(self, item_id: str, played_ms: int) -> None:
        """Gemini keeps no playback position (``capabilities.truncation`` is False)."""

    def cancel_reply(self) -> None:
        """Gemini has no cancel: its server VAD interrupts the model itself."""

    def inject(self, message: str, role: str) -> None:
        self._send(wire.client_turn(wire.inject_text(message, role)))

    def say(self, instructions: str) -> None:
        self._send(wire.realtime_text(instructions))

    def tool_result(self, call_id: str, output: str) -> None:
        name = self._decoder.pending_calls.pop(call_id, None)
        if name is None:
            logger.info(
                "= gemini tool call %s was cancelled or is unknown; result dropped", call_id
            )
            return
        self._send(wire.tool_response(call_id, name, output))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
