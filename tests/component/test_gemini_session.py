"""GeminiLiveSession against the Gemini Live mock on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from sip4ai.config import GeminiConfig, Secret
from sip4ai.providers import REGISTRY
from sip4ai.providers.base import (
    AudioOut,
    Closed,
    ProviderEvent,
    Ready,
    ReplyDone,
    SessionSettings,
    SpeechStarted,
    Tool,
    ToolCall,
    Transcript,
)
from sip4ai.providers.gemini import GeminiLiveSession
from testbed.mocks.mock_gemini import (
    Faults,
    FunctionCallSpec,
    GeminiMock,
    GeminiScript,
    Reply,
    Script,
    dominant_hz,
    running_gemini_mock,
    tone,
)


pytestmark = pytest.mark.component

TIMEOUT_S = 5.0 * float(os.environ.get("SIP4AI_TEST_TIMEOUT_FACTOR", "1"))
TOOL = Tool("get_time", "The time", {"type": "object", "properties": {"tz": {"type": "string"}}})


def fast(**fields: Any) -> Script:
    return Script(**{"think_ms": 10, "speed": 0.0, "ms_per_char": 5, "min_reply_ms": 100, **fields})


@dataclass
class Run:
    session: GeminiLiveSession
    events: list[ProviderEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, predicate: Callable[[], object], timeout_s: float = TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def said(self, speaker: str) -> list[str]:
        return [e.text for e in self.of(Transcript) if e.speaker == speaker]

    @property
    def closed(self) -> Closed | None:
        found = self.of(Closed)
        return found[0] if found else None

    def speak(self, ms: int = 500, silence_ms: int = 700) -> None:
        """Caller audio in the session's input format (16 kHz PCM16), in 20 ms frames."""
        pcm = tone(300, ms, 16000, 0.5).astype("<i2").tobytes() + bytes(32 * silence_ms)
        for i in range(0, len(pcm), 640):
            self.session.send_audio(pcm[i : i + 640])


@contextlib.asynccontextmanager
async def running(
    mock: GeminiMock,
    settings: SessionSettings | None = None,
    *,
    key: str = "test-key",
    url: str | None = None,
    **config: Any,
) -> AsyncIterator[Run]:
    cfg = GeminiConfig(api_key=Secret(key), base_url=url or mock.live_url, **config)
    session = GeminiLiveSession(cfg, settings or SessionSettings("Be brief.", greeting="Say hi"))
    run = Run(session)

    async def consume() -> None:
        async for event in session.events():
            run.events.append(event)
            run.changed.set()

    tasks = [asyncio.create_task(session.run()), asyncio.create_task(consume())]
    try:
        yield run
    finally:
        await session.aclose()
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*tasks)


async def test_setup_greeting_and_transcripts() -> None:
    script = GeminiScript(
        fast(
            replies=(Reply("Hello caller", duration_ms=300), Reply("It is noon", duration_ms=200))
        ),
    )
    settings = SessionSettings("Be brief.", greeting="Greet the caller", tools=(TOOL,))
    async with running_gemini_mock(script) as mock:
        async with running(mock, settings, voice="Kore", system_prompt="You work for Acme.") as run:
            await run.wait(lambda: run.of(ReplyDone))
            conn = mock.last
            assert conn.key_source == "header"
            setup = conn.setup or {}
            assert setup["model"] == "models/gemini-2.0-flash-exp"
            assert setup["generationConfig"]["speechConfig"]["voiceConfig"] == {
                "prebuiltVoiceConfig": {"voiceName": "Kore"}
            }
            assert (
                setup["systemInstruction"]["parts"][0]["text"] == "You work for Acme.\n\nBe brief."
            )
            assert setup["tools"][0]["functionDeclarations"][0]["name"] == "get_time"
            assert "inputAudioTranscription" in setup and "outputAudioTranscription" in setup
            assert conn.text_inputs == ["Greet the caller"]
            assert run.events[0] == Ready()
            audio = b"".join(e.audio for e in run.of(AudioOut))
            assert len(audio) == 2 * 24000 * 300 // 1000
            assert abs(dominant_hz(np.frombuffer(audio, dtype="<i2"), 24000) - 400) < 10
            assert run.said("ai") == ["Hello caller"]
            assert run.of(ReplyDone) == [ReplyDone("completed", "gemini-reply-1")]
            run.speak()
            await run.wait(lambda: len(run.of(ReplyDone)) == 2)
            assert run.said("user") == ["Hello."]
            assert run.said("ai") == ["Hello caller", "It is noon"]
            assert conn.input_rate_hz == 16000
        assert run.closed == Closed("gemini: closed by sip4ai")
        assert run.events[-1] == run.closed


