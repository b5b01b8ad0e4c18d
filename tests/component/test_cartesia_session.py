"""CartesiaPipelineSession against the pipeline mock (Deepgram STT + Chat Completions + TTS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import pytest

from sip4ai.audio.g711 import ulaw_decode, ulaw_encode
from sip4ai.config import CartesiaConfig, Config, DeepgramConfig, OpenAIConfig, Secret
from sip4ai.providers import REGISTRY, deepgram_stt_wire as stt_wire
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
from sip4ai.providers.cartesia import CartesiaPipelineSession
from sip4ai.providers.cartesia_dialog import INTERRUPTED_MARK
from testbed.mocks._ws_common import Faults, dominant_hz, tone
from testbed.mocks.mock_cartesia import (
    CartesiaMock,
    FunctionCallSpec,
    PipelineScript,
    Reply,
    Script,
    running_cartesia_mock,
)


pytestmark = pytest.mark.component

TIMEOUT_S = 10.0
_T = TypeVar("_T")


def make_config(mock: CartesiaMock, **keys: str | None) -> Config:
    def key(name: str) -> Secret | None:
        value = keys.get(name, f"{name}-key")
        return Secret(value) if value else None

    return Config(
        cartesia=CartesiaConfig(
            api_key=key("cartesia"),
            voice_id="voice-7",
            llm_model="gpt-4o-mini",
            base_url=mock.tts_url,
            llm_base_url=mock.llm_base_url,
        ),
        deepgram=DeepgramConfig(api_key=key("deepgram"), stt_base_url=mock.stt_url),
        openai=OpenAIConfig(api_key=key("openai")),
    )


def pipeline(script: Script, **extra: Any) -> PipelineScript:
    return PipelineScript(
        replace(script, api_key="cartesia-key"),
        deepgram_api_key="deepgram-key",
        openai_api_key="openai-key",
        **extra,
    )


class Events:
    """Collects a session's events with arrival times; tests wait on predicates."""

    def __init__(self, session: CartesiaPipelineSession) -> None:
        self.items: list[tuple[float, ProviderEvent]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._collect(session))

    async def _collect(self, session: CartesiaPipelineSession) -> None:
        async for event in session.events():
            self.items.append((time.monotonic(), event))
            self._changed.set()

    def of(self, kind: type[_T]) -> list[_T]:
        return [e for _, e in self.items if isinstance(e, kind)]

    def said(self, speaker: str) -> list[str]:
        return [t.text for t in self.of(Transcript) if t.speaker == speaker]

    async def wait(self, predicate: Callable[[], _T], timeout_s: float = TIMEOUT_S) -> _T:
        async with asyncio.timeout(timeout_s):
            while not (result := predicate()):
                self._changed.clear()
                await self._changed.wait()
            return result


@contextlib.asynccontextmanager
async def session_on(
    mock: CartesiaMock,
    settings: SessionSettings | None = None,
    keys: dict[str, str | None] | None = None,
) -> AsyncIterator[tuple[CartesiaPipelineSession, Events, asyncio.Task[None]]]:
    config = make_config(mock, **(keys or {}))
    session = CartesiaPipelineSession(
        config, settings or SessionSettings("Be brief.", greeting="Greet the caller.")
    )
    events = Events(session)
    task = asyncio.create_task(session.run())
    try:
        yield session, events, task
    finally:
        await session.aclose()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, TIMEOUT_S)


def caller_speech(ms: int = 700, silence_ms: int = 1200) -> bytes:
    return ulaw_encode(tone(300, ms, 8000, 0.5)) + ulaw_encode(np.zeros(8 * silence_ms, np.int16))


def feed(session: CartesiaPipelineSession, audio: bytes) -> None:
    for i in range(0, len(audio), 160):
        session.send_audio(audio[i : i + 160])


def audio_hz(events: Events, item_id: str) -> float:
    audio = b"".join(e.audio for e in events.of(AudioOut) if e.item_id == item_id)
    return dominant_hz(ulaw_decode(audio), 8000)


