"""A minimal OpenAI Realtime client for driving the mock directly (its tests, benchmarks).

It is not sip4ai's adapter: it only keeps every server event and finds them in order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from sip4ai.audio.g711 import ulaw_encode
from testbed.mocks._ws_common import tone


Event = dict[str, Any]

PCMU_SESSION: Final[Mapping[str, Any]] = {
    "type": "realtime",
    "instructions": "You are a phone agent.",
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": "gpt-4o-transcribe"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 300,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
    },
}
"""A GA session.update payload for G.711 mu-law both ways with server VAD."""


class RealtimeClient:
    """Keeps every event received (and its arrival time); ``next`` finds them in order."""

    def __init__(self, ws: ClientConnection, timeout_s: float = 5.0) -> None:
        self.ws = ws
        self.timeout_s = timeout_s
        self.events: list[Event] = []
        self.arrived: list[float] = []
        """``time.monotonic()`` at which each of ``events`` was read."""
        self._cursor = 0

    async def send(self, event: Mapping[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def next(self, event_type: str, timeout_s: float | None = None) -> Event:
        """The next event of ``event_type`` after the previous match (reading as needed)."""
        async with asyncio.timeout(self.timeout_s if timeout_s is None else timeout_s):
            while True:
                for i in range(self._cursor, len(self.events)):
                    if self.events[i]["type"] == event_type:
                        self._cursor = i + 1
                        return self.events[i]
                self._cursor = len(self.events)
                raw = await self.ws.recv()
                self.arrived.append(time.monotonic())
                self.events.append(json.loads(raw))

    def of(self, event_type: str) -> list[Event]:
        return [e for e in self.events if e["type"] == event_type]

    def arrival(self, event: Event) -> float:
        return self.arrived[self.events.index(event)]

    async def append(self, audio: bytes, frame_bytes: int = 160) -> None:
        """Send ``audio`` as ``input_audio_buffer.append`` events (160 B = 20 ms of mu-law)."""
        for i in range(0, len(audio), frame_bytes):
            chunk = base64.b64encode(audio[i : i + frame_bytes]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": chunk})

    def output_audio(self, response_id: str) -> bytes:
        """All output audio received so far for ``response_id``."""
        return b"".join(
            base64.b64decode(e["delta"])
            for e in self.of("response.output_audio.delta")
            if e["response_id"] == response_id
        )


@contextlib.asynccontextmanager
async def realtime_client(
    url: str,
    *,
    key: str = "test-key",
    session: Mapping[str, Any] | None = PCMU_SESSION,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> AsyncIterator[RealtimeClient]:
    """Connect, wait for ``session.created`` and, unless ``session`` is None, apply it."""
    sent_headers = {"Authorization": f"Bearer {key}", **(headers or {})}
    async with connect(url, additional_headers=sent_headers, open_timeout=timeout_s) as ws:
        client = RealtimeClient(ws, timeout_s)
        await client.next("session.created")
        if session is not None:
            await client.send({"type": "session.update", "session": session})
            await client.next("session.updated")
        yield client


def ulaw_tone(ms: int, freq_hz: float = 300.0, amplitude: float = 0.3) -> bytes:
    """Mu-law "speech": a tone loud enough for the mock's VAD at its default threshold."""
    return ulaw_encode(tone(freq_hz, ms, 8000, amplitude))


def ulaw_silence(ms: int) -> bytes:
    return ulaw_encode(np.zeros(8 * ms, dtype=np.int16))
