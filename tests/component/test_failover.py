"""Provider failover: the bridge moves a call to the next provider, then to a recording.

Real sessions against real OpenAI mocks on loopback: one mock plays the main provider (made to
refuse or drop the call), another the fallback (its replies use a different tone, so the test
can tell who is talking from what the caller hears).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from sip4ai.audiofile import AudioClip
from sip4ai.bridge import AIConversation
from sip4ai.config import Config, OpenAIConfig, Secret
from sip4ai.conversation import TAKEOVER_GREETING, settings_for
from sip4ai.failover import APOLOGY_TEXT, LastResort, ProviderOption, apology, audio_file
from sip4ai.metrics import AudioMetrics, Metrics
from sip4ai.providers.base import ProviderSession
from sip4ai.providers.openai_realtime import OpenAIRealtimeSession
from testbed.mocks._ws_common import Faults, dominant_hz, tone
from testbed.mocks.mock_openai import OpenAIMock, Reply, Script, running_openai_mock
from tests.component.bridgekit import TIMEOUT_S, running, speech_pcm, until
from tests.component.test_bridge_openai import session_factory
from tests.fakes.handle import FakeHandle
from tests.fakes.sip import PacedMedia


pytestmark = pytest.mark.component

MAIN_HZ = 400.0
BACKUP_HZ = 1200.0


def heard_hz(media: PacedMedia, start: int, count: int) -> float:
    frames = [frame for _, frame in media.sent[start : start + count]]
    return dominant_hz(np.frombuffer(b"".join(frames), dtype=np.int16), 8000)


def voiced_frames(media: PacedMedia) -> int:
    return sum(1 for _, frame in media.sent if np.abs(np.frombuffer(frame, np.int16)).max() > 500)


def takeover(mock: OpenAIMock, handle: FakeHandle) -> Callable[[], ProviderSession]:
    """A fallback's session as conversation.py builds it: told what was said so far."""
    config = Config(
        openai=OpenAIConfig(api_key=Secret("test-key"), base_url=f"{mock.base_url}/realtime")
    )

    def start() -> ProviderSession:
        settings = settings_for(config, handle.record, provider="openai", takeover=True)
        return OpenAIRealtimeSession(config.openai, settings)

    return start


@contextlib.asynccontextmanager
async def call(
    main: OpenAIMock,
    fallbacks: Sequence[OpenAIMock] = (),
    *,
    key: str = "test-key",
    last_resort: LastResort | None = None,
    metrics: AudioMetrics | None = None,
    resume: bool = False,
) -> AsyncIterator[tuple[FakeHandle, PacedMedia, AIConversation, asyncio.Task[str | None]]]:
    handle, media = FakeHandle(), PacedMedia()
    options = [
        ProviderOption(f"backup{index}", takeover(mock, handle))
        for index, mock in enumerate(fallbacks)
    ]
    conv = AIConversation(
        handle,
        session_factory(main, key=key),
        fallbacks=options,
        last_resort=last_resort,
        metrics=metrics,
        resume=(lambda name: ProviderOption(name, takeover(main, handle))) if resume else None,
    )
    async with running(conv, media) as task:
        yield handle, media, conv, task


def backup_script(**kwargs: object) -> Script:
    return Script(replies=(Reply("I am the backup", duration_ms=800, tone_hz=BACKUP_HZ),), **kwargs)  # type: ignore[arg-type]


async def test_a_provider_that_refuses_the_call_hands_it_to_the_next_before_answer() -> None:
    async with (
        running_openai_mock(Script(api_key="another-key")) as main,
        running_openai_mock(backup_script()) as backup,
        call(main, [backup], last_resort=apology()) as (handle, media, _, _task),
    ):
        # prepare() returned because the backup is ready: the caller is answered by it.
        await until(lambda: len(media.sent) >= 20)
        assert abs(heard_hz(media, 0, 20) - BACKUP_HZ) < 30
        await until(lambda: "I am the backup" in handle.said("ai"))
        assert handle.served_by() == ["openai", "backup0"]
        first = handle.record.providers[0]
        assert first.ended is not None and "401" in (first.end_reason or "")


async def test_a_provider_dropping_mid_call_is_replaced_and_told_what_was_said() -> None:
    main_script = Script(
        replies=(Reply("Hello from main", duration_ms=600),),
        transcripts=("I want a table for two",),
        faults=Faults(close_after_s=2.5, close_code=1011, close_reason="internal error"),
    )
    registry = Metrics()
    async with (
        running_openai_mock(main_script) as main,
        running_openai_mock(backup_script()) as backup,
        call(main, [backup], metrics=AudioMetrics(registry, "openai")) as (handle, media, *_),
    ):
        await until(lambda: "Hello from main" in handle.said("ai"))
        media.feed(speech_pcm(700) + bytes(2 * 6000))
        await until(lambda: "I want a table for two" in handle.said("user"))
        conn = await backup.wait_connection()
        await until(lambda: "I am the backup" in handle.said("ai"))
        instructions = (conn.session or {}).get("instructions", "")
        assert "already in progress" in instructions
        assert "Caller: I want a table for two" in instructions
        assert "You: Hello from main" in instructions
        greeting = conn.responses[0].instructions or ""
        assert TAKEOVER_GREETING in greeting
        assert handle.served_by() == ["openai", "backup0"]
        assert "1011" in (handle.record.providers[0].end_reason or "")
        before = len(media.sent)
        await until(lambda: len(media.sent) >= before + 25)
        assert BACKUP_HZ - 30 < heard_hz(media, len(media.sent) - 25, 25) < BACKUP_HZ + 30
        # the caller's audio now reaches the backup
        media.feed(speech_pcm(300))
        await backup.wait_for(lambda: len(conn.audio_in) >= 2400, TIMEOUT_S)
        failovers = registry.registry.get_sample_value(
            "sip4ai_provider_failovers_total", {"provider": "openai", "to": "backup0"}
        )
        assert failovers == 1


