"""Helpers for the e2e tests of the SIP engines: a running engine with a stand-in AI side.

``EngineSession`` starts the engine of the running test's backend (``sip_backend`` fixture:
baresip or pjsua2) on a free loopback port, consumes its events (all
recorded, in order) and plays the AI side: it answers inbound calls (unless told not to) and,
once a leg's media is ready, writes a known tone and keeps every frame it reads.

SIPp runs in the background (``sipp.start``) and is awaited with ``asyncio.to_thread``: the
harness' blocking waits must never stall the loop the engine runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from sip4ai.config import Secret, SipConfig, SipEngineName
from sip4ai.sip.baresip_engine import BaresipEngine
from sip4ai.sip.baresip_registration import Backoff
from sip4ai.sip.interface import (
    IncomingCall,
    LegEnded,
    MediaReady,
    RegistrationChanged,
    RegistrationState,
    SipEngine,
    SipEvent,
)
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from testbed.harness.sipp import SippProcess, SippResult
from testbed.harness.tones import analyse_tone, tone_pcm
from tests.conftest import MS


E = TypeVar("E", bound=SipEvent)

FAST_BACKOFF = Backoff(first_s=0.5, factor=2.0, max_s=2.0, jitter=0.0)
WAIT_S = 10_000 * MS
FRAME_BYTES = 320
# RTP ports per engine (2 per call); the harness never hands a port out twice in one process.
RTP_PORTS = 40


BACKENDS: tuple[SipEngineName, ...] = ("baresip", "pjsua2")
_backend: list[SipEngineName] = ["baresip"]


def current_backend() -> SipEngineName:
    """The backend the running test uses (the ``sip_backend`` fixture sets it)."""
    return _backend[0]


def use_backend(name: SipEngineName) -> None:
    _backend[0] = name


def make_engine(config: SipConfig, backoff: Backoff = FAST_BACKOFF) -> SipEngine:
    if config.engine == "pjsua2":
        from sip4ai.sip.pjsua2_engine import Pjsua2Engine

        return Pjsua2Engine(config, backoff=backoff)
    return BaresipEngine(config, backoff=backoff)


def engine_config(kamailio: Kamailio | None, **overrides: object) -> SipConfig:
    """aibot at the testbed's Kamailio, listening on a free loopback port, on the backend of the
    running test."""
    rtp = free_port(udp=True, tcp=False, span=RTP_PORTS)
    base = SipConfig(
        engine=current_backend(),
        username="aibot",
        password=Secret("aibotpw"),
        domain=kamailio.address if kamailio is not None else None,
        listen=f"127.0.0.1:{free_port(udp=True, tcp=True)}",
        rtp_port_min=rtp,
        rtp_port_max=rtp + RTP_PORTS - 1,
        # pjsua2 handles at most 4 calls per process (and warns at start about more)
        max_calls=4 if current_backend() == "pjsua2" else 20,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


class EngineSession:
    def __init__(
        self,
        config: SipConfig,
        *,
        auto_answer: bool = True,
        tone_hz: float | None = 1000.0,
        backoff: Backoff = FAST_BACKOFF,
    ) -> None:
        self.config = config
        self.engine = make_engine(config, backoff)
        self.auto_answer = auto_answer
        self.events: list[SipEvent] = []
        self.frames: dict[str, list[bytes]] = {}
        self.first_frame_at: dict[str, float] = {}
        """Wall-clock time (time.time(), like pcap timestamps) of each leg's first read frame."""
        self.pump_errors: list[BaseException] = []
        self._tone = tone_pcm(tone_hz, 1.0).tobytes() if tone_hz else b"\0" * 16000
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.on_media: Callable[[MediaReady], None] | None = None

    @property
    def listen_port(self) -> int:
        return int(self.config.listen.rsplit(":", 1)[1])

    async def __aenter__(self) -> EngineSession:
        await self.engine.start()
        self._tasks.append(asyncio.create_task(self._consume(), name="test:engine-events"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.engine.stop()
        for task in self._tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _consume(self) -> None:
        async for event in self.engine.events():
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
            if isinstance(event, IncomingCall) and self.auto_answer:
                await self.engine.answer(event.leg_id)
            elif isinstance(event, MediaReady):
                self.frames[event.leg_id] = []
                if self.on_media is not None:
                    self.on_media(event)
                self._tasks.append(
                    asyncio.create_task(self._pump(event.leg_id), name=f"test:pump-{event.leg_id}")
                )

    async def _pump(self, leg_id: str) -> None:
        """The stand-in AI: keep ~60 ms of tone queued, read every caller frame."""
        media = self.engine.media(leg_id)
        assert media is not None
        offset = 0
        try:
            while self.engine.media(leg_id) is not None and not self.ended(leg_id):
                frames = media.read()
                if frames and leg_id not in self.first_frame_at:
                    self.first_frame_at[leg_id] = time.time()
                self.frames[leg_id].extend(frames)
                for _ in range(4):  # bounded: a torn-down stream reports 0 ms queued forever
                    if media.queued_ms() >= 60:
                        break
                    media.write(self._tone[offset : offset + FRAME_BYTES])
                    offset = (offset + FRAME_BYTES) % len(self._tone)
                await asyncio.sleep(0.02)
            self.frames[leg_id].extend(media.read())
        except Exception as exc:  # recorded: the test asserts there were none
            self.pump_errors.append(exc)

    def ended(self, leg_id: str) -> bool:
        return any(isinstance(e, LegEnded) and e.leg_id == leg_id for e in self.events)

    async def wait(
        self,
        kind: type[E],
        where: Callable[[E], bool] = lambda _: True,
        timeout_s: float = WAIT_S,
    ) -> E:
        def found() -> E | None:
            for event in self.events:
                if isinstance(event, kind) and where(event):
                    return event
            return None

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout_s)
        result = found()
        assert result is not None
        return result

    def of(self, kind: type[E], leg_id: str | None = None) -> list[E]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and (leg_id is None or getattr(e, "leg_id", None) == leg_id)
        ]

    async def registered(self, timeout_s: float = WAIT_S) -> RegistrationChanged:
        return await self.wait(
            RegistrationChanged, lambda e: e.state is RegistrationState.REGISTERED, timeout_s
        )

    def received_pcm(self, leg_id: str) -> npt.NDArray[np.int16]:
        return np.frombuffer(b"".join(self.frames.get(leg_id, [])), dtype=np.int16)