async def test_registry_builds_a_gemini_session() -> None:
    from sip4ai.config import Config

    session = REGISTRY["gemini"](Config(), SessionSettings("x"))
    assert isinstance(session, GeminiLiveSession)
    assert session.capabilities.input_format.rate_hz == 16000
    assert session.capabilities.output_format.rate_hz == 24000


async def test_barge_in_ends_the_reply_and_drops_its_late_audio() -> None:
    script = GeminiScript(
        Script(replies=(Reply("A long reply", duration_ms=4000),), think_ms=10, speed=2.0),
        stale_chunks_after_interrupt=3,
    )
    async with running_gemini_mock(script) as mock, running(mock) as run:
        await run.wait(lambda: len(run.of(AudioOut)) >= 3)
        run.speak(300, 100)
        await run.wait(lambda: run.of(ReplyDone))
        await mock.wait_for(
            lambda: mock.last.sent_of("serverContent")[-1]["serverContent"].get("turnComplete")
        )
        cut = run.events.index(run.of(SpeechStarted)[0])
        after = run.events[cut + 1 :]
        assert after[-1] == ReplyDone("cancelled", "gemini-reply-1")
        assert after[:-1] == [Transcript("ai", "A")]  # what was said before the cut
        stale = [m for m in mock.last.sent_of("serverContent") if "modelTurn" in m["serverContent"]]
        assert len(stale) == len(run.of(AudioOut)) + 3  # the mock sent 3 chunks nobody played


async def test_tool_call_round_trip() -> None:
    calls = (FunctionCallSpec("get_time", {"tz": "UTC"}, after_user_turns=1, call_id="fc_1"),)
    script = GeminiScript(fast(function_calls=calls, function_reply="Result {output}"))
    async with running_gemini_mock(script) as mock:
        async with running(mock, SessionSettings("x", tools=(TOOL,))) as run:
            await run.wait(lambda: run.of(Ready))
            run.speak()
            await run.wait(lambda: run.of(ToolCall))
            assert run.of(ToolCall) == [ToolCall("fc_1", "get_time", '{"tz":"UTC"}')]
            run.session.tool_result("fc_1", '{"time": "noon"}')
            await run.wait(lambda: run.of(ReplyDone))
            assert run.said("ai") == ['Result {"time": "noon"}']
            response = mock.last.received_of("toolResponse")[0]["toolResponse"]
            assert response == {
                "functionResponses": [
                    {"id": "fc_1", "name": "get_time", "response": {"time": "noon"}}
                ]
            }


async def test_cancelled_tool_call_result_is_not_sent() -> None:
    calls = (FunctionCallSpec("get_time", after_user_turns=1, call_id="fc_1"),)
    async with running_gemini_mock(GeminiScript(fast(function_calls=calls))) as mock:
        async with running(mock, SessionSettings("x", tools=(TOOL,))) as run:
            await run.wait(lambda: run.of(Ready))
            run.speak()
            await run.wait(lambda: run.of(ToolCall))
            run.speak(300, 700)  # barge-in: the call is cancelled, then this turn is heard
            await run.wait(lambda: len(run.said("user")) == 2)
            assert mock.last.sent_of("toolCallCancellation")
            run.session.tool_result("fc_1", "{}")
            run.session.say("Still there?")
            await mock.wait_for(lambda: mock.last.text_inputs)
            assert mock.last.received_of("toolResponse") == []