async def test_with_no_provider_left_the_caller_hears_the_apology_and_the_call_ends() -> None:
    main_script = Script(
        replies=(Reply("Hello", duration_ms=300),),
        faults=Faults(close_after_s=1.0, close_code=1011),
    )
    async with (
        running_openai_mock(main_script) as main,
        call(main, last_resort=apology()) as (handle, media, _, task),
    ):
        reason = await asyncio.wait_for(task, 20.0)
        assert reason == "provider_failed"
        assert APOLOGY_TEXT in handle.said("ai")
        assert handle.served_by() == ["openai", "apology"]
        assert voiced_frames(media) > 100  # several seconds of speech after a 300 ms greeting


async def test_the_fallback_audio_file_plays_when_the_provider_cannot_be_reached(
    tmp_path: Path,
) -> None:
    from testbed.harness.scenario import write_tone_wav

    wav = write_tone_wav(tmp_path / "sorry.wav", 700, 1.0)
    async with (
        running_openai_mock(Script(faults=Faults(handshake_delay_s=0.0))) as main,
        call(main, key="wrong", last_resort=audio_file(wav, loop=False)) as (
            handle,
            media,
            _,
            task,
        ),
    ):
        reason = await asyncio.wait_for(task, 20.0)
        assert reason == "provider_failed"
        assert handle.served_by() == ["openai", "audio_file"]
        assert abs(heard_hz(media, 5, 30) - 700) < 20
        assert handle.said("ai") == []  # a user's file has no known text


async def test_a_clean_end_by_the_provider_is_not_a_failure() -> None:
    script = Script(
        replies=(Reply("Bye", duration_ms=300),),
        faults=Faults(close_after_s=1.0, close_code=1000, close_reason="done"),
    )
    clip = AudioClip(tone(700, 500, 8000).astype("<i2").tobytes(), 8000)
    async with (
        running_openai_mock(script) as main,
        running_openai_mock(backup_script()) as backup,
        call(main, [backup], last_resort=LastResort("audio_file", clip, loop=False)) as (
            handle,
            _,
            _conv,
            task,
        ),
    ):
        assert await asyncio.wait_for(task, 10.0) == "provider_closed"
        assert handle.served_by() == ["openai"]
        assert not backup.connections


async def test_a_provider_closing_while_the_call_ends_does_not_fail_over() -> None:
    async with (
        running_openai_mock(Script(replies=(Reply("Hi", duration_ms=300),))) as main,
        running_openai_mock(backup_script()) as backup,
        call(main, [backup], last_resort=apology()) as (handle, media, conv, task),
    ):
        await until(lambda: "Hi" in handle.said("ai"))
        await asyncio.wait_for(conv.goodbye(), TIMEOUT_S)
        await conv.aclose()  # closes the session, then stops listening to it
        assert handle.served_by() == ["openai"]
        assert not backup.connections
        assert APOLOGY_TEXT not in handle.said("ai")


async def test_a_serving_provider_that_drops_gets_one_fresh_session_before_the_fallback() -> None:
    main_script = Script(
        replies=(Reply("Hello from main", duration_ms=400),),
        faults=Faults(close_after_s=1.5, close_code=1011),
    )
    async with (
        running_openai_mock(main_script) as main,
        running_openai_mock(backup_script()) as backup,
        call(main, [backup], resume=True) as (handle, *_),
    ):
        await backup.wait_connection(timeout_s=TIMEOUT_S)
        await until(lambda: "I am the backup" in handle.said("ai"))
        assert handle.served_by() == ["openai", "openai", "backup0"]
        assert len(main.connections) == 2
        resumed = main.connections[1].session or {}
        assert "already in progress" in resumed.get("instructions", "")
        assert "You: Hello from main" in resumed.get("instructions", "")


async def test_a_provider_that_never_served_is_not_retried() -> None:
    async with (
        running_openai_mock(Script(api_key="another-key")) as main,
        running_openai_mock(backup_script()) as backup,
        call(main, [backup], resume=True) as (handle, *_),
    ):
        await until(lambda: "I am the backup" in handle.said("ai"))
        assert handle.served_by() == ["openai", "backup0"]  # no second try of a 401