async def finish(process: SippProcess, timeout_s: float = 30.0) -> SippResult:
    """Wait for a background SIPp without blocking the loop."""
    return await asyncio.to_thread(process.wait, timeout_s)


def assert_tone(pcm: npt.NDArray[np.int16], freq_hz: float, label: str) -> None:
    middle = pcm[len(pcm) // 4 : len(pcm) // 4 + 8000] if len(pcm) > 16000 else pcm
    assert len(middle) >= 4000, f"{label}: only {len(pcm)} samples"
    tone = analyse_tone(middle)
    assert abs(tone.dominant_hz - freq_hz) < 3.0, f"{label}: {tone}"
    assert tone.band_energy_share > 0.9, f"{label}: {tone}"


def own_sockets(kind: str = "udp") -> set[tuple[str, int]]:
    """(local address, port) of this process' sockets of ``kind`` (``udp`` or ``tcp``)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    address, port = fields[1].rsplit(":", 1)
                    found.add((address, int(port, 16)))
    return found


@contextlib.asynccontextmanager
async def blocked_loop(seconds: float) -> AsyncIterator[None]:
    """Schedule a blocking sleep on the loop: whatever the stack emits meanwhile queues up."""
    asyncio.get_running_loop().call_soon(time.sleep, seconds)
    yield
