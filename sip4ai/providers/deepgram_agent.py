"""Deepgram Voice Agent (v1) session: one websocket per call, mu-law 8 kHz both ways.

``run()`` connects with ``Authorization: Token <key>``, sends ``Settings`` first and waits for
``SettingsApplied`` (-> ``Ready``) before any queued message or caller audio goes out. Caller
audio travels as binary frames; whenever no audio has been sent for ``keepalive_s`` a
``KeepAlive`` goes out instead (the server closes after ~10 s of neither).

Mapping of the interface onto the protocol (Deepgram has no "respond now with instructions"):

- ``say(instructions)`` and ``inject(text, "user")`` send ``InjectUserMessage``: the agent answers
  it like a spoken turn. The greeting uses the config's literal ``greeting`` (``Settings``) when
  set, else ``say(SessionSettings.greeting)`` once the settings are applied.
- ``inject(text, "system")`` sends ``UpdatePrompt`` with the prompt extended by the text. That is
  background context only: the agent takes it into account from its next turn and does not
  answer at once (the protocol has no way to ask for a reply without a fake user turn).
- ``truncate`` is a no-op (no truncation in the protocol); ``cancel_reply`` is a no-op too: the
  server abandons a reply itself on barge-in, and the decoder drops its stale audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import websockets
from websockets.asyncio.client import ClientConnection, connect

from sip4ai.config import DeepgramConfig
from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import deepgram_agent_wire as wire
from sip4ai.providers.base import Capabilities, Closed, ProviderEvent, Ready, SessionSettings


logger = logging.getLogger(__name__)

CAPABILITIES = Capabilities(
    input_format=wire.PCMU_8K, output_format=wire.PCMU_8K, server_vad=True, truncation=False
)
CONNECT_TIMEOUT_S = 10.0
SETUP_TIMEOUT_S = 10.0
"""From connect to ``SettingsApplied``."""
CLOSE_TIMEOUT_S = 2.0
KEEPALIVE_S = 5.0
"""Deepgram asks for a KeepAlive at most every 8 s while no audio flows."""
SEND_QUEUE_FRAMES = 500
"""About 10 s of 20 ms audio; beyond that the link is dead and old audio is worthless."""

Outgoing = str | bytes


class DeepgramAgentSession:
    def __init__(
        self,
        config: DeepgramConfig,
        settings: SessionSettings,
        *,
        keepalive_s: float = KEEPALIVE_S,
        setup_timeout_s: float = SETUP_TIMEOUT_S,
    ) -> None:
        self._config = config
        self._settings = settings
        self._keepalive_s = keepalive_s
        self._setup_timeout_s = setup_timeout_s
        self._prompt = settings.instructions
        self._outgoing: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=SEND_QUEUE_FRAMES)
        self._events: asyncio.Queue[ProviderEvent | None] = asyncio.Queue()
        self._decoder = wire.Decoder()
        self._ws: ClientConnection | None = None
        self._closed = False
        self.dropped_frames = 0
        self.keepalives_sent = 0

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    @property
    def stale_audio_bytes(self) -> int:
        """Audio of interrupted replies that arrived after the barge-in and was dropped."""
        return self._decoder.dropped_audio_bytes

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
                f"deepgram: HTTP {status} at connect", retryable=status >= 500 or status == 429
            )
        except TimeoutError:
            reason = Closed("deepgram: connection timed out", retryable=True)
        except (OSError, websockets.WebSocketException) as exc:
            reason = Closed(f"deepgram: connection failed: {exc}", retryable=True)
        logger.info("x deepgram session closed: %s", reason.reason)
        self._events.put_nowait(reason)
        self._events.put_nowait(None)

    async def _serve(self) -> Closed:
        key = self._config.api_key.reveal() if self._config.api_key else ""
        ws = await connect(
            self._config.base_url,
            additional_headers={"Authorization": f"Token {key}"},
            open_timeout=CONNECT_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=2**24,
            ping_interval=None,
        )
        self._ws = ws
        async with ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                # If the server already gave up (e.g. Error + close), its reason is still
                # waiting to be read below.
                await ws.send(wire.settings(self._config, self._settings))
            frames = aiter(ws)
            try:
                async with asyncio.timeout(self._setup_timeout_s):
                    closed = await self._until_ready(ws, frames)
            except websockets.ConnectionClosed:
                return self._closed_by_server(ws)
            except TimeoutError:
                return Closed("deepgram: no SettingsApplied in time", retryable=True)
            if closed is not None:
                return closed
            if self._settings.greeting is not None and not wire.literal_greeting(
                self._config, self._settings
            ):
                self.say(self._settings.greeting)
            sender = asyncio.create_task(self._send_loop(ws), name="deepgram-send")
            try:
                return await self._receive_loop(ws, frames)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def _until_ready(
        self, ws: ClientConnection, frames: AsyncIterator[str | bytes]
    ) -> Closed | None:
        """Read until ``SettingsApplied``; a ``Closed`` if the server ends the session first."""
        async for raw in frames:
            for event in self._decoder.decode(raw):
                if isinstance(event, Closed):
                    return event
                self._events.put_nowait(event)
                if isinstance(event, Ready):
                    return None
        return self._closed_by_server(ws)

    async def _send_loop(self, ws: ClientConnection) -> None:
        """Sends queued frames; a KeepAlive whenever no audio went out for ``keepalive_s``.

        Ends quietly when the socket closes: the receive loop reports why.
        """
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._send_frames(ws)

    async def _send_frames(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        last_audio = loop.time()
        while True:
            wait_s = max(0.0, last_audio + self._keepalive_s - loop.time())
            try:
                message = await asyncio.wait_for(self._outgoing.get(), wait_s)
            except TimeoutError:
                await ws.send(wire.keep_alive())
                self.keepalives_sent += 1
                last_audio = loop.time()
                continue
            await ws.send(message)
            if isinstance(message, bytes):
                last_audio = loop.time()

    async def _receive_loop(
        self, ws: ClientConnection, frames: AsyncIterator[str | bytes]
    ) -> Closed:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in frames:
                for event in self._decoder.decode(raw):
                    if isinstance(event, Closed):
                        return event
                    self._events.put_nowait(event)
        return self._closed_by_server(ws)

    def _closed_by_server(self, ws: ClientConnection) -> Closed:
        if self._closed:
            return Closed("deepgram: closed by sip4ai")
        code = ws.close_code if ws.close_code is not None else 1006
        reason = ws.close_reason or ""
        return Closed(
            f"deepgram: connection closed ({code})",
            retryable=wire.close_is_retryable(code, reason),
            details={"code": code, "reason": reason},
        )

    def events(self) -> AsyncIterator[ProviderEvent]:
        return self._iter_events()

    async def _iter_events(self) -> AsyncIterator[ProviderEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    def _send(self, message: Outgoing) -> None:
        try:
            self._outgoing.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped_frames += 1

    def send_audio(self, audio: bytes) -> None:
        if audio:
            self._send(bytes(audio))

    def truncate(self, item_id: str, played_ms: int) -> None:
        """Not in the protocol (``capabilities.truncation`` is False)."""

    def cancel_reply(self) -> None:
        """The server abandons an interrupted reply itself; nothing to send."""

    def inject(self, message: str, role: str) -> None:
        if role == "user":
            self._inject_user(message)
            return
        # Context goes into the prompt for every later turn; like OpenAI's system item plus
        # response.create, the agent is then asked to take it into account now.
        self._prompt = wire.extended_prompt(self._prompt, message)
        self._send(wire.update_prompt(self._prompt))
        self._inject_user(f"(New context for you, not said by the caller: {message})")

    def say(self, instructions: str) -> None:
        self._inject_user(instructions)

    def _inject_user(self, text: str) -> None:
        self._decoder.injected_user_text(text)
        self._send(wire.inject_user_message(text))

    def tool_result(self, call_id: str, output: str) -> None:
        name = self._decoder.call_names.pop(call_id, None)
        if name is None:
            logger.warning("! deepgram: result for unknown function call %s dropped", call_id)
            return
        self._send(wire.function_call_response(call_id, name, output))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
