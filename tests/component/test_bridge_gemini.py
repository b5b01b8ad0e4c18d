"""The audio bridge + Gemini Live session against the Gemini mock on loopback.

Gemini takes 16 kHz and answers 24 kHz PCM16; the bridge resamples both ways (soxr), so the
caller at 8 kHz must hear the mock's tones at their pitch and the mock must hear 16 kHz audio.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from sip4ai.bridge import AIConversation
from sip4ai.config import GeminiConfig, Secret
from sip4ai.providers.base import ProviderSession, SessionSettings
from sip4ai.providers.gemini import GeminiLiveSession
from testbed.mocks._ws_common import dominant_hz
from testbed.mocks.mock_gemini import GeminiMock, GeminiScript, Reply, Script, running_gemini_mock
from tests.component.bridgekit import TIMEOUT_S, frames_hz, running, speech_pcm, until
from tests.fakes.handle import FakeHandle
from tests.fakes.sip import PacedMedia


pytestmark = pytest.mark.component


@contextlib.asynccontextmanager
async def conversation(
    mock: GeminiMock, handle: FakeHandle, media: PacedMedia
) -> AsyncIterator[tuple[AIConversation, asyncio.Task[str | None]]]:
    config = GeminiConfig(api_key=Secret("test-key"), base_url=mock.live_url)

    def make() -> ProviderSession:
        return GeminiLiveSession(config, SessionSettings("Be brief.", greeting="Greet the caller"))

    conv = AIConversation(handle, make)
    async with running(conv, media) as task:
        yield conv, task


@pytest.mark.parametrize("call_rate_hz", [8000, 16000])
async def test_greeting_pitch_and_both_transcripts(call_rate_hz: int) -> None:
    script = GeminiScript(
        Script(
            replies=(Reply("Hello caller", duration_ms=600), Reply("It is noon", duration_ms=400)),
            transcripts=("What time is it?",),
            think_ms=50,
            speed=4.0,
        )
    )
    async with running_gemini_mock(script) as mock:
        handle, media = FakeHandle.for_provider("gemini"), PacedMedia(call_rate_hz)
        async with conversation(mock, handle, media):
            conn = await mock.wait_connection()
            await until(lambda: len(media.sent) >= 25)
            greeting = [frame for _, frame in media.sent[2:25]]
            assert abs(frames_hz(greeting, call_rate_hz) - 400) < 20
            await until(lambda: "Hello caller" in handle.said("ai"))
            media.feed(speech_pcm(800, rate_hz=call_rate_hz) + bytes(2 * call_rate_hz))
            await until(lambda: "What time is it?" in handle.said("user"))
            await until(lambda: "It is noon" in handle.said("ai"))
            assert conn.input_rate_hz == 16000
            heard = np.frombuffer(bytes(conn.audio_in), dtype="<i2")
            assert abs(dominant_hz(heard[: 16000 * 8 // 10], 16000) - 300) < 20
            assert conn.text_inputs == ["Greet the caller"]


async def test_barge_in_cuts_the_reply() -> None:
    script = GeminiScript(
        Script(replies=(Reply("A long greeting", duration_ms=5000),), think_ms=50, speed=8.0),
        stale_chunks_after_interrupt=5,
    )
    async with running_gemini_mock(script) as mock:
        handle, media = FakeHandle.for_provider("gemini"), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            conn = await mock.wait_connection()
            await until(lambda: len(media.sent) >= 40)  # 800 ms heard
            media.feed(speech_pcm(600) + bytes(2 * 4000))
            await until(lambda: conv.barge_ins == 1)
            turn = conn.user_turns[0]
            assert turn.speech_started_at is not None and media.flushes >= 1
            assert conn.responses[0].status == "cancelled"
            await asyncio.sleep(0.3)  # let anything still queued reach the "wire"
            after = [f for t, f in media.sent if t > turn.speech_started_at + 0.1]
            assert all(abs(frames_hz([f]) - 400) > 50 for f in after if any(f))


async def test_goodbye_plays_to_the_end() -> None:
    script = GeminiScript(
        Script(
            replies=(Reply("Hi", duration_ms=200),),
            default_reply=Reply("Goodbye!", duration_ms=400),
            think_ms=20,
            speed=4.0,
        )
    )
    async with running_gemini_mock(script) as mock:
        handle, media = FakeHandle.for_provider("gemini"), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            conn = await mock.wait_connection()
            await until(lambda: "Hi" in handle.said("ai"))
            await asyncio.wait_for(conv.goodbye(), TIMEOUT_S)
            assert media.queued_ms() == 0
            assert "goodbye" in conn.text_inputs[-1].lower()
            assert "Goodbye!" in handle.said("ai")
            goodbye = [f for _, f in media.sent[-15:] if any(f)]
            assert abs(frames_hz(goodbye) - 600) < 20