async def test_setup_greeting_by_llm_and_one_turn() -> None:
    script = Script(
        replies=(
            Reply("Hello caller. How can I help you today?"),
            Reply("It is noon right now. Anything else I can do?"),
        ),
        transcripts=("What time is it?",),
        speed=20.0,
        think_ms=20,
    )
    settings = SessionSettings(
        "Be brief.",
        greeting="Greet the caller.",
        tools=(Tool("lookup", "Look up", {"type": "object", "properties": {}}),),
    )
    async with running_cartesia_mock(pipeline(script)) as mock:
        async with session_on(mock, settings) as (session, events, _):
            await events.wait(lambda: events.of(Ready))
            assert session.capabilities.input_format == session.capabilities.output_format
            assert session.capabilities.server_vad and session.capabilities.truncation
            call = await mock.wait_connection()
            assert call.stt.query["encoding"] == "mulaw" and call.stt.query["model"] == "nova-3"
            assert call.stt.headers["Authorization"] == "Token deepgram-key"
            assert call.tts.headers["X-API-Key"] == "cartesia-key"
            assert call.tts.headers["Cartesia-Version"]
            done = await events.wait(lambda: events.of(ReplyDone))
            greeting = mock.chat[0]
            assert greeting.headers["Authorization"] == "Bearer openai-key"
            assert greeting.body["model"] == "gpt-4o-mini"
            assert greeting.body["tools"][0]["function"]["name"] == "lookup"
            assert greeting.trigger == "instructions"
            assert greeting.messages[-1]["content"] == "Greet the caller."
            assert done[0] == ReplyDone("completed", done[0].item_id)
            assert events.said("ai") == ["Hello caller. How can I help you today?"]
            assert done[0].item_id is not None
            assert abs(audio_hz(events, done[0].item_id) - 400) < 20
            assert call.tts.received[0].event["voice"] == {"mode": "id", "id": "voice-7"}
            feed(session, caller_speech())
            await events.wait(lambda: len(events.of(ReplyDone)) == 2)
            assert events.said("user") == ["What time is it?"]
            kinds = [type(e).__name__ for _, e in events.items]
            user_at = kinds.index("SpeechStopped")
            assert kinds[user_at - 1] == "Transcript" and "SpeechStarted" in kinds[:user_at]
            assert mock.chat[1].messages[-1] == {"role": "user", "content": "What time is it?"}
            assert mock.chat[1].messages[1]["role"] == "assistant"
            second = call.tts.contexts[1]
            assert second.pieces[:2] == ["It is noon right now. ", "Anything else I can do?"]
            assert second.continues == [True, True, False]
            assert abs(audio_hz(events, events.of(ReplyDone)[1].item_id or "") - 600) < 20


async def test_first_audio_comes_before_the_llm_finishes() -> None:
    text = "First sentence is here. " + " ".join(["word"] * 40) + "."
    script = Script(replies=(Reply(text),), speed=1.0, think_ms=10)
    async with running_cartesia_mock(pipeline(script, chat_word_ms=50)) as mock:
        async with session_on(mock) as (_, events, _):
            await events.wait(lambda: events.of(AudioOut), 10)
            first_audio = events.items[[type(e) for _, e in events.items].index(AudioOut)][0]
            assert mock.chat[0].finished_at is None or mock.chat[0].finished_at > first_audio


async def test_literal_greeting_goes_straight_to_tts() -> None:
    async with running_cartesia_mock(pipeline(Script(speed=20.0))) as mock:
        config = replace(
            make_config(mock),
            cartesia=replace(make_config(mock).cartesia, greeting="Thanks for calling Acme."),
        )
        session = CartesiaPipelineSession(config, SessionSettings("x", greeting="Start"))
        events = Events(session)
        task = asyncio.create_task(session.run())
        try:
            await events.wait(lambda: events.of(ReplyDone))
            assert events.said("ai") == ["Thanks for calling Acme."]
            assert mock.chat == []
            assert mock.tts[0].contexts[0].text == "Thanks for calling Acme."
        finally:
            await session.aclose()
            await asyncio.wait_for(task, TIMEOUT_S)


async def test_barge_in_cancels_tts_aborts_llm_and_cuts_history() -> None:
    long_text = " ".join(f"Sentence number {i} is rather long." for i in range(12))
    script = Script(
        replies=(Reply(long_text), Reply("Sure, go ahead.")),
        transcripts=("Stop please",),
        speed=2.0,
        think_ms=10,
    )
    async with running_cartesia_mock(pipeline(script, chat_word_ms=150)) as mock:
        async with session_on(mock) as (session, events, _):
            await events.wait(lambda: len(events.of(AudioOut)) >= 10)
            first_item = events.of(AudioOut)[0].item_id
            feed(session, caller_speech())
            await events.wait(lambda: events.of(SpeechStarted))
            cut_at = len(events.items)
            done = await events.wait(lambda: events.of(ReplyDone))
            assert done[0] == ReplyDone("cancelled", first_item)
            call = await mock.wait_connection()
            await mock.wait_for(lambda: call.tts.contexts[0].cancelled_at, TIMEOUT_S)
            assert any(r.event.get("cancel") for r in call.tts.received)
            await mock.wait_for(lambda: mock.chat[0].aborted, TIMEOUT_S)
            session.truncate(first_item, 300)
            await events.wait(lambda: len(events.of(ReplyDone)) == 2)
            late = [e for _, e in events.items[cut_at:] if isinstance(e, AudioOut)]
            assert all(e.item_id != first_item for e in late)
            history = mock.chat[1].messages
            cut = [m for m in history if m["role"] == "assistant"][0]["content"]
            assert cut.endswith(INTERRUPTED_MARK)
            assert long_text.startswith(cut.removesuffix(INTERRUPTED_MARK))
            assert len(cut) < len(long_text) // 2
            assert history[-1] == {"role": "user", "content": "Stop please"}
            assert events.said("ai")[-1] == "Sure, go ahead."


