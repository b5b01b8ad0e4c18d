"""The Deepgram Voice Agent mock against a raw websockets client on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from sip4ai.audio.g711 import ulaw_decode, ulaw_encode
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

TIMEOUT_S = 5.0 * float(os.environ.get("SIP4AI_TEST_TIMEOUT_FACTOR", "1"))
REPO_ROOT = Path(__file__).resolve().parents[2]

SETTINGS: dict[str, Any] = {
    "type": "Settings",
    "tags": ["sip4ai"],
    "audio": {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    },
    "agent": {
        "listen": {"provider": {"type": "deepgram", "version": "v1", "model": "nova-3"}},
        "think": {
            "provider": {"type": "open_ai", "model": "gpt-4o-mini"},
            "prompt": "Be brief.",
            "functions": [{"name": "transfer_call", "description": "x", "parameters": {}}],
        },
        "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
    },
}


def settings(greeting: str | None = None, **agent: Any) -> dict[str, Any]:
    message = copy.deepcopy(SETTINGS)
    if greeting is not None:
        message["agent"]["greeting"] = greeting
    message["agent"].update(agent)
    return message


def fast(**fields: Any) -> DeepgramScript:
    return DeepgramScript(**{"think_ms": 20, "speed": 0.0, **fields})


def speech(ms: int = 400, silence_ms: int = 700) -> bytes:
    """Caller audio the mock's VAD hears as one utterance, as mu-law."""
    pcm = np.concatenate([tone(300, ms, 8000, 0.5), np.zeros(8 * silence_ms, dtype=np.int16)])
    return ulaw_encode(pcm)


