"""The Gemini Live mock against a raw websockets client on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from testbed.mocks.mock_gemini import (
    LIVE_PATH,
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
REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP: dict[str, Any] = {
    "setup": {
        "model": "models/gemini-live-test",
        "generationConfig": {"responseModalities": ["AUDIO"]},
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
    }
}


def fast(**fields: Any) -> Script:
    return Script(**{"think_ms": 10, "speed": 0.0, "ms_per_char": 5, "min_reply_ms": 100, **fields})


class Client:
    """Raw client: every server frame must be binary UTF-8 JSON (unless told otherwise)."""

    def __init__(self, ws: ClientConnection, binary: bool = True) -> None:
        self.ws = ws
        self.binary = binary
        self.seen: list[dict[str, Any]] = []

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT_S):
            raw = await self.ws.recv()
        assert isinstance(raw, bytes) == self.binary
        message: dict[str, Any] = json.loads(raw)
        self.seen.append(message)
        return message

    async def until(self, key: str, field: str | None = None) -> dict[str, Any]:
        """Read until a message with member ``key`` (and ``key.field`` truthy) arrives."""
        while True:
            message = await self.recv()
            if key in message and (field is None or message[key].get(field)):
                return message

    async def closed(self) -> int | None:
        with pytest.raises(ConnectionClosed):
            while True:
                await self.recv()
        return self.ws.close_code

    async def audio(self, pcm: bytes, rate_hz: int = 16000) -> None:
        data = base64.b64encode(pcm).decode()
        await self.send(
            {"realtimeInput": {"audio": {"mimeType": f"audio/pcm;rate={rate_hz}", "data": data}}}
        )


@asynccontextmanager
async def client(
    mock: GeminiMock,
    *,
    query_key: str | None = None,
    header_key: str | None = "test-key",
    binary: bool = True,
) -> AsyncIterator[Client]:
    url = mock.live_url + (f"?key={query_key}" if query_key else "")
    headers = {"x-goog-api-key": header_key} if header_key else {}
    async with connect(url, additional_headers=headers) as ws:
        yield Client(ws, binary)


def pcm(freq_hz: float, ms: int, rate_hz: int = 16000, amplitude: float = 0.5) -> bytes:
    return tone(freq_hz, ms, rate_hz, amplitude).astype("<i2").tobytes()


def model_audio(messages: list[dict[str, Any]]) -> bytes:
    out = b""
    for message in messages:
        turn = message.get("serverContent", {}).get("modelTurn", {})
        for part in turn.get("parts", []):
            assert part["inlineData"]["mimeType"] == "audio/pcm;rate=24000"
            out += base64.b64decode(part["inlineData"]["data"])
    return out


def said(messages: list[dict[str, Any]], kind: str = "outputTranscription") -> str:
    return "".join(
        m["serverContent"][kind]["text"] for m in messages if kind in m.get("serverContent", {})
    )


async def test_setup_complete_with_key_in_header_or_query() -> None:
    async with running_gemini_mock(GeminiScript(fast())) as mock:
        async with client(mock) as c:
            await c.send(SETUP)
            assert "setupComplete" in await c.recv()
            update = await c.recv()
            assert update["sessionResumptionUpdate"]["resumable"] is True
        async with client(mock, query_key="test-key", header_key=None) as c:
            await c.send({"setup": SETUP["setup"]})
            assert "setupComplete" in await c.recv()
        assert [r.key_source for r in mock.connections] == ["header", "query"]
        assert mock.connections[0].headers["x-goog-api-key"] == "<redacted>"
        assert mock.connections[0].path == LIVE_PATH


@pytest.mark.parametrize("key", ["wrong", None])
async def test_bad_or_missing_key_closes_1007(key: str | None) -> None:
    async with running_gemini_mock(GeminiScript(fast())) as mock:
        async with client(mock, header_key=key) as c:
            assert await c.closed() == 1007
            assert c.ws.close_reason == "API key not valid. Please pass a valid API key."


async def test_setup_must_come_first() -> None:
    async with running_gemini_mock(GeminiScript(fast())) as mock:
        async with client(mock) as c:
            await c.send({"realtimeInput": {"text": "hi"}})
            assert await c.closed() == 1007
        async with client(mock) as c:
            await c.ws.send("not json")
            assert await c.closed() == 1007


async def test_config_spelling_snake_case_and_text_frames() -> None:
    script = GeminiScript(fast(replies=(Reply("Hi", duration_ms=100),)), binary_frames=False)
    async with running_gemini_mock(script) as mock:
        async with client(mock, binary=False) as c:
            body = {
                "model": "models/x",
                "generation_config": {"response_modalities": ["AUDIO"]},
                "output_audio_transcription": {},
            }
            await c.send({"config": body})
            await c.until("setupComplete")
            await c.send({"realtime_input": {"text": "Greet the caller"}})
            await c.until("serverContent", "turnComplete")
        conn = mock.last
        assert conn.setup_spelling == "config"
        assert conn.setup is not None and "outputAudioTranscription" in conn.setup
        assert conn.text_inputs == ["Greet the caller"]
        assert said(c.seen) == "Hi"


async def test_unknown_model_closes_1008() -> None:
    script = GeminiScript(fast(), known_models=("models/known",))
    async with running_gemini_mock(script) as mock, client(mock) as c:
        await c.send(SETUP)
        assert await c.closed() == 1008
        assert "is not found for API version v1beta" in (c.ws.close_reason or "")


async def test_text_turn_streams_24k_tone_with_transcription() -> None:
    script = GeminiScript(fast(replies=(Reply("Hello there caller", duration_ms=400),)))
    async with running_gemini_mock(script) as mock, client(mock) as c:
        await c.send(SETUP)
        await c.until("setupComplete")
        await c.send({"realtimeInput": {"text": "Say hello"}})
        done = await c.until("serverContent", "turnComplete")
        assert done["usageMetadata"]["totalTokenCount"] > 0
        audio = np.frombuffer(model_audio(c.seen), dtype="<i2")
        assert audio.size == 24000 * 400 // 1000
        assert abs(dominant_hz(audio, 24000) - 400) < 10
        assert said(c.seen) == "Hello there caller"
        assert any(m.get("serverContent", {}).get("generationComplete") for m in c.seen)
        record = mock.last.responses[0]
        assert record.first_audio_at is not None and record.status == "completed"


async def test_bundled_messages_carry_turn_complete_with_audio() -> None:
    script = GeminiScript(fast(replies=(Reply("One two", duration_ms=200),)), bundled=True)
    async with running_gemini_mock(script) as mock, client(mock) as c:
        await c.send(SETUP)
        await c.until("setupComplete")
        await c.send({"realtimeInput": {"text": "Go"}})
        last = await c.until("serverContent", "turnComplete")
        assert "modelTurn" in last["serverContent"]
        assert said(c.seen) == "One two"


@pytest.mark.parametrize("rate_hz", [16000, 8000])
async def test_vad_turn_transcribes_and_replies(rate_hz: int) -> None:
    script = GeminiScript(
        fast(replies=(Reply("Sure", duration_ms=200),), transcripts=("What time is it?",))
    )
    async with running_gemini_mock(script) as mock, client(mock) as c:
        await c.send(SETUP)
        await c.until("setupComplete")
        speech = pcm(300, 600, rate_hz) + bytes(2 * rate_hz)
        step = rate_hz * 2 // 50
        for i in range(0, len(speech), step):
            await c.audio(speech[i : i + step], rate_hz)
        await c.until("serverContent", "turnComplete")
        assert said(c.seen, "inputTranscription") == "What time is it?"
        finished = [
            m
            for m in c.seen
            if m.get("serverContent", {}).get("inputTranscription", {}).get("finished")
        ]
        assert len(finished) == 1
        conn = mock.last
        assert conn.input_rate_hz == rate_hz
        assert len(conn.audio_in) == len(speech)
        assert conn.user_turns[0].transcript == "What time is it?"
        assert conn.responses[0].trigger == "turn"


async def test_caller_speech_interrupts_the_reply() -> None:
    script = GeminiScript(
        Script(replies=(Reply("A long reply", duration_ms=4000),), think_ms=10, speed=1.0)
    )
    async with running_gemini_mock(script) as mock, client(mock) as c:
        await c.send(SETUP)
        await c.until("setupComplete")
        await c.send({"realtimeInput": {"text": "Talk"}})
        await c.until("serverContent", "modelTurn")
        await c.audio(pcm(300, 200))
        interrupted = await c.until("serverContent", "interrupted")
        assert interrupted == {"serverContent": {"interrupted": True}}
        assert (await c.recv()) == {"serverContent": {"turnComplete": True}}
        conn = mock.last
        assert conn.responses[0].status == "cancelled"
        assert conn.user_turns[0].interrupted_response_id == conn.responses[0].response_id
        sent_ms = conn.responses[0].audio_ms_sent
        assert sent_ms < 4000
        await c.audio(bytes(640))  # no more audio of the cancelled reply follows
        await asyncio.sleep(0.1)
        assert conn.responses[0].audio_ms_sent == sent_ms


async def test_tool_call_waits_for_response_and_is_cancelled_by_barge_in() -> None:
    calls = (
        FunctionCallSpec("get_time", {"tz": "UTC"}, transcript_contains="time", call_id="fc_1"),
        FunctionCallSpec("lookup", after_user_turns=2),
    )
    script = GeminiScript(fast(function_calls=calls, transcripts=("What time?", "Look it up")))
    async with running_gemini_mock(script) as mock, client(mock) as c:
        await c.send(SETUP)
        await c.until("setupComplete")
        await c.audio(pcm(300, 400) + bytes(32000))
        call = await c.until("toolCall")
        assert call == {
            "toolCall": {
                "functionCalls": [{"id": "fc_1", "name": "get_time", "args": {"tz": "UTC"}}]
            }
        }
        response = {"id": "fc_1", "name": "get_time", "response": {"time": "noon"}}
        await c.send({"tool_response": {"functionResponses": [response]}})
        await c.until("serverContent", "turnComplete")
        assert said(c.seen).startswith('{"time": "noon"}')
        await c.audio(pcm(300, 400) + bytes(32000))
        second = await c.until("toolCall")
        call_id = second["toolCall"]["functionCalls"][0]["id"]
        await c.audio(pcm(300, 200))
        cancel = await c.until("toolCallCancellation")
        assert cancel["toolCallCancellation"]["ids"] == [call_id]
        conn = mock.last
        assert [(f.call_id, f.cancelled) for f in conn.function_calls] == [
            ("fc_1", False),
            (call_id, True),
        ]
        assert conn.function_outputs[0].call_id == "fc_1"


async def test_go_away_then_resumption_continues_the_conversation() -> None:
    replies = (Reply("First", duration_ms=100), Reply("Second", duration_ms=100))
    script = GeminiScript(fast(replies=replies), connection_lifetime_s=0.6, go_away_notice_s=0.3)
    async with running_gemini_mock(script) as mock:
        async with client(mock) as c:
            await c.send(SETUP)
            await c.until("setupComplete")
            await c.send({"realtimeInput": {"text": "Go"}})
            await c.until("serverContent", "turnComplete")
            handle = (await c.until("sessionResumptionUpdate"))["sessionResumptionUpdate"][
                "newHandle"
            ]
            go_away = await c.until("goAway")
            assert go_away == {"goAway": {"timeLeft": "0.3s"}}
            assert await c.closed() == 1001
        async with client(mock) as c:
            await c.send({"setup": {**SETUP["setup"], "sessionResumption": {"handle": handle}}})
            await c.until("setupComplete")
            await c.send({"realtimeInput": {"text": "Go on"}})
            await c.until("serverContent", "turnComplete")
            audio = np.frombuffer(model_audio(c.seen), dtype="<i2")
            assert abs(dominant_hz(audio, 24000) - 600) < 10  # the second reply's tone
            assert said(c.seen) == "Second"
        assert mock.connections[1].resumed_from == handle
        assert mock.connections[0].go_away_at is not None


@pytest.mark.parametrize("reject", [False, True])
async def test_bad_resumption_handle_closes_1008(reject: bool) -> None:
    script = GeminiScript(fast(), reject_resumption=reject)
    async with running_gemini_mock(script) as mock:
        handle = "unknown"
        if reject:
            async with client(mock) as c:
                await c.send(SETUP)
                handle = (await c.until("sessionResumptionUpdate"))["sessionResumptionUpdate"][
                    "newHandle"
                ]
        async with client(mock) as c:
            await c.send({"setup": {**SETUP["setup"], "sessionResumption": {"handle": handle}}})
            assert await c.closed() == 1008


@pytest.mark.parametrize("code", [1007, 1008, 1011])
async def test_close_after_setup_on_demand(code: int) -> None:
    async with running_gemini_mock(GeminiScript(fast(), close_after_setup=code)) as mock:
        async with client(mock) as c:
            await c.send(SETUP)
            await c.until("setupComplete")
            assert await c.closed() == code
        assert await mock.wait_for(lambda: mock.last.close_code == code, TIMEOUT_S)


async def test_close_on_tool_response_and_malformed_frame_faults() -> None:
    calls = (FunctionCallSpec("f", after_user_turns=1, call_id="fc_9"),)
    script = GeminiScript(fast(function_calls=calls), close_after_tool_response=1011)
    async with running_gemini_mock(script) as mock, client(mock) as c:
        await c.send(SETUP)
        await c.audio(pcm(300, 400) + bytes(32000))
        await c.until("toolCall")
        await c.send(
            {"toolResponse": {"functionResponses": [{"id": "fc_9", "name": "f", "response": {}}]}}
        )
        assert await c.closed() == 1011
    faults = Faults(malformed_after_s=0.05, malformed_frame="{oops")
    async with running_gemini_mock(GeminiScript(fast(faults=faults))) as mock, client(mock) as c:
        async with asyncio.timeout(TIMEOUT_S):
            raw = await c.ws.recv()
        assert raw == b"{oops"


async def test_process_mode_prints_listening_and_stops_on_sigterm(tmp_path: Path) -> None:
    script_file = tmp_path / "script.json"
    script_file.write_text(
        json.dumps({"replies": ["From a file."], "think_ms": 0, "speed": 0, "bundled": True})
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testbed.mocks.mock_gemini",
        "--port",
        "0",
        "--any-key",
        "--script",
        str(script_file),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(TIMEOUT_S * 2):
            line = (await proc.stdout.readline()).decode().strip()
        assert line.startswith("LISTENING ws://127.0.0.1:")
        url = line.split(" ", 1)[1] + LIVE_PATH + "?key=anything"
        async with connect(url) as ws:
            c = Client(ws)
            await c.send(SETUP)
            await c.until("setupComplete")
            await c.send({"realtimeInput": {"text": "Hi"}})
            await c.until("serverContent", "turnComplete")
        assert said(c.seen) == "From a file."
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT_S):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_echo_mode_returns_the_input_at_24k() -> None:
    async with running_gemini_mock(GeminiScript(fast(mode="echo"))) as mock, client(mock) as c:
        await c.send(SETUP)
        await c.until("setupComplete")
        await c.audio(pcm(1000, 200))
        await c.until("serverContent", "modelTurn")
        echoed = np.frombuffer(model_audio(c.seen), dtype="<i2")
        assert echoed.size == 24000 * 200 // 1000
        assert abs(dominant_hz(echoed, 24000) - 1000) < 10
        assert mock.last.responses == []
