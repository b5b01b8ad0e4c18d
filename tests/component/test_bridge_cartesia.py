"""The audio bridge + Cartesia pipeline session against the pipeline mock on loopback.

Media is a PacedMedia fake (a send queue draining at 20 ms per frame, like the SIP library);
the provider side is the real session talking to testbed/mocks/mock_cartesia (Deepgram STT,
Chat Completions and Cartesia TTS on one port).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from sip4ai.bridge import AIConversation
from sip4ai.config import CartesiaConfig, Config, DeepgramConfig, OpenAIConfig, Secret
from sip4ai.providers.base import ProviderSession, SessionSettings
from sip4ai.providers.cartesia import CartesiaPipelineSession
from sip4ai.providers.cartesia_dialog import INTERRUPTED_MARK
from testbed.mocks.mock_cartesia import CartesiaMock, Reply, Script, running_cartesia_mock
from tests.component.bridgekit import TIMEOUT_S, frames_hz, running, speech_pcm, until
from tests.fakes.handle import FakeHandle
from tests.fakes.sip import PacedMedia


pytestmark = pytest.mark.component


def session_factory(mock: CartesiaMock, key: str = "test-key") -> Callable[[], ProviderSession]:
    secret = Secret(key)
    config = Config(
        cartesia=CartesiaConfig(
            api_key=secret, base_url=mock.tts_url, llm_base_url=mock.llm_base_url
        ),
        deepgram=DeepgramConfig(api_key=secret, stt_base_url=mock.stt_url),
        openai=OpenAIConfig(api_key=secret),
    )

    def make() -> ProviderSession:
        settings = SessionSettings("Be brief.", greeting="Greet the caller briefly.")
        return CartesiaPipelineSession(config, settings)

    return make


@contextlib.asynccontextmanager
async def conversation(
    mock: CartesiaMock, handle: FakeHandle, media: PacedMedia, key: str = "test-key"
) -> AsyncIterator[tuple[AIConversation, asyncio.Task[str | None]]]:
    conv = AIConversation(handle, session_factory(mock, key))
    async with running(conv, media) as task:
        yield conv, task


async def test_greeting_plays_and_both_transcripts_are_stored() -> None:
    script = Script(
        replies=(Reply("Hello caller", duration_ms=600), Reply("It is noon", duration_ms=400)),
        transcripts=("What time is it?",),
    )
    async with running_cartesia_mock(script) as mock:
        handle, media = FakeHandle.for_provider("cartesia"), PacedMedia()
        async with conversation(mock, handle, media):
            call = await mock.wait_connection()
            await until(lambda: len(media.sent) >= 30)
            greeting = [frame for _, frame in media.sent[:30]]
            assert abs(frames_hz(greeting) - 400) < 20
            await until(lambda: "Hello caller" in handle.said("ai"))
            media.feed(speech_pcm(800) + bytes(2 * 8000))  # speech, then 1 s of silence
            await until(lambda: "What time is it?" in handle.said("user"))
            await until(lambda: "It is noon" in handle.said("ai"))
            assert len(call.stt.audio_in) >= 8000  # caller audio reached Deepgram as mu-law
            second = await mock.wait_for(lambda: call.tts.contexts[1].first_audio_at, TIMEOUT_S)
            assert second is not None
            await until(lambda: any(abs(frames_hz([f]) - 600) < 60 for _, f in media.sent[-30:]))


async def test_barge_in_cuts_the_reply_and_the_history() -> None:
    script = Script(
        replies=(Reply("A long greeting", duration_ms=5000), Reply("Okay.", duration_ms=300)),
        transcripts=("Wait a moment",),
        speed=1.0,
    )
    async with running_cartesia_mock(script) as mock:
        handle, media = FakeHandle.for_provider("cartesia"), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            call = await mock.wait_connection()
            await until(lambda: len(media.sent) >= 40)  # 800 ms heard
            media.feed(speech_pcm(600) + bytes(2 * 4000))
            await mock.wait_for(lambda: call.tts.contexts[0].cancelled_at, TIMEOUT_S)
            assert conv.barge_ins >= 1 and media.flushes >= 1
            turn = call.stt.user_turns[0]
            assert turn.speech_started_at is not None
            await mock.wait_for(lambda: len(mock.chat) >= 2, TIMEOUT_S)
            await asyncio.sleep(0.2)  # let anything still queued reach the "wire"
            after = [f for t, f in media.sent if t > turn.speech_started_at + 0.1]
            assert all(abs(frames_hz([f]) - 400) > 50 for f in after if any(f))
            history = [m for m in mock.chat[1].messages if m["role"] == "assistant"]
            assert history[0]["content"].endswith(INTERRUPTED_MARK)
            assert history[0]["content"].startswith("A ")  # not the whole greeting
            await until(lambda: "Wait a moment" in handle.said("user"))


async def test_goodbye_waits_until_played() -> None:
    script = Script(
        replies=(Reply("Hi", duration_ms=200),),
        default_reply=Reply("Goodbye!", duration_ms=400),
    )
    async with running_cartesia_mock(script) as mock:
        handle, media = FakeHandle.for_provider("cartesia"), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            await until(lambda: "Hi" in handle.said("ai"))
            await asyncio.wait_for(conv.goodbye(), TIMEOUT_S)
            assert media.queued_ms() == 0
            assert mock.chat[-1].trigger == "instructions"
            assert "goodbye" in mock.chat[-1].messages[-1]["content"].lower()
            assert "Goodbye!" in handle.said("ai")


async def test_wrong_key_fails_fast() -> None:
    async with running_cartesia_mock(replace(Script(), api_key="test-key")) as mock:
        handle, media = FakeHandle.for_provider("cartesia"), PacedMedia()
        async with conversation(mock, handle, media, key="wrong") as (_, task):
            assert await asyncio.wait_for(task, TIMEOUT_S) == "provider_closed"
            assert media.written == []