class Client:
    """Reads the mock's frames; binary audio is kept per AgentStartedSpeaking."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.replies: list[bytearray] = []
        self.stray = bytearray()

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    async def until(self, kind: str) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                frame = await self.ws.recv()
                if isinstance(frame, bytes):
                    (self.replies[-1] if self.replies else self.stray).extend(frame)
                    continue
                message = json.loads(frame)
                self.messages.append(message)
                if message["type"] == "AgentStartedSpeaking":
                    self.replies.append(bytearray())
                if message["type"] == "UserStartedSpeaking":
                    self.replies.append(bytearray())  # what arrives now is stale
                if message["type"] == kind:
                    return dict(message)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def audio(self, data: bytes) -> None:
        for i in range(0, len(data), 160):
            await self.ws.send(data[i : i + 160])


@contextlib.asynccontextmanager
async def client(
    mock: DeepgramMock, key: str = "test-key", first: dict[str, Any] | None = None
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Token {key}"}
    async with connect(mock.agent_url, additional_headers=headers) as ws:
        c = Client(ws)
        await c.until("Welcome")
        if first is not None:
            await c.send(first)
        yield c


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def hz(audio: bytes | bytearray) -> float:
    return dominant_hz(ulaw_decode(bytes(audio)), 8000)


# --- connect, auth, Settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Token wrong"}, {}, {"Authorization": "Bearer"}],
)
async def test_bad_key_gets_401_with_deepgram_body(headers: dict[str, str]) -> None:
    async with running_deepgram_mock(fast()) as mock:
        with pytest.raises(InvalidStatus) as info:
            async with connect(mock.agent_url, additional_headers=headers):
                pass
        assert info.value.response.status_code == 401
        assert json.loads(info.value.response.body)["err_code"] == "INVALID_AUTH"


async def test_key_via_bearer_or_subprotocol_and_wrong_path() -> None:
    async with running_deepgram_mock(fast()) as mock:
        async with connect(mock.agent_url, additional_headers={"Authorization": "Bearer test-key"}):
            pass
        async with connect(
            mock.agent_url, subprotocols=[Subprotocol("token"), Subprotocol("test-key")]
        ):
            pass
        with pytest.raises(InvalidStatus) as info:
            async with connect(
                f"{mock.url}/agent", additional_headers={"Authorization": "Token test-key"}
            ):
                pass
        assert info.value.response.status_code == 404


async def test_auth_failure_after_upgrade_when_scripted() -> None:
    async with running_deepgram_mock(fast(auth_failure="ws")) as mock:
        async with connect(mock.agent_url, additional_headers={"Authorization": "Token no"}) as ws:
            error = json.loads(await ws.recv())
            assert error["code"] == "INVALID_AUTH"
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008


@pytest.mark.parametrize(
    ("first", "why"),
    [
        ({"type": "KeepAlive"}, "KeepAlive before Settings"),
        ({"type": "Settings", "audio": {}, "agent": {}, "colour": "red"}, "colour: unknown field"),
        (
            settings(think={"provider": {"type": "open_ai", "model": "m", "top_k": 3}}),
            "agent.think.provider.top_k: unknown field",
        ),
        (
            settings(speak={"provider": {"type": "deepgramm", "model": "m"}}),
            "agent.speak.provider.type: unknown variant",
        ),
        (
            {**SETTINGS, "audio": {"input": {"encoding": "ulaw", "sample_rate": 8000}}},
            "audio.input.encoding: unknown variant",
        ),
        (settings(greeting=None, listen={"model": "nova-3"}), "agent.listen.model: unknown field"),
        ({**SETTINGS, "agent": None}, "agent: invalid type"),
    ],
)
async def test_first_message_must_be_valid_settings(first: dict[str, Any], why: str) -> None:
    async with running_deepgram_mock(fast()) as mock:
        async with client(mock, first=first) as c:
            error = await c.until("Error")
            assert error["code"] == "UNPARSABLE_CLIENT_MESSAGE"
            assert "did not match any of the formats" in error["description"]
            with pytest.raises(ConnectionClosed):
                await c.until("never")
        conn = mock.last
        await mock.wait_for(lambda: conn.closed_at)
        assert why in (conn.settings_error or "")
        assert conn.close_code == 1000


async def test_binary_audio_before_settings_is_rejected() -> None:
    async with running_deepgram_mock(fast()) as mock:
        async with client(mock) as c:
            await c.audio(b"\xff" * 160)
            assert (await c.until("Error"))["code"] == "UNPARSABLE_CLIENT_MESSAGE"


async def test_valid_settings_are_applied_and_recorded() -> None:
    alt = settings(think=[{"provider": {"type": "anthropic", "model": "c"}, "prompt": "P"}])
    alt["flags"] = {"history": False}
    alt["agent"]["context"] = {"messages": [{"type": "History", "role": "user", "content": "x"}]}
    async with running_deepgram_mock(fast()) as mock:
        async with client(mock, first=alt) as c:
            await c.until("SettingsApplied")
        conn = mock.last
        assert conn.applied is not None
        assert (conn.applied.think_provider, conn.applied.prompt) == ("anthropic", "P")
        assert conn.applied.listen_model == "nova-3" and not conn.applied.history


# --- greeting, turns, barge-in ----------------------------------------------------------------


async def test_greeting_is_the_first_reply() -> None:
    script = fast(replies=(Reply("ignored text", duration_ms=500), Reply("Second")))
    async with running_deepgram_mock(script) as mock:
        async with client(mock, first=settings("Hello, Ada here.")) as c:
            await c.until("AgentAudioDone")
            assert c.types()[1:6] == [
                "SettingsApplied",
                "ConversationText",
                "History",
                "AgentStartedSpeaking",
                "AgentAudioDone",
            ]
            assert c.messages[2] == {
                "type": "ConversationText",
                "role": "assistant",
                "content": "Hello, Ada here.",
            }
            assert len(c.replies[0]) == 4000  # 500 ms of mu-law: replies[0]'s duration
            assert abs(hz(c.replies[0]) - 400) < 20
        reply = mock.last.replies[0]
        assert (reply.trigger, reply.text, reply.status) == (
            "greeting",
            "Hello, Ada here.",
            "completed",
        )
        assert reply.first_audio_at is not None


async def test_caller_turn_gets_transcript_thinking_and_reply() -> None:
    script = fast(replies=(Reply("It is noon", duration_ms=300),), transcripts=("What time?",))
    async with running_deepgram_mock(script) as mock:
        async with client(mock, first=settings()) as c:
            await c.until("SettingsApplied")
            await c.audio(speech())
            await c.until("AgentAudioDone")
            texts = [
                (m["role"], m["content"]) for m in c.messages if m["type"] == "ConversationText"
            ]
            assert texts == [("user", "What time?"), ("assistant", "It is noon")]
            order = [t for t in c.types() if t not in ("History",)]
            assert order[2:] == [
                "UserStartedSpeaking",
                "ConversationText",
                "AgentThinking",
                "ConversationText",
                "AgentStartedSpeaking",
                "AgentAudioDone",
            ]
            assert abs(hz(c.replies[-1]) - 400) < 20  # the first reply with audio
        turn = mock.last.user_turns[0]
        assert turn.transcript == "What time?" and turn.speech_started_at is not None


@pytest.mark.parametrize("stale_ms", [0, 200])
async def test_barge_in_cuts_the_reply(stale_ms: int) -> None:
    script = DeepgramScript(
        replies=(Reply("A long greeting", duration_ms=4000), Reply("Yes?", duration_ms=200)),
        think_ms=10,
        speed=2.0,
        stale_audio_ms=stale_ms,
    )
    async with running_deepgram_mock(script) as mock:
        async with client(mock, first=settings("A long greeting")) as c:
            await c.until("AgentStartedSpeaking")
            await c.audio(speech(300, 0))
            await c.until("UserStartedSpeaking")
            await c.audio(bytes([0xFF]) * 8 * 700)
            await c.until("AgentAudioDone")  # of the answer: the cut reply has none
            assert c.types().count("AgentAudioDone") == 1
            greeting, stale, answer = c.replies[0], c.replies[1], c.replies[2]
            assert 0 < len(greeting) < 32000
            assert len(stale) == 8 * stale_ms
            assert abs(hz(answer) - 600) < 20
        conn = mock.last
        assert conn.replies[0].status == "interrupted"
        assert conn.replies[0].stale_bytes_sent == 8 * stale_ms
        assert conn.user_turns[0].interrupted_reply == 1


# --- functions, injections --------------------------------------------------------------------


async def test_client_side_function_waits_for_the_response() -> None:
    call = FunctionCallSpec("transfer_call", {"to": "sales"}, after_user_turns=1, call_id="fc_9")
    script = fast(function_calls=(call,), function_reply="Done: {output}")
    async with running_deepgram_mock(script) as mock:
        async with client(mock, first=settings()) as c:
            await c.until("SettingsApplied")
            await c.audio(speech())
            request = await c.until("FunctionCallRequest")
            assert request["functions"] == [
                {
                    "id": "fc_9",
                    "name": "transfer_call",
                    "arguments": '{"to": "sales"}',
                    "client_side": True,
                }
            ]
            await c.send(
                {"type": "FunctionCallResponse", "id": "nope", "name": "x", "content": "?"}
            )
            await c.send(
                {
                    "type": "FunctionCallResponse",
                    "id": "fc_9",
                    "name": "transfer_call",
                    "content": "ok",
                }
            )
            await c.until("AgentAudioDone")
            assert c.messages[-4]["content"] == "Done: ok"
        responses = mock.last.function_responses
        assert [(r.id, r.known) for r in responses] == [("nope", False), ("fc_9", True)]


async def test_server_side_function_is_answered_by_the_server() -> None:
    call = FunctionCallSpec("lookup", after_user_turns=1)
    script = fast(function_calls=(call,), server_side_functions=("lookup",))
    async with running_deepgram_mock(script) as mock:
        async with client(mock, first=settings()) as c:
            await c.until("SettingsApplied")
            await c.audio(speech())
            request = await c.until("FunctionCallRequest")
            assert request["functions"][0]["client_side"] is False
            response = await c.until("FunctionCallResponse")
            assert response["id"] == request["functions"][0]["id"]
            await c.until("AgentAudioDone")


@pytest.mark.parametrize("key", ["message", "content"])
async def test_inject_agent_message_is_spoken_or_refused(key: str) -> None:
    script = fast(speed=2.0, replies=(Reply("Hi", duration_ms=2000),))
    async with running_deepgram_mock(script) as mock:
        async with client(mock, first=settings("Hi")) as c:
            await c.until("AgentStartedSpeaking")
            await c.send({"type": "InjectAgentMessage", key: "Please hold."})
            assert "Invalid" not in (await c.until("InjectionRefused"))["message"]
            await c.send({"type": "InjectAgentMessage", key: "Please hold.", "behavior": "queue"})
            await c.until("AgentAudioDone")
            await c.until("AgentAudioDone")
            spoken = [m["content"] for m in c.messages if m["type"] == "ConversationText"]
            assert spoken == ["Hi", "Please hold."]
        assert [(i.kind, i.accepted) for i in mock.last.injects] == [
            ("agent", False),
            ("agent", True),
        ]


async def test_inject_user_message_and_update_prompt() -> None:
    script = fast(replies=(Reply("Bye now", duration_ms=200),))
    async with running_deepgram_mock(script) as mock:
        async with client(mock, first=settings()) as c:
            await c.until("SettingsApplied")
            await c.send({"type": "UpdatePrompt", "prompt": "Be brief. VIP caller."})
            await c.until("PromptUpdated")
            await c.send({"type": "InjectUserMessage", "content": "Say goodbye."})
            await c.until("AgentAudioDone")
            texts = [
                (m["role"], m["content"]) for m in c.messages if m["type"] == "ConversationText"
            ]
            assert texts == [("user", "Say goodbye."), ("assistant", "Bye now")]
        conn = mock.last
        assert conn.prompt == "Be brief. VIP caller."
        assert [i.kind for i in conn.injects] == ["prompt", "user"]


# --- timeouts, pacing, faults, process --------------------------------------------------------


async def test_client_message_timeout_without_audio() -> None:
    async with running_deepgram_mock(fast(client_message_timeout_s=0.3)) as mock:
        async with client(mock, first=settings()) as c:
            error = await c.until("Error")
            assert error["code"] == "CLIENT_MESSAGE_TIMEOUT"
            assert "waited too long" in error["description"]
            with pytest.raises(ConnectionClosed):
                await c.until("never")


@pytest.mark.parametrize("counts", [True, False])
async def test_keepalive_resets_the_timeout_unless_scripted_not_to(counts: bool) -> None:
    script = fast(client_message_timeout_s=1.0, keepalive_counts=counts)
    async with running_deepgram_mock(script) as mock:
        async with client(mock, first=settings()) as c:
            await c.until("SettingsApplied")
            with contextlib.suppress(ConnectionClosed):
                for _ in range(8):
                    await c.send({"type": "KeepAlive"})
                    await asyncio.sleep(0.2)
            conn = mock.last
            assert len(conn.keepalives) == 8 or not counts
            assert ("CLIENT_MESSAGE_TIMEOUT" in conn.errors_sent()) is not counts


async def test_audio_before_settings_applied_is_not_processed() -> None:
    async with running_deepgram_mock(fast(settings_delay_ms=300)) as mock:
        async with client(mock, first=settings()) as c:
            await c.audio(speech())
            await c.until("SettingsApplied")
            conn = mock.last
            assert conn.audio_before_applied == len(speech())
            assert conn.user_turns == []


async def test_reply_audio_is_paced_at_speed() -> None:
    script = DeepgramScript(replies=(Reply("Hi", duration_ms=800),), speed=4.0, think_ms=0)
    async with running_deepgram_mock(script) as mock:
        async with client(mock, first=settings("Hi")) as c:
            await c.until("AgentAudioDone")
        reply = mock.last.replies[0]
        assert reply.first_audio_at is not None and reply.done_at is not None
        assert reply.done_at - reply.first_audio_at >= 0.15  # 800 ms at 4x, less one chunk


async def test_echo_mode_returns_the_callers_audio() -> None:
    async with running_deepgram_mock(fast(mode="echo")) as mock:
        async with client(mock, first=settings("ignored")) as c:
            await c.until("SettingsApplied")
            data = ulaw_encode(tone(1000, 200, 8000, 0.5))
            await c.audio(data)
            await c.until("AgentStartedSpeaking")
            async with asyncio.timeout(TIMEOUT_S):
                while len(c.replies[0]) < len(data):
                    frame = await c.ws.recv()
                    assert isinstance(frame, bytes)
                    c.replies[0].extend(frame)
            assert bytes(c.replies[0]) == data


async def test_faults_slow_handshake_close_code_and_malformed_frame() -> None:
    faults = Faults(
        handshake_delay_s=0.2, malformed_after_s=0.1, close_after_s=0.3, close_code=1011
    )
    async with running_deepgram_mock(fast(faults=faults)) as mock:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with client(mock, first=settings()) as c:
            assert loop.time() - start >= 0.2
            raw: list[str | bytes] = []
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT_S):
                    while True:
                        raw.append(await c.ws.recv())
            assert any(isinstance(r, str) and not is_json(r) for r in raw)
            assert c.ws.close_code == 1011


async def test_process_mode_prints_listening_and_stops_on_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"replies": [{"text": "Hi", "duration_ms": 200}], "speed": 0}))
    log = tmp_path / "events.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testbed.mocks.mock_deepgram", "--port", "0", "--any-key",
        "--script", str(script), "--events-log", str(log),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)).decode()
        assert line.startswith("LISTENING ws://127.0.0.1:")
        url = line.split()[1] + "/v1/agent/converse"
        async with connect(url, additional_headers={"Authorization": "Token anything"}) as ws:
            c = Client(ws)
            await c.until("Welcome")
            await c.send(settings("Hi"))
            await c.until("AgentAudioDone")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT_S) == 0
        assert "SettingsApplied" in log.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