async def test_tool_call_round_trip() -> None:
    script = Script(
        replies=(Reply("Hi there, how can I help?"),),
        transcripts=("Where is my order?",),
        function_calls=(FunctionCallSpec("lookup", {"order": 42}, transcript_contains="order"),),
        function_reply="Your order {output} is on its way.",
        speed=20.0,
        think_ms=10,
    )
    async with running_cartesia_mock(pipeline(script)) as mock:
        async with session_on(mock) as (session, events, _):
            await events.wait(lambda: events.of(ReplyDone))
            feed(session, caller_speech())
            calls = await events.wait(lambda: events.of(ToolCall))
            assert calls[0].name == "lookup" and json.loads(calls[0].arguments) == {"order": 42}
            await events.wait(lambda: len(events.of(ReplyDone)) == 2)
            assert events.of(ReplyDone)[1].item_id is None  # a tool call only, nothing spoken
            session.tool_result(calls[0].call_id, "A-42")
            await events.wait(lambda: "Your order A-42 is on its way." in events.said("ai"))
            follow_up = mock.chat[-1].messages
            assert follow_up[-2]["tool_calls"][0]["id"] == calls[0].call_id
            assert follow_up[-1] == {
                "role": "tool",
                "tool_call_id": calls[0].call_id,
                "content": "A-42",
            }


async def test_inject_and_say() -> None:
    script = Script(
        replies=(Reply("Hi there."),),
        default_reply=Reply("Goodbye now."),
        inject_reply="Noted: {text}",
        speed=20.0,
        think_ms=10,
    )
    async with running_cartesia_mock(pipeline(script)) as mock:
        async with session_on(mock) as (session, events, _):
            await events.wait(lambda: events.of(ReplyDone))
            session.inject("The caller is a VIP.", "system")
            await events.wait(lambda: "Noted: The caller is a VIP." in events.said("ai"))
            assert mock.chat[1].messages[-1] == {
                "role": "system",
                "content": "The caller is a VIP.",
            }
            session.inject("What are your hours?", "user")
            await events.wait(lambda: len(mock.chat) == 3)
            assert mock.chat[2].messages[-1] == {"role": "user", "content": "What are your hours?"}
            await events.wait(lambda: len(events.of(ReplyDone)) == 3)
            session.say("Say goodbye.")
            await events.wait(lambda: len(events.of(ReplyDone)) == 4)
            assert events.said("ai")[-1] == "Goodbye now."
            assert mock.chat[3].trigger == "instructions"
            assert mock.chat[3].messages[-1]["content"] == "Say goodbye."


async def test_caller_audio_reaches_deepgram_unchanged_and_keepalive_holds_the_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stt_wire, "KEEPALIVE_INTERVAL_S", 0.15)
    async with running_cartesia_mock(pipeline(Script(), stt_idle_timeout_s=0.5)) as mock:
        async with session_on(mock, SessionSettings("x")) as (session, events, task):
            await events.wait(lambda: events.of(Ready))
            audio = caller_speech(100, 0)
            feed(session, audio)
            call = await mock.wait_connection()
            await mock.wait_for(lambda: len(call.stt.audio_in) == len(audio), TIMEOUT_S)
            assert bytes(call.stt.audio_in) == audio
            await mock.wait_for(lambda: call.stt.keepalives >= 6, TIMEOUT_S)
            assert not task.done() and call.stt.close_code is None
        # Closing the session ends the Deepgram stream politely: CloseStream, then 1000.
        code = await mock.wait_for(lambda: call.stt.close_code, TIMEOUT_S)
        assert any(r.type == "CloseStream" for r in call.stt.received)
        assert code == 1000 and call.tts.closed_at is not None