@pytest.mark.parametrize(
    ("role", "text"),
    [("user", "I want a refund"), ("system", "System note (not said by the caller): VIP")],
)
async def test_inject_and_say(role: str, text: str) -> None:
    script = GeminiScript(fast(inject_reply="Noted: {text}"))
    async with running_gemini_mock(script) as mock, running(mock, SessionSettings("x")) as run:
        await run.wait(lambda: run.of(Ready))
        run.session.inject(text.split(": ", 1)[-1] if role == "system" else text, role)
        await run.wait(lambda: run.of(ReplyDone))
        assert [(i.role, i.text) for i in mock.last.injects] == [("user", text)]
        assert run.said("ai") == [f"Noted: {text}"]
        run.session.say("Say goodbye")
        await run.wait(lambda: len(run.of(ReplyDone)) == 2)
        assert mock.last.text_inputs == ["Say goodbye"]


@pytest.mark.parametrize(("code", "retryable"), [(1007, False), (1008, False), (1011, True)])
async def test_close_codes_without_a_handle(code: int, retryable: bool) -> None:
    script = GeminiScript(fast(), close_after_setup=code, resumption_updates=False)
    async with running_gemini_mock(script) as mock, running(mock) as run:
        await run.wait(lambda: run.closed)
        closed = run.closed
        assert closed is not None and closed.retryable is retryable
        assert f"({code}" in closed.reason
        assert len(mock.connections) == 1


async def test_go_away_resumes_inside_run() -> None:
    replies = (Reply("First", duration_ms=100), Reply("Second", duration_ms=100))
    script = GeminiScript(fast(replies=replies), connection_lifetime_s=0.8, go_away_notice_s=0.6)
    async with running_gemini_mock(script) as mock, running(mock) as run:
        await run.wait(lambda: run.of(ReplyDone))
        second = await mock.wait_connection(2)
        first = mock.connections[0]
        await mock.wait_for(lambda: second.resumed_from, TIMEOUT_S)
        assert second.resumed_from == first.handles_sent[-1]
        assert first.go_away_at is not None
        run.speak()
        await run.wait(lambda: len(run.of(ReplyDone)) == 2)
        assert run.said("ai") == ["First", "Second"]
        assert run.of(Ready) == [Ready()] and run.closed is None
        assert run.session.resumptions == 1
        assert second.text_inputs == []  # no second greeting
        assert len(second.audio_in) > 0
        assert first.close_code == 1000  # the session left before the server's deadline


async def test_dropped_link_resumes_and_keeps_caller_audio() -> None:
    slow = GeminiScript(fast(faults=Faults(handshake_delay_s=0.3)))
    async with running_gemini_mock(slow) as mock, running(mock) as run:
        await run.wait(lambda: run.of(ReplyDone))
        mock.drop_connection(1011)
        await mock.wait_for(lambda: mock.connections[0].closed_at, TIMEOUT_S)
        run.speak(200, 200)  # queued while the link is down (the upgrade takes 300 ms)
        second = await mock.wait_connection(2)
        await mock.wait_for(lambda: len(second.audio_in) >= 32 * 400, TIMEOUT_S)
        assert len(second.audio_in) == 32 * 400 and mock.connections[0].audio_in == b""
        assert run.closed is None and run.session.resumptions == 1
        assert second.resumed_from is not None


async def test_failed_resumption_closes_retryable() -> None:
    async with running_gemini_mock(GeminiScript(fast(), reject_resumption=True)) as mock:
        async with running(mock) as run:
            await run.wait(lambda: run.of(ReplyDone))
            mock.drop_connection(1011)
            await run.wait(lambda: run.closed)
            closed = run.closed
            assert closed is not None and closed.retryable
            assert "resumption failed" in closed.reason
            assert run.of(Ready) == [Ready()]


