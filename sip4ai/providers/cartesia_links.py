"""The Cartesia pipeline's two websocket links (Deepgram STT, Cartesia TTS): I/O only.

A ``WsLink`` owns one websocket: a bounded outgoing queue drained by one sender task (with an
optional keepalive text frame when idle), and a receive loop that hands every frame to a
callback. ``run`` returns the ``Closed`` reason when the socket ends; nothing else is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import websockets
from websockets.asyncio.client import ClientConnection, connect

from sip4ai.errors import ProviderProtocolError
from sip4ai.providers.base import Closed


logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
SEND_QUEUE_FRAMES = 500
"""About 10 s of 20 ms caller audio; beyond that the link is dead and old audio is worthless."""

Message = str | bytes


def connect_failure(name: str, exc: BaseException) -> Closed:
    """``Closed`` for a failed connect: auth and bad requests are final, the rest retryable."""
    if isinstance(exc, websockets.InvalidStatus):
        status = exc.response.status_code
        return Closed(f"{name}: HTTP {status} at connect", retryable=status >= 500 or status == 429)
    return Closed(f"{name}: connection failed: {exc!r}", retryable=True)


class WsLink:
    def __init__(
        self,
        name: str,
        url: str,
        headers: Mapping[str, str],
        *,
        keepalive: str | None = None,
        keepalive_interval_s: float = 4.0,
        goodbye: str | None = None,
    ) -> None:
        self.name = name
        self._url = url
        self._headers = dict(headers)
        self._keepalive = keepalive
        self._keepalive_interval_s = keepalive_interval_s
        self._goodbye = goodbye
        self._outgoing: asyncio.Queue[Message] = asyncio.Queue(maxsize=SEND_QUEUE_FRAMES)
        self._ws: ClientConnection | None = None
        self.dropped = 0

    async def open(self) -> None:
        """Connect (raises the websockets/OS error; ``connect_failure`` classifies it)."""
        self._ws = await connect(
            self._url,
            additional_headers=self._headers,
            open_timeout=CONNECT_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=2**24,
        )
        logger.debug("= %s: connected", self.name)

    def send(self, message: Message) -> None:
        """Queue a frame (never blocks; drops and counts when the link is backed up)."""
        try:
            self._outgoing.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self, on_message: Callable[[Message], None]) -> Closed:
        ws = self._ws
        if ws is None:
            return Closed(f"{self.name}: not connected", retryable=True)
        sender = asyncio.create_task(self._send_loop(ws), name=f"{self.name}-send")
        try:
            async for raw in ws:
                on_message(raw)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            reason = exc.rcvd.reason if exc.rcvd else ""
            return Closed(
                f"{self.name}: connection closed ({code} {reason})".strip(),
                retryable=code != 1000,
                details={"code": code},
            )
        except ProviderProtocolError as exc:
            return Closed(str(exc), retryable=True)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        code = ws.close_code or 1000
        return Closed(
            f"{self.name}: connection closed ({code} {ws.close_reason or ''})".strip(),
            retryable=code != 1000,
            details={"code": code},
        )

    async def _send_loop(self, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                try:
                    async with asyncio.timeout(self._keepalive_interval_s):
                        message = await self._outgoing.get()
                except TimeoutError:
                    if self._keepalive is None:
                        continue
                    message = self._keepalive
                await ws.send(message)

    async def aclose(self) -> None:
        """Say goodbye (if the protocol has a message for it) and close, bounded."""
        ws, self._ws = self._ws, None
        if ws is None:
            return
        if self._goodbye is not None:
            with contextlib.suppress(websockets.ConnectionClosed, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await ws.send(self._goodbye)
        with contextlib.suppress(websockets.ConnectionClosed, OSError):
            await ws.close()