async def test_deepgram_idle_close_ends_the_session_retryably() -> None:
    async with running_cartesia_mock(pipeline(Script(), stt_idle_timeout_s=0.3)) as mock:
        async with session_on(mock, SessionSettings("x")) as (_, events, task):
            closed = await events.wait(lambda: events.of(Closed))
            assert closed[0].retryable and "1011" in closed[0].reason
            await asyncio.wait_for(task, TIMEOUT_S)


@pytest.mark.parametrize(
    ("faults", "link", "retryable"),
    [
        (Faults(close_after_s=0.3, close_code=1011), "tts", True),
        (Faults(close_after_s=0.3, close_code=1000), "tts", False),
        (Faults(close_after_s=0.3, close_code=1001), "stt", True),
        (Faults(malformed_after_s=0.3), "tts", True),
        (Faults(malformed_after_s=0.3, malformed_frame="{oops"), "stt", True),
    ],
)
async def test_link_failures_close_the_session(faults: Faults, link: str, retryable: bool) -> None:
    script = pipeline(Script(faults=faults), fault_links=(link,))
    async with running_cartesia_mock(script) as mock:
        async with session_on(mock, SessionSettings("x")) as (_, events, task):
            await events.wait(lambda: events.of(Ready))
            closed = await events.wait(lambda: events.of(Closed))
            assert closed[0].retryable is retryable
            await asyncio.wait_for(task, TIMEOUT_S)
            assert isinstance(events.items[-1][1], Closed)


async def test_idle_closed_tts_socket_is_reopened_once() -> None:
    script = pipeline(
        Script(
            default_reply=Reply("Still here."),
            faults=Faults(close_after_s=0.3, close_code=1000),
            think_ms=600,  # the socket closes while the greeting is being thought of
            speed=4.0,
        ),
        fault_links=("tts",),
        faulty_connections=1,
    )
    async with running_cartesia_mock(script) as mock:
        async with session_on(mock) as (session, events, task):
            done = await events.wait(lambda: events.of(ReplyDone))
            assert done[0].status == "failed"
            await mock.wait_for(lambda: len(mock.tts) == 2, TIMEOUT_S)
            session.inject("Are you there?", "user")
            await events.wait(lambda: "Still here." in events.said("ai"))
            assert mock.tts[1].contexts[0].text == "Still here."
            assert not task.done() and not events.of(Closed)


async def test_slow_start_still_becomes_ready() -> None:
    script = pipeline(Script(faults=Faults(handshake_delay_s=0.5), speed=20.0))
    async with running_cartesia_mock(script) as mock:
        started = time.monotonic()
        async with session_on(mock) as (_, events, _):
            await events.wait(lambda: events.of(Ready))
            assert time.monotonic() - started >= 0.5
            await events.wait(lambda: events.of(ReplyDone))


@pytest.mark.parametrize(
    ("keys", "what"),
    [
        ({"deepgram": "wrong"}, "deepgram-stt: HTTP 401"),
        ({"cartesia": "wrong"}, "cartesia-tts: HTTP 401"),
        ({"openai": "wrong"}, "HTTP 401"),
        ({"openai": None}, "missing API key for openai"),
    ],
)
async def test_auth_failures_are_final(keys: dict[str, str | None], what: str) -> None:
    async with running_cartesia_mock(pipeline(Script())) as mock:
        async with session_on(mock, keys=keys) as (_, events, task):
            closed = await events.wait(lambda: events.of(Closed))
            assert not closed[0].retryable and what in closed[0].reason
            await asyncio.wait_for(task, TIMEOUT_S)


async def test_unreachable_services_are_retryable() -> None:
    async with running_cartesia_mock(pipeline(Script())) as mock:
        config = make_config(mock)
    session = CartesiaPipelineSession(config, SessionSettings("x"))
    events = Events(session)
    await asyncio.wait_for(session.run(), TIMEOUT_S)
    closed = await events.wait(lambda: events.of(Closed))
    assert closed[0].retryable


def test_registry_builds_the_session_from_the_whole_config() -> None:
    session = REGISTRY["cartesia"](Config(), SessionSettings("x"))
    assert isinstance(session, CartesiaPipelineSession)
    assert session.capabilities.input_format.rate_hz == 8000


async def test_commands_never_raise_before_run() -> None:
    session = CartesiaPipelineSession(Config(), SessionSettings("x"))
    session.send_audio(b"\xff" * 160)
    session.inject("hello", "user")
    session.say("hi")
    session.truncate("nothing", 100)
    session.cancel_reply()
    session.tool_result("unknown", "{}")
    await session.aclose()
    events = Events(session)
    await session.run()
    closed = await events.wait(lambda: events.of(Closed))
    assert not closed[0].retryable
    assert not events.of(SpeechStopped)
