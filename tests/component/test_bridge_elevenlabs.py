"""The audio bridge + ElevenLabs session against the ElevenLabs mock on loopback.

The agent's formats come from ``conversation_initiation_metadata``: with ``ulaw_8000`` nothing
is resampled, with ``pcm_16000`` the bridge resamples both ways. Either way the caller at 8 kHz
must hear the mock's tones at their pitch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from sip4ai.audio.g711 import ulaw_decode
from sip4ai.bridge import GOODBYE_INSTRUCTIONS, AIConversation
from sip4ai.config import ElevenLabsConfig
from sip4ai.providers.base import ProviderSession, SessionSettings
from sip4ai.providers.elevenlabs import ElevenLabsSession
from testbed.mocks.mock_elevenlabs import (
    AgentSettings,
    ElevenLabsMock,
    Reply,
    Script,
    dominant_hz,
    running_elevenlabs_mock,
)
from tests.component.bridgekit import TIMEOUT_S, frames_hz, running, speech_pcm, until
from tests.fakes.handle import FakeHandle
from tests.fakes.sip import PacedMedia


pytestmark = pytest.mark.component


@contextlib.asynccontextmanager
async def conversation(
    mock: ElevenLabsMock, handle: FakeHandle, media: PacedMedia
) -> AsyncIterator[tuple[AIConversation, list[ElevenLabsSession]]]:
    config = ElevenLabsConfig(
        agent_id="agent_1", first_message="Hello caller", base_url=mock.base_url
    )
    settings = SessionSettings(
        "Be brief.", greeting="Start the conversation by saying: Hello caller"
    )
    sessions: list[ElevenLabsSession] = []

    def make() -> ProviderSession:
        sessions.append(ElevenLabsSession(config, settings))
        return sessions[-1]

    conv = AIConversation(handle, make)
    async with running(conv, media):
        yield conv, sessions


@pytest.mark.parametrize("agent_format", ["ulaw_8000", "pcm_16000"])
async def test_greeting_pitch_and_both_transcripts(agent_format: str) -> None:
    script = Script(
        replies=(Reply("unused", duration_ms=600), Reply("It is noon", duration_ms=400)),
        transcripts=("What time is it?",),
        think_ms=50,
        speed=4.0,
    )
    agent = AgentSettings(output_format=agent_format, input_format=agent_format)
    async with running_elevenlabs_mock(script, agent) as mock:
        handle, media = FakeHandle.for_provider("elevenlabs"), PacedMedia()
        async with conversation(mock, handle, media):
            conn = await mock.wait_connection()
            await until(lambda: len(media.sent) >= 25)
            greeting = [frame for _, frame in media.sent[5:25]]
            assert abs(frames_hz(greeting) - 400) < 15
            await until(lambda: "Hello caller" in handle.said("ai"))
            media.feed(speech_pcm(600) + bytes(2 * 8000))  # speech, then 1 s of silence
            await until(lambda: "What time is it?" in handle.said("user"))
            await until(lambda: "It is noon" in handle.said("ai"))
            await until(lambda: media.queued_ms() == 0)  # ends 0.8 s after its last chunk
            reply = media.written[-15:]
            assert abs(frames_hz(reply) - 600) < 15
        heard = bytes(conn.audio_in)
        if agent_format == "ulaw_8000":
            samples = ulaw_decode(heard)
            rate = 8000
        else:
            samples, rate = np.frombuffer(heard, dtype="<i2"), 16000
        assert len(samples) >= rate  # the caller's audio reached the agent in its format
        assert abs(dominant_hz(samples[: rate // 2], rate) - 300) < 15


async def test_barge_in_cuts_the_reply_and_stale_audio_is_dropped() -> None:
    script = Script(replies=(Reply("A long greeting", duration_ms=5000),), speed=2.0, think_ms=50)
    async with running_elevenlabs_mock(script) as mock:
        handle, media = FakeHandle.for_provider("elevenlabs"), PacedMedia()
        async with conversation(mock, handle, media) as (conv, sessions):
            conn = await mock.wait_connection()
            await until(lambda: len(media.sent) >= 40)  # 800 ms heard
            media.feed(speech_pcm(600) + bytes(2 * 4000))
            await mock.wait_for(lambda: conn.user_turns and conn.replies[0].status != "in_progress")
            turn = conn.user_turns[0]
            assert turn.interruption_event_id is not None
            await until(lambda: conv.barge_ins == 1)
            await asyncio.sleep(0.3)  # let anything still queued reach the "wire"
        assert media.flushes >= 1
        assert sessions[0].dropped_audio == 2
        assert turn.interruption_sent_at is not None
        after = [f for t, f in media.sent if t > turn.interruption_sent_at + 0.1]
        assert all(abs(frames_hz([f]) - 400) > 50 for f in after if any(f))
        assert handle.said("ai") == ["Hello caller"]  # the first message, interrupted


async def test_goodbye_waits_until_played() -> None:
    script = Script(
        replies=(Reply("Hi", duration_ms=200),),
        default_reply=Reply("Goodbye!", duration_ms=400),
        think_ms=50,
    )
    async with running_elevenlabs_mock(script) as mock:
        handle, media = FakeHandle.for_provider("elevenlabs"), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            conn = await mock.wait_connection()
            await until(lambda: "Hello caller" in handle.said("ai"))
            await asyncio.wait_for(conv.goodbye(), TIMEOUT_S)
            assert media.queued_ms() == 0
            assert "Goodbye!" in handle.said("ai")
        assert [(i.role, i.text) for i in conn.injects][-1] == ("user", GOODBYE_INSTRUCTIONS)
        assert abs(frames_hz(media.written[-15:]) - 600) < 15
