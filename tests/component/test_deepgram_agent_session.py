"""The Deepgram Voice Agent session against the Deepgram mock on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pytest

from sip4ai.audio.g711 import ulaw_decode, ulaw_encode
from sip4ai.config import DeepgramConfig, Secret
from sip4ai.providers import REGISTRY
from sip4ai.providers.base import (
    AudioOut,
    Closed,
    ProviderEvent,
    Ready,
    ReplyDone,
    SessionSettings,
    SpeechStarted,
    SpeechStopped,
    Tool,
    ToolCall,
    Transcript,
)
from sip4ai.providers.deepgram_agent import DeepgramAgentSession
from testbed.mocks.mock_deepgram import (
    DeepgramMock,
    DeepgramScript,
    Faults,
    FunctionCallSpec,
    Reply,
    dominant_hz,
    running_deepgram_mock,
    tone,
)


pytestmark = pytest.mark.component

_E = TypeVar("_E")

TIMEOUT_S = 5.0 * float(os.environ.get("SIP4AI_TEST_TIMEOUT_FACTOR", "1"))
GREETING = "Greet the caller briefly and ask how you can help."
TRANSFER = Tool("transfer_call", "Transfer the call", {"type": "object", "properties": {}})


def fast(**fields: object) -> DeepgramScript:
    return DeepgramScript(**{"think_ms": 20, "speed": 0.0, **fields})  # type: ignore[arg-type]


@dataclass
class Run:
    session: DeepgramAgentSession
    task: asyncio.Task[None]
    events: list[ProviderEvent] = field(default_factory=list)

    async def until(self, predicate: Callable[[], object]) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not predicate():  # noqa: ASYNC110 - events are collected by another task
                await asyncio.sleep(0.01)

    def of(self, kind: type[_E]) -> list[_E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def closed(self) -> Closed:
        await self.until(lambda: self.of(Closed))
        await asyncio.wait_for(self.task, TIMEOUT_S)
        assert isinstance(self.events[-1], Closed)  # Closed is the last event
        return self.events[-1]

    def speak(self, ms: int = 400, silence_ms: int = 700) -> None:
        pcm = np.concatenate([tone(300, ms, 8000, 0.5), np.zeros(8 * silence_ms, np.int16)])
        data = ulaw_encode(pcm)
        for i in range(0, len(data), 160):
            self.session.send_audio(data[i : i + 160])


@contextlib.asynccontextmanager
async def running(
    mock: DeepgramMock | None,
    *,
    key: str = "test-key",
    greeting: str | None = GREETING,
    config_greeting: str | None = None,
    url: str | None = None,
    **kwargs: object,
) -> AsyncIterator[Run]:
    base_url = url or (mock.agent_url if mock else "ws://127.0.0.1:9/")
    think_provider = str(kwargs.pop("think_provider", "open_ai"))
    config = DeepgramConfig(
        api_key=Secret(key),
        base_url=base_url,
        greeting=config_greeting,
        think_provider=think_provider,
    )
    settings = SessionSettings("Be brief.", greeting=greeting, tools=(TRANSFER,))
    session = DeepgramAgentSession(config, settings, **kwargs)  # type: ignore[arg-type]
    run = Run(session, asyncio.create_task(session.run()))

    async def collect() -> None:
        async for event in session.events():
            run.events.append(event)

    collector = asyncio.create_task(collect())
    try:
        yield run
    finally:
        await session.aclose()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(run.task, TIMEOUT_S)
        await asyncio.wait_for(collector, TIMEOUT_S)


def audio_hz(events: list[ProviderEvent], item_id: str) -> float:
    audio = b"".join(e.audio for e in events if isinstance(e, AudioOut) and e.item_id == item_id)
    return dominant_hz(ulaw_decode(audio), 8000)


# --- setup --------------------------------------------------------------------------------------


def test_registered_as_deepgram() -> None:
    assert "deepgram" in REGISTRY


async def test_settings_first_and_no_audio_before_settings_applied() -> None:
    async with running_deepgram_mock(fast(settings_delay_ms=300)) as mock:
        async with running(mock, greeting=None) as run:
            run.session.send_audio(b"\xff" * 160)  # queued until SettingsApplied
            conn = await mock.wait_connection()
            await run.until(lambda: run.of(Ready))
            await mock.wait_for(lambda: len(conn.audio_in) == 160)
            assert conn.received[0].type == "Settings"
            assert conn.audio_before_applied == 0
            assert conn.headers["Authorization"] == "Token test-key"
            applied = conn.applied
            assert applied is not None
            assert (applied.input.encoding, applied.input.sample_rate) == ("mulaw", 8000)
            assert (applied.output.encoding, applied.container) == ("mulaw", "none")
            assert (applied.listen_model, applied.speak_model) == ("nova-3", "aura-2-thalia-en")
            assert (applied.think_provider, applied.think_model) == ("open_ai", "gpt-4o-mini")
            assert (applied.prompt, applied.functions) == ("Be brief.", ("transfer_call",))
            assert applied.greeting is None and conn.injects == []
            assert run.session.capabilities.truncation is False


async def test_literal_greeting_is_spoken_first() -> None:
    script = fast(replies=(Reply("x", duration_ms=400),))
    async with running_deepgram_mock(script) as mock:
        async with running(mock, config_greeting="Hello, Ada here.") as run:
            await run.until(lambda: run.of(ReplyDone))
            assert run.of(Transcript) == [Transcript("ai", "Hello, Ada here.")]
            assert run.of(ReplyDone) == [ReplyDone("completed", "dg-reply-1")]
            assert abs(audio_hz(run.events, "dg-reply-1") - 400) < 20
            kinds = [type(e).__name__ for e in run.events]
            assert kinds[0] == "Ready" and kinds[-2:] == ["Transcript", "ReplyDone"]
            assert mock.last.injects == []


async def test_greeting_instruction_without_literal_greeting() -> None:
    script = fast(replies=(Reply("Hi, how can I help?", duration_ms=200),))
    async with running_deepgram_mock(script) as mock:
        async with running(mock) as run:
            await run.until(lambda: run.of(ReplyDone))
            conn = mock.last
            assert [(i.kind, i.text) for i in conn.injects] == [("user", GREETING)]
            assert run.of(Transcript) == [Transcript("ai", "Hi, how can I help?")]  # no "user"


# --- conversation -------------------------------------------------------------------------------


async def test_caller_turn_produces_transcripts_and_a_reply() -> None:
    script = fast(replies=(Reply("It is noon", duration_ms=300),), transcripts=("What time?",))
    async with running_deepgram_mock(script) as mock:
        async with running(mock, greeting=None) as run:
            await run.until(lambda: run.of(Ready))
            run.speak()
            await run.until(lambda: run.of(ReplyDone))
            assert [e for e in run.events if not isinstance(e, AudioOut)] == [
                Ready(),
                SpeechStarted(),
                SpeechStopped(),
                Transcript("user", "What time?"),
                Transcript("ai", "It is noon"),
                ReplyDone("completed", "dg-reply-1"),
            ]
            assert sum(len(e.audio) for e in run.of(AudioOut)) == 2400


async def test_barge_in_cancels_the_reply_and_drops_its_stale_audio() -> None:
    script = DeepgramScript(
        replies=(Reply("Long", duration_ms=4000), Reply("Yes?", duration_ms=200)),
        think_ms=10,
        speed=2.0,
        stale_audio_ms=300,
        audio_done_after_barge_in=True,
    )
    async with running_deepgram_mock(script) as mock:
        async with running(mock, config_greeting="Long") as run:
            await run.until(lambda: run.of(AudioOut))
            run.speak(300)
            await run.until(lambda: len(run.of(ReplyDone)) == 2)
            conn = mock.last
            assert conn.replies[0].status == "interrupted"
            assert conn.replies[0].stale_bytes_sent == 2400
            started = run.events.index(SpeechStarted())
            after = run.events[started:]
            assert after[1:3] == [Transcript("ai", "Long"), ReplyDone("cancelled", "dg-reply-1")]
            assert not [e for e in after if isinstance(e, AudioOut) and e.item_id == "dg-reply-1"]
            assert run.session.stale_audio_bytes == 2400
            assert run.of(ReplyDone)[1] == ReplyDone("completed", "dg-reply-2")
            assert abs(audio_hz(run.events, "dg-reply-2") - 600) < 20


async def test_tool_call_round_trip() -> None:
    call = FunctionCallSpec("transfer_call", {"to": "sales"}, after_user_turns=1, call_id="fc_1")
    script = fast(function_calls=(call,), function_reply="Done: {output}")
    async with running_deepgram_mock(script) as mock:
        async with running(mock, greeting=None) as run:
            await run.until(lambda: run.of(Ready))
            run.speak()
            await run.until(lambda: run.of(ToolCall))
            assert run.of(ToolCall) == [ToolCall("fc_1", "transfer_call", '{"to": "sales"}')]
            run.session.tool_result("fc_1", '{"ok":true}')
            run.session.tool_result("fc_unknown", "{}")  # dropped, not sent
            await run.until(lambda: run.of(ReplyDone))
            assert Transcript("ai", 'Done: {"ok":true}') in run.events
            responses = mock.last.function_responses
            assert [(r.id, r.name, r.content, r.known) for r in responses] == [
                ("fc_1", "transfer_call", '{"ok":true}', True)
            ]


async def test_server_side_functions_are_not_ours() -> None:
    call = FunctionCallSpec("lookup", after_user_turns=1)
    script = fast(function_calls=(call,), server_side_functions=("lookup",))
    async with running_deepgram_mock(script) as mock:
        async with running(mock, greeting=None) as run:
            await run.until(lambda: run.of(Ready))
            run.speak()
            await run.until(lambda: run.of(ReplyDone))
            assert run.of(ToolCall) == []
            assert mock.last.received_of("FunctionCallResponse") == []


async def test_inject_system_extends_the_prompt_and_the_agent_answers_it() -> None:
    script = fast(replies=(Reply("Noted", duration_ms=200), Reply("Sure", duration_ms=200)))
    async with running_deepgram_mock(script) as mock:
        async with running(mock, greeting=None) as run:
            await run.until(lambda: run.of(Ready))
            run.session.inject("The caller is a VIP.", "system")
            conn = mock.last
            await mock.wait_for(lambda: len(conn.sent_of("PromptUpdated")) == 1)
            assert conn.prompt == "Be brief.\n\nAdditional context:\n- The caller is a VIP."
            await run.until(lambda: run.of(ReplyDone))  # like OpenAI: context, then a reply
            run.session.inject("Are you there?", "user")
            await run.until(lambda: len(run.of(ReplyDone)) == 2)
            assert run.of(Transcript) == [Transcript("ai", "Noted"), Transcript("ai", "Sure")]
            assert [i.kind for i in conn.injects] == ["prompt", "user", "user"]
            assert "The caller is a VIP." in conn.injects[1].text


async def test_say_makes_the_agent_speak() -> None:
    script = fast(default_reply=Reply("Goodbye!", duration_ms=200))
    async with running_deepgram_mock(script) as mock:
        async with running(mock, greeting=None) as run:
            await run.until(lambda: run.of(Ready))
            run.session.say("The call is ending now. Say goodbye.")
            await run.until(lambda: run.of(ReplyDone))
            assert run.of(Transcript) == [Transcript("ai", "Goodbye!")]
            message = mock.last.received_of("InjectUserMessage")[0]
            assert message["content"] == "The call is ending now. Say goodbye."


# --- keepalive, errors, close codes -------------------------------------------------------------


@pytest.mark.parametrize("keepalive_s", [0.1, 5.0])
async def test_keepalive_prevents_client_message_timeout(keepalive_s: float) -> None:
    script = fast(client_message_timeout_s=1.0)
    async with running_deepgram_mock(script) as mock:
        async with running(mock, greeting=None, keepalive_s=keepalive_s) as run:
            await run.until(lambda: run.of(Ready))
            if keepalive_s < 1:
                await asyncio.sleep(1.5)
                conn = mock.last
                assert len(conn.keepalives) >= 3 and not run.of(Closed)
                await mock.wait_for(lambda: run.session.keepalives_sent <= len(conn.keepalives))
            else:
                closed = await run.closed()
                assert closed.reason == "deepgram: CLIENT_MESSAGE_TIMEOUT"
                assert closed.retryable


async def test_audio_postpones_keepalive() -> None:
    async with running_deepgram_mock(fast()) as mock:
        async with running(mock, greeting=None, keepalive_s=0.5) as run:
            await run.until(lambda: run.of(Ready))
            for _ in range(50):
                run.session.send_audio(b"\xff" * 160)
                await asyncio.sleep(0.02)
            assert mock.last.keepalives == []


async def test_unparsable_settings_end_the_session_for_good() -> None:
    async with running_deepgram_mock(fast()) as mock:
        async with running(mock, think_provider="openai") as run:
            closed = await run.closed()
            assert closed.reason == "deepgram: UNPARSABLE_CLIENT_MESSAGE" and not closed.retryable
            assert "agent.think.provider.type" in (mock.last.settings_error or "")
            assert not run.of(Ready)


@pytest.mark.parametrize(
    ("code", "retryable"), [(1011, True), (1001, True), (1000, False), (1008, False)]
)
async def test_close_codes(code: int, retryable: bool) -> None:
    faults = Faults(close_after_s=0.3, close_code=code, close_reason="")
    async with running_deepgram_mock(fast(faults=faults)) as mock:
        async with running(mock, greeting=None) as run:
            closed = await run.closed()
            assert closed.retryable is retryable
            assert closed.details["code"] == code


async def test_malformed_frame_ends_the_session_retryably() -> None:
    async with running_deepgram_mock(fast(faults=Faults(malformed_after_s=0.2))) as mock:
        async with running(mock, greeting=None) as run:
            closed = await run.closed()
            assert closed.retryable and "not JSON" in closed.reason


async def test_slow_start_is_waited_for() -> None:
    faults = Faults(handshake_delay_s=0.4)
    async with running_deepgram_mock(fast(faults=faults, settings_delay_ms=300)) as mock:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with running(mock, greeting=None) as run:
            await run.until(lambda: run.of(Ready))
            assert loop.time() - start >= 0.7


async def test_no_settings_applied_in_time_is_retryable() -> None:
    async with running_deepgram_mock(fast(settings_delay_ms=3000)) as mock:
        async with running(mock, setup_timeout_s=0.3) as run:
            closed = await run.closed()
            assert closed.retryable and "SettingsApplied" in closed.reason
            assert not run.of(Ready)


async def test_auth_failure_is_not_retryable() -> None:
    async with running_deepgram_mock(fast()) as mock:
        async with running(mock, key="wrong") as run:
            closed = await run.closed()
            assert closed == Closed("deepgram: HTTP 401 at connect", retryable=False)


async def test_auth_failure_after_upgrade_is_not_retryable() -> None:
    async with running_deepgram_mock(fast(auth_failure="ws")) as mock:
        async with running(mock, key="wrong") as run:
            closed = await run.closed()
            assert closed.reason == "deepgram: INVALID_AUTH" and not closed.retryable


async def test_unreachable_provider_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with running(None, url=f"ws://127.0.0.1:{port}/v1/agent/converse") as run:
        closed = await run.closed()
        assert closed.retryable and "connection failed" in closed.reason


async def test_aclose_ends_the_session_normally() -> None:
    async with running_deepgram_mock(fast()) as mock:
        async with running(mock, greeting=None) as run:
            await run.until(lambda: run.of(Ready))
            await run.session.aclose()
            closed = await run.closed()
            assert not closed.retryable
            await mock.wait_for(lambda: mock.last.close_code is not None)
            assert mock.last.close_code == 1000
