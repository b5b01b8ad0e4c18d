"""The audio bridge + OpenAI Realtime session against the OpenAI mock on loopback.

Media is a PacedMedia fake (a send queue draining at 20 ms per frame, like the SIP library);
the provider side is the real websocket session talking to testbed/mocks/mock_openai.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from sip4ai.bridge import AIConversation
from sip4ai.config import OpenAIConfig, Secret
from sip4ai.metrics import AudioMetrics, Metrics
from sip4ai.providers.base import ProviderSession, SessionSettings
from sip4ai.providers.openai_realtime import OpenAIRealtimeSession
from testbed.mocks.mock_openai import OpenAIMock, Reply, Script, running_openai_mock
from tests.component.bridgekit import TIMEOUT_S, frames_hz, running, speech_pcm, until
from tests.fakes.handle import FakeHandle
from tests.fakes.sip import PacedMedia


pytestmark = pytest.mark.component


def session_factory(
    mock: OpenAIMock, key: str = "test-key", greeting: str | None = "Hi"
) -> Callable[[], ProviderSession]:
    config = OpenAIConfig(api_key=Secret(key), base_url=f"{mock.base_url}/realtime")

    def make() -> ProviderSession:
        return OpenAIRealtimeSession(config, SessionSettings("Be brief.", greeting=greeting))

    return make


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(
        name, {"provider": "openai"} if labels is None else labels
    )
    return value or 0.0


@contextlib.asynccontextmanager
async def conversation(
    mock: OpenAIMock,
    handle: FakeHandle,
    media: PacedMedia,
    metrics: AudioMetrics | None = None,
    **kwargs: str | None,
) -> AsyncIterator[tuple[AIConversation, asyncio.Task[str | None]]]:
    conv = AIConversation(handle, session_factory(mock, **kwargs), metrics=metrics)  # type: ignore[arg-type]
    async with running(conv, media) as task:
        yield conv, task


async def test_greeting_plays_and_transcripts_are_stored() -> None:
    script = Script(
        replies=(Reply("Hello caller", duration_ms=600), Reply("It is noon", duration_ms=400)),
        transcripts=("What time is it?",),
    )
    async with running_openai_mock(script) as mock:
        handle, media, registry = FakeHandle(), PacedMedia(), Metrics()
        async with conversation(mock, handle, media, AudioMetrics(registry, "openai")):
            conn = await mock.wait_connection()
            session = conn.session or {}
            assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            await until(lambda: len(media.sent) >= 30)
            greeting = [frame for _, frame in media.sent[:30]]
            assert abs(frames_hz(greeting) - 400) < 20
            await until(lambda: "Hello caller" in handle.said("ai"))
            media.feed(speech_pcm(800) + bytes(2 * 8000))  # speech, then 1 s of silence
            await until(lambda: "What time is it?" in handle.said("user"))
            await until(lambda: "It is noon" in handle.said("ai"))
            assert len(conn.audio_in) >= 8000  # the caller's audio reached the provider as mu-law
            second = await mock.wait_for(lambda: conn.responses[1].first_audio_at, TIMEOUT_S)
            assert second is not None
            await until(lambda: sample(registry, "sip4ai_turn_latency_seconds_count") == 1)
            turn_s = sample(registry, "sip4ai_turn_latency_seconds_sum")
            assert 0.05 < turn_s < 2.0  # the mock thinks 200 ms before answering
            assert sample(registry, "sip4ai_provider_connect_seconds_count") == 1
            assert sample(registry, "sip4ai_audio_send_deviation_seconds_count", {}) > 20


async def test_caller_audio_is_not_resampled_or_delayed() -> None:
    async with running_openai_mock(Script(mode="echo")) as mock:
        handle, media = FakeHandle(), PacedMedia()
        async with conversation(mock, handle, media, greeting=None):
            conn = await mock.wait_connection()
            pcm = speech_pcm(400, 1000)
            media.feed(pcm)
            await mock.wait_for(lambda: len(conn.audio_in) >= 3200, TIMEOUT_S)
            from sip4ai.audio.g711 import ulaw_encode

            assert bytes(conn.audio_in[:3200]) == ulaw_encode(np.frombuffer(pcm, dtype="<i2"))
            await until(lambda: len(media.written) >= 20)
            assert abs(frames_hz(media.written[:20]) - 1000) < 20


async def test_barge_in_flushes_and_truncates_to_what_was_heard() -> None:
    script = Script(replies=(Reply("A long greeting", duration_ms=5000),), speed=8.0)
    async with running_openai_mock(script) as mock:
        handle, media = FakeHandle(), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            conn = await mock.wait_connection()
            await until(lambda: len(media.sent) >= 40)  # 800 ms heard
            media.feed(speech_pcm(600) + bytes(2 * 4000))
            await mock.wait_for(lambda: conn.truncates, TIMEOUT_S)
            truncate = conn.truncates[0]
            assert truncate.accepted
            heard_ms = 20 * len(media.sent)
            assert 700 <= truncate.audio_end_ms <= heard_ms + 60
            assert conv.barge_ins == 1 and media.flushes >= 1
            turn = conn.user_turns[0]
            assert turn.speech_started_at is not None
            await asyncio.sleep(0.2)  # let anything still queued reach the "wire"
            after = [f for t, f in media.sent if t > turn.speech_started_at + 0.1]
            assert all(abs(frames_hz([f]) - 400) > 50 for f in after if any(f))


async def test_inject_reaches_provider_and_changes_next_reply() -> None:
    script = Script(replies=(Reply("Hi", duration_ms=200),), inject_reply="Noted: {text}")
    async with running_openai_mock(script) as mock:
        handle, media = FakeHandle(), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            conn = await mock.wait_connection()
            await until(lambda: "Hi" in handle.said("ai"))
            conv.inject("The caller is a VIP.", "system")
            await until(lambda: "Noted: The caller is a VIP." in handle.said("ai"))
            assert [(i.role, i.text) for i in conn.injects] == [("system", "The caller is a VIP.")]


async def test_goodbye_waits_until_played() -> None:
    async with running_openai_mock(
        Script(
            replies=(Reply("Hi", duration_ms=200),),
            default_reply=Reply("Goodbye!", duration_ms=400),
        )
    ) as mock:
        handle, media = FakeHandle(), PacedMedia()
        async with conversation(mock, handle, media) as (conv, _):
            conn = await mock.wait_connection()
            await until(lambda: "Hi" in handle.said("ai"))
            await asyncio.wait_for(conv.goodbye(), TIMEOUT_S)
            assert media.queued_ms() == 0
            assert "goodbye" in (conn.responses[-1].instructions or "").lower()
            assert "Goodbye!" in handle.said("ai")


async def test_session_expiry_ends_the_conversation() -> None:
    async with running_openai_mock(
        Script(session_max_s=0.5, replies=(Reply("Hi", duration_ms=100),))
    ) as mock:
        handle, media = FakeHandle(), PacedMedia()
        async with conversation(mock, handle, media) as (_, task):
            assert await asyncio.wait_for(task, TIMEOUT_S) == "provider_closed"


async def test_wrong_key_fails_fast() -> None:
    async with running_openai_mock(Script()) as mock:
        handle, media = FakeHandle(), PacedMedia()
        async with conversation(mock, handle, media, key="wrong") as (_, task):
            assert await asyncio.wait_for(task, TIMEOUT_S) == "provider_closed"
            assert media.written == []
