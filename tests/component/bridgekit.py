"""What the bridge-with-a-provider component tests share: waiting on the fake media clock,
tone helpers, and running an AIConversation on a PacedMedia for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np

from sip4ai.bridge import AIConversation
from testbed.mocks._ws_common import dominant_hz, tone
from tests.fakes.sip import PacedMedia


TIMEOUT_S = 10.0


async def until(predicate: Callable[[], object], timeout_s: float = TIMEOUT_S) -> None:
    """Re-check ``predicate`` every frame time (media state changes without any event)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the fake media clock has no event to wait on
            await asyncio.sleep(0.02)


def frames_hz(frames: list[bytes], rate_hz: int = 8000) -> float:
    """Dominant frequency of PCM16 frames."""
    return dominant_hz(np.frombuffer(b"".join(frames), dtype=np.int16), rate_hz)


def speech_pcm(ms: int, freq_hz: float = 300.0, *, rate_hz: int = 8000) -> bytes:
    """A caller "speaking": a loud tone as PCM16 at ``rate_hz``."""
    return tone(freq_hz, ms, rate_hz, amplitude=0.5).astype("<i2").tobytes()


@contextlib.asynccontextmanager
async def running(
    conv: AIConversation, media: PacedMedia
) -> AsyncIterator[asyncio.Task[str | None]]:
    """Prepare ``conv`` (the provider is ready), run it on ``media``; stop and close it after."""
    await asyncio.wait_for(conv.prepare(), TIMEOUT_S)
    task = asyncio.create_task(conv.run(media))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await conv.aclose()
