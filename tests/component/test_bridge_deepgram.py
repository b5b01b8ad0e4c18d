"""The audio bridge + Deepgram Voice Agent session against the Deepgram mock on loopback.

Media is a PacedMedia fake (a send queue draining at 20 ms per frame, like the SIP library);
the provider side is the real websocket session talking to testbed/mocks/mock_deepgram.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from sip4ai.bridge import AIConversation
from sip4ai.config import DeepgramConfig, Secret
from sip4ai.providers.base import ProviderSession, SessionSettings
from sip4ai.providers.deepgram_agent import DeepgramAgentSession
from testbed.mocks.mock_deepgram import DeepgramMock, DeepgramScript, Reply, running_deepgram_mock
from tests.component.bridgekit import TIMEOUT_S, frames_hz, running, speech_pcm, until
from tests.fakes.handle import FakeHandle
from tests.fakes.sip import PacedMedia


pytestmark = pytest.mark.component


@contextlib.asynccontextmanager
async def conversation(
    mock: DeepgramMock, handle: FakeHandle, media: PacedMedia, key: str = "test-key"
) -> AsyncIterator[tuple[AIConversation, asyncio.Task[str | None]]]:
    config = DeepgramConfig(api_key=Secret(key), base_url=mock.agent_url, greeting="Hello caller")
    settings = SessionSettings("Be brief.", greeting="Start the conversation by saying: Hello")

    def make() -> ProviderSession:
        return DeepgramAgentSession(config, settings)

    conv = AIConversation(handle, make)
    async with running(conv, media) as task:
        yield conv, task


async def test_greeting_plays_and_transcripts_are_stored() -> None:
    script = DeepgramScript(
        replies=(Reply("x", duration_ms=600), Reply("It is noon", duration_ms=400)),
        transcripts=("What time is it?",),
        think_ms=100,
    )
    async with running_deepgram_mock(script) as mock:
        handle, media = FakeHandle.for_provider("deepgram"), PacedMedia()
        async with conversation(mock, handle, media):
            conn = await mock.wait_connection()
            await until(lambda: len(media.sent) >= 25)
            greeting = [frame for _, frame in media.sent[:25]]
            assert abs(frames_hz(greeting) - 400) < 20
            await until(lambda: "Hello caller" in handle.said("ai"))
            media.feed(speech_pcm(800) + bytes(2 * 8000))  # speech, then 1 s of silence
            await until(lambda: "What time is it?" in handle.said("user"))
            await until(lambda: "It is noon" in handle.said("ai"))
            assert len(conn.audio_in) >= 8000  # the caller's audio reached the provider as mu-law
            assert conn.audio_before_applied == 0


async def test_barge_in_cuts_the_reply_and_its_stale_audio() -> None:
    script = DeepgramScript(
        replies=(Reply("x", duration_ms=5000),), speed=2.0, think_ms=20, stale_audio_ms=400
    )
    async with running_deepgram_mock(script) as mock:
        handle, media = FakeHandle.for_provider("deepgram"), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            conn = await mock.wait_connection()
            await until(lambda: len(media.sent) >= 40)  # 800 ms heard
            media.feed(speech_pcm(600) + bytes(2 * 4000))
            await mock.wait_for(lambda: conn.user_turns and conn.replies[0].done_at, TIMEOUT_S)
            turn = conn.user_turns[0]
            assert turn.speech_started_at is not None and turn.interrupted_reply == 1
            assert conn.replies[0].stale_bytes_sent == 3200
            await until(lambda: conv.barge_ins == 1 and media.flushes >= 1)
            await asyncio.sleep(0.3)  # let anything still queued reach the "wire"
            after = [f for t, f in media.sent if t > turn.speech_started_at + 0.1]
            assert all(abs(frames_hz([f]) - 400) > 50 for f in after if any(f))
            assert "Hello caller" in handle.said("ai")  # the cut reply's text is kept


async def test_goodbye_waits_until_played() -> None:
    script = DeepgramScript(
        replies=(Reply("x", duration_ms=200),),
        default_reply=Reply("Goodbye!", duration_ms=400),
        think_ms=20,
    )
    async with running_deepgram_mock(script) as mock:
        handle, media = FakeHandle.for_provider("deepgram"), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            conn = await mock.wait_connection()
            await until(lambda: "Hello caller" in handle.said("ai"))
            await asyncio.wait_for(conv.goodbye(), TIMEOUT_S)
            assert media.queued_ms() == 0
            assert "goodbye" in conn.received_of("InjectUserMessage")[0]["content"].lower()
            assert "Goodbye!" in handle.said("ai")
            assert handle.said("user") == []  # the instruction is not the caller speaking


async def test_wrong_key_fails_fast() -> None:
    async with running_deepgram_mock(DeepgramScript()) as mock:
        handle, media = FakeHandle.for_provider("deepgram"), PacedMedia()
        async with conversation(mock, handle, media, key="wrong") as (_, task):
            assert await asyncio.wait_for(task, TIMEOUT_S) == "provider_closed"
            assert media.written == []
