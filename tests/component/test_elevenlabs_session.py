"""The ElevenLabs session against the ElevenLabs mock on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import numpy as np
import pytest

from sip4ai.audio.formats import AudioFormat, Encoding
from sip4ai.audio.g711 import ulaw_decode, ulaw_encode
from sip4ai.config import ElevenLabsConfig, Secret
from sip4ai.providers import available, elevenlabs_wire as wire
from sip4ai.providers.base import (
    AudioOut,
    Capabilities,
    Closed,
    ProviderEvent,
    Ready,
    ReplyDone,
    SessionSettings,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    Transcript,
)
from sip4ai.providers.elevenlabs import ElevenLabsSession, public_url, signed_url_endpoint
from testbed.mocks.mock_elevenlabs import (
    AgentSettings,
    ElevenLabsMock,
    Faults,
    FunctionCallSpec,
    Reply,
    Script,
    dominant_hz,
    running_elevenlabs_mock,
    tone,
)


pytestmark = pytest.mark.component

TIMEOUT_S = 5.0 * float(os.environ.get("SIP4AI_TEST_TIMEOUT_FACTOR", "1"))
_T = TypeVar("_T")


class Run:
    """A running session whose events are collected; ``wait`` re-checks on every event."""

    def __init__(self, session: ElevenLabsSession) -> None:
        self.session = session
        self.events: list[ProviderEvent] = []
        self.caps_at_ready: Capabilities | None = None
        self._changed = asyncio.Event()

    async def collect(self) -> None:
        async for event in self.session.events():
            if isinstance(event, Ready):
                self.caps_at_ready = self.session.capabilities
            self.events.append(event)
            self._changed.set()

    async def wait(self, predicate: Callable[[], _T], timeout_s: float = TIMEOUT_S) -> _T:
        async with asyncio.timeout(timeout_s):
            while not (result := predicate()):
                self._changed.clear()
                await self._changed.wait()
            return result

    def of(self, kind: type[_T]) -> list[_T]:
        return [e for e in self.events if isinstance(e, kind)]

    async def closed(self) -> Closed:
        return (await self.wait(lambda: self.of(Closed)))[0]


def config_for(mock: ElevenLabsMock, **fields: object) -> ElevenLabsConfig:
    values: dict[str, object] = {"agent_id": "agent_1", "base_url": mock.base_url, **fields}
    return ElevenLabsConfig(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    config: ElevenLabsConfig, settings: SessionSettings | None = None
) -> AsyncIterator[Run]:
    session = ElevenLabsSession(config, settings or SessionSettings("Be brief.", greeting="Hi"))
    run = Run(session)
    tasks = [asyncio.create_task(session.run()), asyncio.create_task(run.collect())]
    try:
        yield run
    finally:
        await session.aclose()
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*tasks)


def speech_ulaw(ms: int) -> list[bytes]:
    """Caller speech then 700 ms of silence, as 20 ms mu-law frames."""
    audio = ulaw_encode(tone(300.0, ms, 8000, amplitude=0.5)) + b"\xff" * 8 * 700
    return [audio[i : i + 160] for i in range(0, len(audio), 160)]


def audio_of(run: Run, item_id: str) -> bytes:
    return b"".join(e.audio for e in run.of(AudioOut) if e.item_id == item_id)


def test_registered_and_urls() -> None:
    assert available("elevenlabs")
    base = "wss://api.elevenlabs.io/v1/convai/conversation"
    assert signed_url_endpoint(base, "a b") == (
        "https://api.elevenlabs.io/v1/convai/conversation/get-signed-url?agent_id=a+b"
    )
    assert signed_url_endpoint("ws://127.0.0.1:9/x/", "a").startswith("http://127.0.0.1:9/x/get-")
    assert public_url(base, "a1") == f"{base}?agent_id=a1"


async def test_setup_overrides_greeting_and_transcript() -> None:
    script = Script(replies=(Reply("ignored text", duration_ms=600),), think_ms=20, speed=8.0)
    async with running_elevenlabs_mock(script) as mock:
        config = config_for(mock, first_message="Hello caller!", system_prompt="Be brief.")
        greeting = "Start the conversation by saying: Hello caller!"
        settings = SessionSettings("Be brief.\n\nThe caller is Ann.", greeting=greeting)
        async with running(config, settings) as run:
            done = await run.wait(lambda: run.of(ReplyDone))
            conn = mock.last
        assert conn.overrides == {
            "agent": {
                "prompt": {"prompt": "Be brief.\n\nThe caller is Ann."},
                "first_message": "Hello caller!",
            }
        }
        assert mock.signed_url_requests == [] and conn.token is None  # no key: public agent
        assert done == [ReplyDone("completed", "el-reply-1")]
        assert run.events[0] == Ready()
        assert run.caps_at_ready == Capabilities(wire.PCMU_8K, wire.PCMU_8K, True, False)
        assert Transcript("ai", "Hello caller!") in run.events
        samples = ulaw_decode(audio_of(run, "el-reply-1"))
        assert len(samples) == 4800 and abs(dominant_hz(samples, 8000) - 400) < 10
        # the transcript comes before the end of its reply
        assert run.events.index(Transcript("ai", "Hello caller!")) < run.events.index(done[0])


async def test_takeover_greeting_follows_the_instruction() -> None:
    script = Script(replies=(Reply("Sorry, where were we?", duration_ms=200),), think_ms=20)
    async with running_elevenlabs_mock(script) as mock:
        config = config_for(mock, first_message="Hello caller!")
        settings = SessionSettings("x", greeting="You take over this call; greet again.")
        async with running(config, settings) as run:
            await run.wait(lambda: Transcript("ai", "Sorry, where were we?") in run.events)
            conn = mock.last
        assert conn.overrides == {"agent": {"first_message": ""}}
        assert [(i.role, i.text) for i in conn.injects] == [
            ("user", "You take over this call; greet again."),
            ("system", "x"),  # the call's instructions: no system_prompt override configured
        ]
        assert [r.trigger for r in conn.replies] == ["user_message"]


async def test_pcm_agent_formats_are_declared_before_ready() -> None:
    agent = AgentSettings(output_format="pcm_22050", input_format="pcm_16000", greets=False)
    async with running_elevenlabs_mock(Script(think_ms=20), agent) as mock:
        async with running(config_for(mock)) as run:
            await run.wait(lambda: run.of(Ready))
            pcm = tone(300.0, 100, 16000).astype("<i2").tobytes()
            run.session.send_audio(pcm)
            conn = mock.last
            await mock.wait_for(lambda: len(conn.audio_in) >= len(pcm))
        # no system prompt or first message configured: the agent's own are used
        assert conn.initiation == {"type": "conversation_initiation_client_data"}
        assert run.caps_at_ready == Capabilities(
            AudioFormat(Encoding.PCM16, 16000), AudioFormat(Encoding.PCM16, 22050), True, False
        )
        assert bytes(conn.audio_in) == pcm


async def test_signed_url_flow_with_api_key() -> None:
    agent = AgentSettings(private=True, agent_id="agent_1")
    script = Script(api_key="xi-secret", think_ms=20, replies=(Reply("Hi", duration_ms=100),))
    async with running_elevenlabs_mock(script, agent) as mock:
        async with running(config_for(mock, api_key=Secret("xi-secret"))) as run:
            await run.wait(lambda: run.of(ReplyDone))
        assert [r.accepted for r in mock.signed_url_requests] == [True]
        assert mock.last.token is not None and "xi-secret" not in mock.last.path


@pytest.mark.parametrize(
    ("key", "reason"),
    [("wrong", "HTTP 401 from get-signed-url"), (None, "HTTP 403 at connect")],
)
async def test_auth_failures_are_final(key: str | None, reason: str) -> None:
    agent = AgentSettings(private=True)
    async with running_elevenlabs_mock(Script(api_key="xi-secret"), agent) as mock:
        api_key = Secret(key) if key else None
        async with running(config_for(mock, api_key=api_key)) as run:
            closed = await run.closed()
        assert reason in closed.reason and not closed.retryable
        assert not run.of(Ready)


async def test_signed_url_server_error_is_retryable() -> None:
    agent = AgentSettings(signed_url_status=503)
    async with running_elevenlabs_mock(Script(), agent) as mock:
        async with running(config_for(mock, api_key=Secret("test-key"))) as run:
            closed = await run.closed()
        assert closed == Closed("elevenlabs: HTTP 503 from get-signed-url", retryable=True)
        assert mock.connections == []


async def test_barge_in_drops_stale_audio_then_transcript_and_next_reply() -> None:
    script = Script(
        replies=(Reply("A long greeting", duration_ms=4000), Reply("Sure.", duration_ms=300)),
        transcripts=("Stop please",),
        think_ms=20,
        speed=4.0,
    )
    async with running_elevenlabs_mock(script) as mock:
        async with running(config_for(mock)) as run:
            await run.wait(lambda: run.of(AudioOut))
            for frame in speech_ulaw(300):
                run.session.send_audio(frame)
            await run.wait(lambda: Transcript("ai", "Sure.") in run.events)
            conn = mock.last
        cut = run.events.index(SpeechStarted())
        assert run.events[cut + 1 : cut + 3] == [
            Transcript("ai", "A long greeting"),
            ReplyDone("cancelled", "el-reply-1"),
        ]
        stale = [
            e for e in run.events[cut:] if isinstance(e, AudioOut) and e.item_id == "el-reply-1"
        ]
        assert stale == [] and run.session.dropped_audio == 2
        assert len(conn.sent_of("audio")) > len(run.of(AudioOut))  # really sent
        rest = run.events[cut + 3 :]
        assert rest[:2] == [SpeechStopped(), Transcript("user", "Stop please")]
        assert isinstance(rest[2], AudioOut) and rest[2].item_id == "el-reply-2"


async def test_tool_call_round_trip() -> None:
    script = Script(
        replies=(Reply("Hi", duration_ms=100),),
        transcripts=("What time is it?",),
        function_calls=(FunctionCallSpec("get_time", {"tz": "UTC"}, after_user_turns=1),),
        function_reply="It is {output}",
        think_ms=20,
        speed=0.0,
    )
    async with running_elevenlabs_mock(script) as mock:
        async with running(config_for(mock)) as run:
            await run.wait(lambda: run.of(ReplyDone))
            for frame in speech_ulaw(300):
                run.session.send_audio(frame)
            call = (await run.wait(lambda: run.of(ToolCall)))[0]
            assert (call.name, call.arguments) == ("get_time", '{"tz": "UTC"}')
            run.session.tool_result(call.call_id, '"noon"')
            await run.wait(lambda: Transcript("ai", 'It is "noon"') in run.events)
        result = mock.last.tool_results[0]
        assert (result.call_id, result.result, result.is_error) == (call.call_id, '"noon"', False)


async def test_inject_and_say() -> None:
    script = Script(
        replies=(Reply("Hi", duration_ms=100), Reply("Goodbye!", duration_ms=100)),
        inject_reply="Noted: {text}",
        think_ms=20,
        speed=0.0,
    )
    async with running_elevenlabs_mock(script) as mock:
        async with running(config_for(mock, system_prompt="Be brief.")) as run:
            await run.wait(lambda: Transcript("ai", "Hi") in run.events)
            run.session.inject("The caller is a VIP.", "system")
            await run.wait(lambda: Transcript("ai", "Noted: The caller is a VIP.") in run.events)
            run.session.say("Say goodbye.")
            await run.wait(lambda: Transcript("ai", "Goodbye!") in run.events)
            run.session.inject("I want a refund", "user")
            conn = mock.last
            await mock.wait_for(lambda: len(conn.injects) == 4)
        assert [(i.role, i.text) for i in conn.injects] == [
            ("system", "The caller is a VIP."),
            ("user", wire.SYSTEM_NUDGE),
            ("user", "Say goodbye."),
            ("user", "I want a refund"),
        ]


async def test_pings_are_answered_at_once() -> None:
    agent = AgentSettings(ping_interval_s=0.05, pong_late_ms=500)
    script = Script(replies=(Reply("Hi", duration_ms=600),), speed=1.0, think_ms=20)
    async with running_elevenlabs_mock(script, agent) as mock:
        async with running(config_for(mock)) as run:
            for frame in speech_ulaw(0)[:20]:  # some queued audio too
                run.session.send_audio(frame)
            conn = await mock.wait_connection()
            await mock.wait_for(lambda: len([p for p in conn.pings if p.pong_at]) >= 5)
        assert conn.late_pongs == []
        assert all(p.pong_at for p in conn.pings[:5])


@pytest.mark.parametrize(
    ("code", "retryable"), [(1011, True), (1000, False), (1002, True), (1008, False)]
)
async def test_close_codes(code: int, retryable: bool) -> None:
    faults = Faults(close_after_s=0.2, close_code=code, close_reason="bye")
    async with running_elevenlabs_mock(Script(faults=faults), AgentSettings(greets=False)) as mock:
        async with running(config_for(mock)) as run:
            closed = await run.closed()
        assert closed == Closed(f"elevenlabs: connection closed ({code}): bye", retryable)
        assert run.of(Ready) == [Ready()]


async def test_refused_override_is_final() -> None:
    agent = AgentSettings(allowed_overrides=("agent.first_message",))
    async with running_elevenlabs_mock(Script(), agent) as mock:
        async with running(config_for(mock, system_prompt="x")) as run:
            closed = await run.closed()
        assert not closed.retryable and "(1008)" in closed.reason
        assert closed.details == {"error": "override_error"}
        assert not run.of(Ready)


async def test_malformed_frame_ends_the_session_retryably() -> None:
    faults = Faults(malformed_after_s=0.2, malformed_frame='{"type": "audio", "audio_event": ')
    script = Script(faults=faults, replies=(Reply("Hi", duration_ms=2000),), speed=1.0, think_ms=20)
    async with running_elevenlabs_mock(script) as mock:
        async with running(config_for(mock)) as run:
            closed = await run.closed()
        assert closed.retryable and "not JSON" in closed.reason
        # the reply in progress is ended before Closed
        assert run.events[-3:] == [
            Transcript("ai", "Hi"),
            ReplyDone("incomplete", "el-reply-1"),
            closed,
        ]
        assert mock.connections


async def test_slow_handshake_still_connects() -> None:
    script = Script(faults=Faults(handshake_delay_s=0.5), replies=(Reply("Hi", duration_ms=100),))
    async with running_elevenlabs_mock(script) as mock:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with running(config_for(mock)) as run:
            await run.wait(lambda: run.of(Ready))
            assert loop.time() - started >= 0.5


async def test_missing_agent_id_and_unreachable_server() -> None:
    config = ElevenLabsConfig(agent_id=None)
    async with running(config) as run:
        closed = await run.closed()
    assert closed == Closed("elevenlabs: agent_id is not configured", retryable=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ElevenLabsConfig(agent_id="a", base_url=f"ws://127.0.0.1:{port}/v1/convai/c")
    async with running(config) as run:
        closed = await run.closed()
    assert closed.retryable and "connection failed" in closed.reason


async def test_send_queue_is_bounded_and_never_blocks() -> None:
    session = ElevenLabsSession(ElevenLabsConfig(agent_id="a"), SessionSettings("x"))
    for _ in range(600):
        session.send_audio(b"\xff" * 160)
    assert session.dropped_frames == 100
    assert np.isclose(session.capabilities.input_format.rate_hz, 8000)
