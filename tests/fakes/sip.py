"""An in-memory SipEngine for tests of everything above the SIP boundary (tests only)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from sip4ai.sip.interface import (
    DialRequest,
    EndCause,
    IncomingCall,
    LegAnswered,
    LegEnded,
    LegRinging,
    MediaStats,
    MediaStream,
    RegistrationChanged,
    RegistrationState,
    SipEvent,
)


class FakeMedia:
    """Loopback-free media: frames the test queues come out of read(); writes are recorded."""

    def __init__(self, rate_hz: int = 8000) -> None:
        self._rate_hz = rate_hz
        self.incoming: list[bytes] = []
        self.written: list[bytes] = []
        self.flushes = 0

    @property
    def rate_hz(self) -> int:
        return self._rate_hz

    @property
    def frame_bytes(self) -> int:
        return self._rate_hz // 50 * 2

    def read(self) -> list[bytes]:
        frames, self.incoming = self.incoming, []
        return frames

    def write(self, frame: bytes) -> None:
        self.written.append(frame)

    def queued_ms(self) -> int:
        return 0

    def flush(self) -> None:
        self.flushes += 1

    def stats(self) -> MediaStats:
        return MediaStats(len(self.incoming), len(self.written), 0, 0)


class FakeSipEngine:
    """Records commands; tests drive it with ``emit()`` and the helper methods below."""

    def __init__(self, *, register: bool = True) -> None:
        self._queue: asyncio.Queue[SipEvent | None] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._register = register
        self._registration = RegistrationState.UNREGISTERED
        self.dialled: list[tuple[str, DialRequest]] = []
        self.answered: list[str] = []
        self.rejected: list[tuple[str, int]] = []
        self.hung_up: list[str] = []
        self.dtmf_sent: list[tuple[str, str]] = []
        self.transfers: list[tuple[str, str]] = []
        self.media_streams: dict[str, FakeMedia] = {}
        self.started = False
        self.stopped = False
        self.auto_end_on_hangup = True
        self.dial_seen = asyncio.Event()
        """Set by every dial(); tests wait on it."""

    @property
    def registration(self) -> RegistrationState:
        return self._registration

    @property
    def name(self) -> str:
        return "fake"

    def emit(self, event: SipEvent) -> None:
        if isinstance(event, RegistrationChanged):
            self._registration = event.state
        self._queue.put_nowait(event)

    async def start(self) -> None:
        self.started = True
        if self._register:
            self.emit(RegistrationChanged(RegistrationState.REGISTERED, "200 OK", 200))

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for leg in list(self.media_streams):
            await self.hangup(leg)
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[SipEvent]:
        while (event := await self._queue.get()) is not None:
            yield event

    def ring_in(self, from_user: str = "+61400000001") -> str:
        leg = f"in-{next(self._ids)}"
        self.emit(IncomingCall(leg, from_user, "", "aibot", "127.0.0.1:5090"))
        return leg

    async def answer(self, leg_id: str) -> None:
        self.answered.append(leg_id)
        self.media_streams[leg_id] = FakeMedia()
        self.emit(LegAnswered(leg_id))

    async def reject(self, leg_id: str, status_code: int = 486, reason: str = "Busy Here") -> None:
        self.rejected.append((leg_id, status_code))

    async def dial(self, request: DialRequest) -> str:
        leg = f"out-{next(self._ids)}"
        self.dialled.append((leg, request))
        self.dial_seen.set()
        return leg

    def remote_ringing(self, leg_id: str) -> None:
        self.emit(LegRinging(leg_id))

    def remote_answer(self, leg_id: str) -> None:
        self.media_streams[leg_id] = FakeMedia()
        self.emit(LegAnswered(leg_id))

    def remote_end(self, leg_id: str, cause: EndCause, status_code: int | None = None) -> None:
        self.media_streams.pop(leg_id, None)
        self.emit(LegEnded(leg_id, cause, status_code))

    async def hangup(self, leg_id: str) -> None:
        self.hung_up.append(leg_id)
        if self.auto_end_on_hangup:
            self.media_streams.pop(leg_id, None)
            self.emit(LegEnded(leg_id, EndCause.LOCAL_HANGUP))

    async def send_dtmf(self, leg_id: str, digits: str) -> None:
        self.dtmf_sent.append((leg_id, digits))

    async def transfer(self, leg_id: str, target: str) -> None:
        self.transfers.append((leg_id, target))

    def media(self, leg_id: str) -> MediaStream | None:
        return self.media_streams.get(leg_id)


class PacedMedia(FakeMedia):
    """A media stream whose send queue drains in real time, 20 ms per frame, like a SIP stack.

    ``sent`` holds (play time, frame) for every frame that reached the "wire"; ``flush`` drops
    the frames not yet played, as a barge-in flush does in the library.
    """

    def __init__(self, rate_hz: int = 8000) -> None:
        super().__init__(rate_hz)
        self._queue: list[tuple[float, bytes]] = []
        self._play_until = 0.0
        self.sent: list[tuple[float, bytes]] = []

    @staticmethod
    def _now() -> float:
        import time

        return time.monotonic()

    def _settle(self) -> None:
        now = self._now()
        while self._queue and self._queue[0][0] <= now:
            self.sent.append(self._queue.pop(0))

    def write(self, frame: bytes) -> None:
        self._settle()
        start = max(self._now(), self._play_until)
        self._play_until = start + 0.02
        self._queue.append((start, frame))
        self.written.append(frame)

    def queued_ms(self) -> int:
        self._settle()
        return max(0, round((self._play_until - self._now()) * 1000))

    def flush(self) -> None:
        self._settle()
        self._queue.clear()
        self._play_until = self._now()
        self.flushes += 1

    def feed(self, pcm: bytes) -> None:
        """Queue caller audio, cut into frames, for the next read()."""
        size = self.frame_bytes
        self.incoming += [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]
