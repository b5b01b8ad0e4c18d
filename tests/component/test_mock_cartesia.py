"""The Cartesia pipeline mock (TTS + Deepgram STT + Chat Completions) driven by raw clients."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from sip4ai.audio.g711 import ulaw_decode, ulaw_encode
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

KEY = "test-key"
TTS_HEADERS = {"Cartesia-Version": "2026-03-01", "X-API-Key": KEY}
STT_QUERY = (
    "?model=nova-3&encoding=mulaw&sample_rate=8000&interim_results=true"
    "&endpointing=300&utterance_end_ms=1000&vad_events=true"
)


def gen(context_id: str, text: str, more: bool, **extra: Any) -> str:
    return json.dumps(
        {
            "context_id": context_id,
            "model_id": "sonic-3",
            "transcript": text,
            "voice": {"mode": "id", "id": "voice-1"},
            "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000},
            "continue": more,
            "add_timestamps": True,
            **extra,
        }
    )


async def read_until(ws: ClientConnection, kind: str, timeout_s: float = 5.0) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(timeout_s):
        while True:
            message = json.loads(await ws.recv())
            out.append(message)
            if message.get("type") == kind:
                return out


def audio_of(messages: list[Any], context_id: str) -> bytes:
    return b"".join(
        base64.b64decode(m["data"])
        for m in messages
        if m.get("type") == "chunk" and m["context_id"] == context_id
    )


# ---- TTS ----------------------------------------------------------------------------------------


async def test_tts_context_streams_tone_timestamps_and_done() -> None:
    script = Script(speed=20.0, ms_per_char=20)
    async with running_cartesia_mock(script) as mock:
        async with connect(mock.tts_url, additional_headers=TTS_HEADERS) as ws:
            await ws.send(gen("ctx-a", "Hello there. ", True))
            await ws.send(gen("ctx-a", "How are you?", True, flush=True))
            await ws.send(gen("ctx-a", "", False))
            messages = await read_until(ws, "done")
        audio = audio_of(messages, "ctx-a")
        assert len(audio) == 8 * 20 * (len("Hello there.") + len("How are you?"))
        assert abs(dominant_hz(ulaw_decode(audio), 8000) - 400) < 15
        stamps = [m["word_timestamps"] for m in messages if m["type"] == "timestamps"]
        words = [w for s in stamps for w in s["words"]]
        assert words == ["Hello", "there.", "How", "are", "you?"]
        starts = [t for s in stamps for t in s["start"]]
        ends = [t for s in stamps for t in s["end"]]
        assert starts[2] == pytest.approx(0.24) and ends[-1] == pytest.approx(0.48)
        chunk_at = [i for i, m in enumerate(messages) if m["type"] == "chunk"]
        first_stamp = next(i for i, m in enumerate(messages) if m["type"] == "timestamps")
        assert chunk_at[0] < first_stamp < chunk_at[-1]  # words follow their audio
        flush = [m for m in messages if m["type"] == "flush_done"]
        assert flush and flush[0]["flush_id"] == 1
        context = mock.tts[0].contexts[0]
        assert context.text == "Hello there. How are you?"
        assert context.continues == [True, True, False]
        assert context.first_audio_at is not None and context.done_at is not None


async def test_tts_second_context_has_the_next_tone_and_cancel_stops_it() -> None:
    script = Script(speed=1.0, ms_per_char=60)
    async with running_cartesia_mock(script) as mock:
        async with connect(mock.tts_url, additional_headers=TTS_HEADERS) as ws:
            await ws.send(gen("one", "Short one.", False))
            first = await read_until(ws, "done")
            await ws.send(gen("two", "A much longer sentence that takes a while to say.", True))
            second = await read_until(ws, "chunk")
            await ws.send(json.dumps({"context_id": "two", "cancel": True}))
            await mock.wait_for(lambda: mock.tts[0].contexts[1].cancelled_at)
            await asyncio.sleep(0.2)
            context = mock.tts[0].contexts[1]
            assert context.done_at is None and context.audio_ms_sent < 500
        assert abs(dominant_hz(ulaw_decode(audio_of(first, "one")), 8000) - 400) < 15
        assert abs(dominant_hz(ulaw_decode(audio_of(second, "two")), 8000) - 600) < 30


async def test_tts_duration_follows_the_planned_reply() -> None:
    script = Script(speed=50.0)
    async with running_cartesia_mock(script) as mock:
        mock.planned.append(Reply("Hello caller", duration_ms=1000, tone_hz=900))
        async with connect(mock.tts_url, additional_headers=TTS_HEADERS) as ws:
            await ws.send(gen("c", "Hello caller", False))
            messages = await read_until(ws, "done")
        audio = audio_of(messages, "c")
        assert len(audio) == 8000
        assert abs(dominant_hz(ulaw_decode(audio), 8000) - 900) < 15


async def test_tts_bad_requests_get_errors() -> None:
    async with running_cartesia_mock(Script(speed=50.0)) as mock:
        async with connect(mock.tts_url, additional_headers=TTS_HEADERS) as ws:
            await ws.send("{not json")
            assert (await read_until(ws, "error"))[-1]["status_code"] == 400
            bad = json.loads(gen("x", "Hi", False))
            bad["output_format"]["encoding"] = "mp3"
            await ws.send(json.dumps(bad))
            error = (await read_until(ws, "error"))[-1]
            assert error["context_id"] == "x" and "encoding" in error["message"]
            await ws.send(gen("y", "Hi there.", False))
            await read_until(ws, "done")
            await ws.send(gen("y", "More.", True))
            assert "already" in (await read_until(ws, "error"))[-1]["message"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-API-Key": KEY}, 400),
        ({"Cartesia-Version": "2026-03-01", "X-API-Key": "wrong"}, 401),
        ({"Cartesia-Version": "2026-03-01"}, 401),
    ],
)
async def test_tts_handshake_requires_version_and_key(headers: dict[str, str], status: int) -> None:
    async with running_cartesia_mock(Script()) as mock:
        with pytest.raises(websockets.InvalidStatus) as caught:
            async with connect(mock.tts_url, additional_headers=headers):
                pass
        assert caught.value.response.status_code == status


async def test_tts_bearer_key_and_faults() -> None:
    faults = Faults(close_after_s=0.3, close_code=1011, handshake_delay_s=0.2)
    script = PipelineScript(Script(faults=faults), fault_links=("tts",))
    async with running_cartesia_mock(script) as mock:
        headers = {"Cartesia-Version": "2026-03-01", "Authorization": f"Bearer {KEY}"}
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with connect(mock.tts_url, additional_headers=headers) as ws:
            assert loop.time() - started >= 0.2
            with pytest.raises(websockets.ConnectionClosed) as caught:
                await asyncio.wait_for(ws.recv(), 3)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1011


# ---- Deepgram STT -----------------------------------------------------------------------------


def speech(ms: int, silence_ms: int) -> bytes:
    return ulaw_encode(tone(300, ms, 8000, 0.5)) + ulaw_encode(np.zeros(8 * silence_ms, np.int16))


async def send_frames(ws: ClientConnection, audio: bytes) -> None:
    for i in range(0, len(audio), 160):
        await ws.send(audio[i : i + 160])


async def test_stt_turn_sequence() -> None:
    script = Script(transcripts=("I need help with my bill",))
    async with running_cartesia_mock(script) as mock:
        headers = {"Authorization": f"Token {KEY}"}
        async with connect(mock.stt_url + STT_QUERY, additional_headers=headers) as ws:
            await send_frames(ws, speech(800, 1600))
            messages = await read_until(ws, "UtteranceEnd")
        kinds = [m["type"] for m in messages]
        assert kinds[0] == "SpeechStarted"
        results = [m for m in messages if m["type"] == "Results"]
        interims = [r for r in results if not r["is_final"]]
        finals = [r for r in results if r["is_final"]]
        assert interims and interims[0]["channel"]["alternatives"][0]["transcript"] == "I"
        assert [f["speech_final"] for f in finals] == [False, True]
        text = " ".join(f["channel"]["alternatives"][0]["transcript"] for f in finals)
        assert text == "I need help with my bill"
        turn = mock.stt[0].user_turns[0]
        assert turn.speech_started_at is not None and turn.final_at is not None
        assert len(mock.stt[0].audio_in) == 8 * 2400


async def test_stt_close_stream_sends_metadata_and_closes_normally() -> None:
    async with running_cartesia_mock(Script()) as mock:
        headers = {"Authorization": f"Token {KEY}"}
        async with connect(mock.stt_url + STT_QUERY, additional_headers=headers) as ws:
            await send_frames(ws, speech(400, 0))
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = await read_until(ws, "Metadata")
            assert any(m.get("is_final") for m in messages if m["type"] == "Results")
            with pytest.raises(websockets.ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 3)


async def test_stt_idle_timeout_is_net0001_unless_kept_alive() -> None:
    script = PipelineScript(Script(), stt_idle_timeout_s=0.6)
    async with running_cartesia_mock(script) as mock:
        headers = {"Authorization": f"Token {KEY}"}
        async with connect(mock.stt_url + STT_QUERY, additional_headers=headers) as ws:
            for _ in range(4):
                await asyncio.sleep(0.3)
                await ws.send(json.dumps({"type": "KeepAlive"}))
            assert mock.stt[0].close_code is None
            with pytest.raises(websockets.ConnectionClosed) as caught:
                await asyncio.wait_for(ws.recv(), 3)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1011
        assert "net0001" in caught.value.rcvd.reason
        assert mock.stt[0].keepalives == 4


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        (STT_QUERY, {"Authorization": "Token wrong"}, 401),
        (STT_QUERY, {"Authorization": f"Bearer {KEY}"}, 401),
        ("?model=nova-3", {"Authorization": f"Token {KEY}"}, 400),
    ],
)
async def test_stt_handshake_checks(query: str, headers: dict[str, str], status: int) -> None:
    async with running_cartesia_mock(Script()) as mock:
        with pytest.raises(websockets.InvalidStatus) as caught:
            async with connect(mock.stt_url + query, additional_headers=headers):
                pass
        assert caught.value.response.status_code == status


# ---- Chat Completions -------------------------------------------------------------------------


async def post_chat(
    mock: CartesiaMock, messages: list[dict[str, Any]], key: str = KEY
) -> tuple[int, list[str]]:
    body = {"model": "gpt-4o-mini", "stream": True, "messages": messages}
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{mock.llm_base_url}/chat/completions", json=body, headers=headers
        ) as response:
            raw = (await response.read()).decode()
    if response.status != 200:
        return response.status, [raw]
    return 200, [line[6:] for line in raw.split("\n") if line.startswith("data: ")]


def content_of(payloads: list[str]) -> str:
    chunks = [json.loads(p) for p in payloads if p != "[DONE]"]
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


@pytest.fixture
async def chat_mock() -> AsyncIterator[CartesiaMock]:
    script = Script(
        replies=(Reply("Hello caller, how can I help?"),),
        default_reply=Reply("Anything else?"),
        function_calls=(FunctionCallSpec("lookup", {"id": 7}, transcript_contains="order"),),
        function_reply="Found: {output}",
        inject_reply="Noted: {text}",
        think_ms=10,
        speed=50.0,
    )
    async with running_cartesia_mock(script) as mock:
        yield mock


async def test_chat_streams_scripted_replies_by_history(chat_mock: CartesiaMock) -> None:
    system = {"role": "system", "content": "Be brief."}
    instruction = {"role": "system", "name": "instructions", "content": "Greet the caller"}
    status, payloads = await post_chat(chat_mock, [system, instruction])
    assert status == 200 and payloads[-1] == "[DONE]"
    assert content_of(payloads) == "Hello caller, how can I help?"
    said = {"role": "assistant", "content": "Hello caller, how can I help?"}
    _, payloads = await post_chat(chat_mock, [system, said, {"role": "user", "content": "Hi"}])
    assert content_of(payloads) == "Anything else?"
    _, payloads = await post_chat(chat_mock, [system, {"role": "system", "content": "VIP"}])
    assert content_of(payloads) == "Noted: VIP"
    assert [r.trigger for r in chat_mock.chat] == ["instructions", "turn", "inject"]


async def test_chat_tool_call_round_trip(chat_mock: CartesiaMock) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Where is my order?"}]
    _, payloads = await post_chat(chat_mock, messages)
    chunks = [json.loads(p) for p in payloads[:-1]]
    fragments = [
        call
        for c in chunks
        for call in c["choices"][0]["delta"].get("tool_calls") or ()
        if c.get("choices")
    ]
    assert fragments[0]["id"] == "call_mock1" and fragments[0]["function"]["name"] == "lookup"
    arguments = "".join(f["function"].get("arguments", "") for f in fragments)
    assert json.loads(arguments) == {"id": 7}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    call = {"id": "call_mock1", "type": "function", "function": {"name": "lookup"}}
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    status, body = await post_chat(chat_mock, messages)
    assert status == 400 and "call_mock1" in body[0]
    messages.append({"role": "tool", "tool_call_id": "call_mock1", "content": '{"ok":1}'})
    _, payloads = await post_chat(chat_mock, messages)
    assert content_of(payloads) == 'Found: {"ok":1}'


async def test_chat_rejects_a_bad_key(chat_mock: CartesiaMock) -> None:
    status, body = await post_chat(chat_mock, [{"role": "user", "content": "x"}], key="nope")
    assert status == 401
    assert json.loads(body[0])["error"]["code"] == "invalid_api_key"


async def test_chat_abort_is_recorded() -> None:
    script = Script(replies=(Reply("one two three four five six seven eight"),), speed=0.5)
    async with running_cartesia_mock(script) as mock:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{mock.llm_base_url}/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {KEY}"},
            ) as response:
                await response.content.readline()
                response.close()
        await mock.wait_for(lambda: mock.chat[0].aborted, 5)
        assert mock.chat[0].finished_at is None


# ---- process mode -----------------------------------------------------------------------------


async def test_process_mode_prints_listening_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testbed.mocks.mock_cartesia",
        "--port",
        "0",
        "--any-key",
        "--events-log",
        str(log),
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert line.startswith("LISTENING ws://127.0.0.1:")
        url = line.split()[1]
        headers = {"Cartesia-Version": "2026-03-01", "X-API-Key": "anything"}
        async with connect(f"{url}/tts/websocket", additional_headers=headers) as ws:
            await ws.send(gen("p", "Hi there.", False))
            await read_until(ws, "done")
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    kinds = [json.loads(line)["type"] for line in log.read_text().splitlines()]
    assert "chunk" in kinds and "timestamps" in kinds and kinds[-1] == "done"


def test_script_json_mixes_openai_script_and_pipeline_keys() -> None:
    script = PipelineScript.from_json(
        {"replies": ["Hi"], "speed": 2.0, "stt_idle_timeout_s": 3, "fault_links": ["stt"]}
    )
    assert script.script.replies == (Reply("Hi"),) and script.script.speed == 2.0
    assert script.stt_idle_timeout_s == 3 and script.fault_links == ("stt",)
    assert script.with_any_key().stt_key is None
    with pytest.raises(ValueError, match="unknown"):
        PipelineScript.from_json({"bogus": 1})
    with pytest.raises(ValueError, match="fault_links"):
        PipelineScript.from_json({"fault_links": ["llm"]})
