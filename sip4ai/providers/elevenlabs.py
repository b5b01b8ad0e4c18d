"""ElevenLabs Agents session: one websocket conversation per call (providers.md section 2).

With an API key the session first asks for a signed URL (private agents); without one it
connects to ``base_url?agent_id=...`` (public agents). The agent's audio formats are chosen in
the ElevenLabs dashboard; the session learns them from ``conversation_initiation_metadata``
and declares them in ``capabilities`` before ``Ready``, so the bridge transcodes as needed
(nothing to do when both are ``ulaw_8000``). See ``elevenlabs_wire`` for how replies are
delimited without an end-of-reply event.

Mapping of the provider interface: ``inject(.., "system")`` is a ``contextual_update`` followed
by a short ``user_message`` asking the agent to respond (a contextual update alone never gets a
reply); ``inject(.., "user")`` and ``say`` are ``user_message``s; ``tool_result`` is a
``client_tool_result``. ``truncate`` and ``cancel_reply`` send nothing (the server handles
barge-in itself and corrects its transcript). Pings are answered from the receive loop at once,
never behind queued caller audio. ``SpeechStopped`` is reported with the caller's final
transcript, the protocol's only end-of-turn signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection, connect

from sip4ai.config import ElevenLabsConfig
from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import elevenlabs_wire as wire
from sip4ai.providers.base import Capabilities, Closed, ProviderEvent, Ready, SessionSettings


logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
SEND_QUEUE_FRAMES = 500
"""About 10 s of 20 ms audio; beyond that the link is dead and old audio is worthless."""


class _Refused(Exception):
    """The signed-URL request failed; carries the Closed to report."""

    def __init__(self, closed: Closed) -> None:
        super().__init__(closed.reason)
        self.closed = closed


def signed_url_endpoint(base_url: str, agent_id: str) -> str:
    """``wss://host/v1/convai/conversation`` -> ``https://host/.../get-signed-url?agent_id=``."""
    parts = urlsplit(base_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + "/get-signed-url"
    return urlunsplit((scheme, parts.netloc, path, urlencode({"agent_id": agent_id}), ""))


def public_url(base_url: str, agent_id: str) -> str:
    separator = "&" if urlsplit(base_url).query else "?"
    return f"{base_url}{separator}{urlencode({'agent_id': agent_id})}"


class ElevenLabsSession:
    def __init__(self, config: ElevenLabsConfig, settings: SessionSettings) -> None:
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
        """The agent's formats once known (before ``Ready``: mu-law 8 kHz, the expected setup)."""
        return Capabilities(
            input_format=self._decoder.input_format,
            output_format=self._decoder.output_format,
            server_vad=True,
            truncation=False,
        )

    @property
    def dropped_audio(self) -> int:
        """Stale audio chunks of interrupted replies that were dropped."""
        return self._decoder.dropped_audio

    async def run(self) -> None:
        reason: Closed
        try:
            reason = await self._serve()
        except asyncio.CancelledError:
            self._finish(Closed("cancelled"))
            raise
        except _Refused as exc:
            reason = exc.closed
        except ProviderProtocolError as exc:
            reason = Closed(str(exc), retryable=True)
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            reason = Closed(
                f"elevenlabs: HTTP {status} at connect", retryable=status >= 500 or status == 429
            )
        except (OSError, TimeoutError, aiohttp.ClientError, websockets.WebSocketException) as exc:
            # Only OS errors are quoted: other messages may contain the signed URL's token.
            detail = str(exc) if isinstance(exc, OSError) else type(exc).__name__
            reason = Closed(f"elevenlabs: connection failed: {detail}", retryable=True)
        except Exception as exc:  # a bug must still end the call's session with Closed
            logger.exception("! elevenlabs session failed")
            reason = Closed(f"elevenlabs: internal error: {type(exc).__name__}", retryable=True)
        logger.info("x elevenlabs session closed: %s", reason.reason)
        self._finish(reason)

    def _finish(self, reason: Closed) -> None:
        for event in self._decoder.finish():
            self._events.put_nowait(event)
        self._events.put_nowait(reason)
        self._events.put_nowait(None)

    async def _url(self, agent_id: str) -> str:
        base = self._config.base_url
        key = self._config.api_key
        if not key:
            return public_url(base, agent_id)
        endpoint = signed_url_endpoint(base, agent_id)
        timeout = aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(endpoint, headers={"xi-api-key": key.reveal()}) as response,
        ):
            if response.status != 200:
                status = response.status
                raise _Refused(
                    Closed(
                        f"elevenlabs: HTTP {status} from get-signed-url",
                        retryable=status >= 500 or status == 429,
                    )
                )
            try:
                body: Any = await response.json(content_type=None)
            except ValueError:
                body = None
        signed = body.get("signed_url") if isinstance(body, dict) else None
        if not isinstance(signed, str) or not signed.startswith(("ws://", "wss://")):
            raise ProviderProtocolError("elevenlabs: get-signed-url returned no signed_url")
        return signed

    async def _serve(self) -> Closed:
        agent_id = self._config.agent_id
        if not agent_id:
            return Closed("elevenlabs: agent_id is not configured", retryable=False)
        url = await self._url(agent_id)
        ws = await connect(
            url,
            open_timeout=CONNECT_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=2**24,
        )
        self._ws = ws
        async with ws:
            await ws.send(wire.initiation(self._config, self._settings))
            sender = asyncio.create_task(self._send_loop(ws), name="elevenlabs-send")
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
        loop = asyncio.get_running_loop()
        decoder = self._decoder
        try:
            while True:
                deadline = decoder.deadline
                try:
                    async with asyncio.timeout_at(deadline):
                        raw = await ws.recv()
                except TimeoutError:
                    self._put(decoder.expire(loop.time()))
                    continue
                decoded = decoder.decode(raw, loop.time())
                for reply in decoded.replies:  # pongs go out at once, not behind queued audio
                    await ws.send(reply)
                for event in decoded.events:
                    if isinstance(event, Closed):
                        return event
                    self._events.put_nowait(event)
                    if isinstance(event, Ready):
                        self._after_ready()
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            reason = exc.rcvd.reason if exc.rcvd else ""
            return wire.close_outcome(code, reason, decoder.last_error)

    def _after_ready(self) -> None:
        fmt_in, fmt_out = self._decoder.input_format, self._decoder.output_format
        logger.info(
            "= elevenlabs conversation %s: in %s, out %s",
            self._decoder.conversation_id,
            wire.format_name(fmt_in),
            wire.format_name(fmt_out),
        )
        _, greet = wire.first_message(self._config, self._settings)
        if greet is not None:
            self.say(greet)
        if not self._config.system_prompt and self._settings.instructions:
            # Without a prompt override the agent keeps its own prompt; the call's own
            # instructions (an outbound task, a failover's history) still reach it as
            # background context, which needs no override permission.
            logger.info("= elevenlabs: no system_prompt configured; call context sent as an update")
            self._send(wire.contextual_update(self._settings.instructions))

    def _put(self, events: list[ProviderEvent]) -> None:
        for event in events:
            self._events.put_nowait(event)

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
        self._send(wire.audio_chunk(audio))

    def truncate(self, item_id: str, played_ms: int) -> None:
        """Nothing to send: ElevenLabs corrects its own transcript after an interruption."""

    def cancel_reply(self) -> None:
        """Nothing to send: the agent stops a reply only on the caller's speech."""

    def inject(self, message: str, role: str) -> None:
        if role == "user":
            self._send(wire.user_message(message))
            return
        self._send(wire.contextual_update(message))
        self._send(wire.user_message(wire.SYSTEM_NUDGE))

    def say(self, instructions: str) -> None:
        self._send(wire.user_message(instructions))

    def tool_result(self, call_id: str, output: str) -> None:
        self._send(wire.tool_result(call_id, output))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