async def test_malformed_frame_closes_retryable() -> None:
    faults = Faults(malformed_after_s=0.2, malformed_frame="{not json")
    async with running_gemini_mock(GeminiScript(fast(faults=faults))) as mock, running(mock) as run:
        await run.wait(lambda: run.closed)
        assert run.closed == Closed("gemini: a server message is not JSON", retryable=True)


@pytest.mark.parametrize("binary", [True, False])
async def test_slow_start_and_text_or_binary_frames(binary: bool) -> None:
    script = GeminiScript(fast(faults=Faults(handshake_delay_s=0.3)), binary_frames=binary)
    async with running_gemini_mock(script) as mock, running(mock) as run:
        await run.wait(lambda: run.of(ReplyDone))
        assert run.of(Ready) == [Ready()]


async def test_wrong_key_is_not_retryable() -> None:
    async with running_gemini_mock(GeminiScript(fast())) as mock, running(mock, key="bad") as run:
        await run.wait(lambda: run.closed)
        closed = run.closed
        assert closed is not None and not closed.retryable
        assert "API key not valid" in closed.reason
        assert run.of(Ready) == []


async def test_unreachable_provider_is_retryable() -> None:
    async with running_gemini_mock(GeminiScript(fast())) as mock:
        url = mock.live_url
    async with running_gemini_mock(GeminiScript(fast())) as other, running(other, url=url) as run:
        await run.wait(lambda: run.closed)
        closed = run.closed
        assert closed is not None and closed.retryable
        assert closed.reason.startswith("gemini: connection failed")


async def test_go_away_mid_reply_waits_for_the_turn_to_end() -> None:
    replies = (Reply("A greeting", duration_ms=600), Reply("Next", duration_ms=100))
    script = GeminiScript(fast(replies=replies), connection_lifetime_s=1.5, go_away_notice_s=1.3)
    async with running_gemini_mock(script) as mock, running(mock) as run:
        second = await mock.wait_connection(2)
        first = mock.connections[0]
        assert first.go_away_at is not None
        assert (
            first.responses[0].done_at is not None
            and first.responses[0].done_at < first.go_away_at + 1
        )
        assert run.of(ReplyDone) == [ReplyDone("completed", "gemini-reply-1")]
        assert run.said("ai") == ["A greeting"]
        await mock.wait_for(lambda: second.resumed_from, TIMEOUT_S)
        assert first.close_code == 1000 and run.closed is None


async def test_go_away_without_a_handle_ends_retryable() -> None:
    script = GeminiScript(
        fast(), connection_lifetime_s=0.5, go_away_notice_s=0.1, resumption_updates=False
    )
    async with running_gemini_mock(script) as mock, running(mock) as run:
        await run.wait(lambda: run.closed)
        closed = run.closed
        assert closed is not None and closed.retryable
        assert len(mock.connections) == 1


async def test_policy_close_mid_call_is_final_even_with_a_handle() -> None:
    async with running_gemini_mock(GeminiScript(fast())) as mock, running(mock) as run:
        await run.wait(lambda: run.of(ReplyDone))
        mock.drop_connection(1008, "Requested entity was not found.")
        await run.wait(lambda: run.closed)
        assert run.closed == Closed(
            "gemini: connection closed (1008: Requested entity was not found.)", retryable=False
        )
        assert len(mock.connections) == 1


async def test_aclose_before_connecting_ends_the_session() -> None:
    async with running_gemini_mock(GeminiScript(fast())) as mock:
        config = GeminiConfig(api_key=Secret("test-key"), base_url=mock.live_url)
        session = GeminiLiveSession(config, SessionSettings("x", greeting="Hi"))
        await session.aclose()
        async with asyncio.timeout(TIMEOUT_S):
            await session.run()
            events = [e async for e in session.events()]
        assert events == [Closed("gemini: closed by sip4ai")]
        assert mock.connections[0].text_inputs == []
