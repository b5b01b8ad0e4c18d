"""OpenAI Realtime session: one websocket per call, G.711 mu-law both ways (no resampling)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection, connect

from sip4ai.config import OpenAIConfig
from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import openai_wire as wire
from sip4ai.providers.base import (
    Capabilities,
    Closed,
    ProviderEvent,
    Ready,
    SessionSettings,
)


logger = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    input_format=wire.PCMU_8K, output_format=wire.PCMU_8K, server_vad=True, truncation=True
)
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
"""An unanswered websocket close must not hold up the end of a call (pipecat uses 2 s too)."""
SEND_QUEUE_FRAMES = 500
"""About 10 s of 20 ms audio; beyond that the link is dead and old audio is worthless."""


class OpenAIRealtimeSession:
    def __init__(self, config: OpenAIConfig, settings: SessionSettings) -> None:
        self._config = config
        self._settings = settings
        self._outgoing: asyncio.Queue[str] = asyncio.Queue(maxsize=SEND_QUEUE_FRAMES)
        self._events: asyncio.Queue[ProviderEvent | None] = asyncio.Queue()
        self._decoder = wire.Decoder()
        self._ws: ClientConnection | None = None
        self._closed = False
        self.dropped_frames = 0

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def _url(self) -> str:
        return f"{self._config.base_url}?{urlencode({'model': self._config.model})}"

    async def run(self) -> None:
        reason: Closed
        try:
            reason = await self._serve()
        except asyncio.CancelledError:
            self._events.put_nowait(Closed("cancelled"))
            self._events.put_nowait(None)
            raise
        except ProviderProtocolError as exc:
            reason = Closed(str(exc), retryable=True)
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            reason = Closed(
                f"openai: HTTP {status} at connect", retryable=status >= 500 or status == 429
            )
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            reason = Closed(f"openai: connection failed: {exc}", retryable=True)
        logger.info("x openai session closed: %s", reason.reason)
        self._events.put_nowait(reason)
        self._events.put_nowait(None)

    async def _serve(self) -> Closed:
        key = self._config.api_key.reveal() if self._config.api_key else ""
        ws = await connect(
            self._url(),
            additional_headers={"Authorization": f"Bearer {key}"},
            open_timeout=CONNECT_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=2**24,
        )
        self._ws = ws
        async with ws:
            await ws.send(wire.session_update(self._config, self._settings))
            sender = asyncio.create_task(self._send_loop(ws), name="openai-send")
            try:
                return await self._receive_loop(ws)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            await ws.send(await self._outgoing.get())

    async def _receive_loop(self, ws: ClientConnection) -> Closed:
        greeted = False
        try:
            async for raw in ws:
                for event in self._decoder.decode(raw):
                    if isinstance(event, Closed):
                        return event
                    self._events.put_nowait(event)
                    if isinstance(event, Ready) and not greeted:
                        greeted = True
                        if self._settings.greeting:
                            self.say(
                                f"Greet the caller by saying exactly: {self._settings.greeting}"
                            )
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            return Closed(f"openai: connection closed ({code})", retryable=code != 1000)
        return Closed("openai: connection closed", retryable=False)

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
        self._send(wire.append_audio(audio))

    def truncate(self, item_id: str, played_ms: int) -> None:
        self._send(wire.truncate(item_id, self._decoder.clamp(item_id, played_ms)))

    def cancel_reply(self) -> None:
        self._send(wire.response_cancel())

    def inject(self, message: str, role: str) -> None:
        self._send(wire.message_item(message, role))
        self._send(wire.response_create())

    def say(self, instructions: str) -> None:
        self._send(wire.response_create(instructions))

    def tool_result(self, call_id: str, output: str) -> None:
        self._send(wire.function_output(call_id, output))
        self._send(wire.response_create())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
