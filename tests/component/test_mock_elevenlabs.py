"""The ElevenLabs Agents mock against a raw websockets client (and aiohttp) on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sip4ai.audio.g711 import ulaw_decode, ulaw_encode
from testbed.mocks.mock_elevenlabs import (
    AgentSettings,
    ElevenLabsMock,
    Faults,
    FunctionCallSpec,
    Reply,
    Script,
    dominant_hz,
    running_elevenlabs_mock,
    script_from_json,
    tone,
)


pytestmark = pytest.mark.component

TIMEOUT_S = 5.0 * float(os.environ.get("SIP4AI_TEST_TIMEOUT_FACTOR", "1"))
REPO_ROOT = Path(__file__).resolve().parents[2]
INIT: dict[str, Any] = {"type": "conversation_initiation_client_data"}


def fast(**fields: Any) -> Script:
    return Script(**{"think_ms": 20, "speed": 0.0, **fields})


class Client:
    """A raw client: keeps every server message; ``next`` waits for one of a type."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self._cursor = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def next(self, kind: str) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                while self._cursor < len(self.seen):
                    message = self.seen[self._cursor]
                    self._cursor += 1
                    if message["type"] == kind:
                        return message
                self.seen.append(json.loads(await self.ws.recv()))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.seen if m["type"] == kind]

    async def audio_until(self, n_bytes: int) -> bytes:
        while len(self.audio()) < n_bytes:
            await self.next("audio")
        return self.audio()

    def audio(self) -> bytes:
        return b"".join(
            base64.b64decode(m["audio_event"]["audio_base_64"]) for m in self.of("audio")
        )


def url(mock: ElevenLabsMock, agent_id: str = "agent_1") -> str:
    return f"{mock.base_url}?agent_id={agent_id}"


async def speak(client: Client, ms: int, hz: float = 300.0) -> None:
    """Caller speech (a loud tone) then silence, as 20 ms mu-law chunks."""
    audio = ulaw_encode(tone(hz, ms, 8000, amplitude=0.5)) + b"\xff" * 8 * 700
    for i in range(0, len(audio), 160):
        chunk = base64.b64encode(audio[i : i + 160]).decode()
        await client.ws.send(json.dumps({"user_audio_chunk": chunk}))


async def test_initiation_metadata_and_first_message_with_increasing_event_ids() -> None:
    async with running_elevenlabs_mock(fast(replies=(Reply("Scripted", duration_ms=400),))) as mock:
        async with connect(url(mock)) as ws:
            client = Client(ws)
            override = {"agent": {"first_message": "Hi there!", "prompt": {"prompt": "Be kind."}}}
            await client.send({**INIT, "conversation_config_override": override})
            meta = await client.next("conversation_initiation_metadata")
            body = meta["conversation_initiation_metadata_event"]
            assert body["agent_output_audio_format"] == "ulaw_8000"
            assert body["user_input_audio_format"] == "ulaw_8000"
            response = await client.next("agent_response")
            assert response["agent_response_event"]["agent_response"] == "Hi there!"
            audio = await client.audio_until(3200)
            conn = mock.last
        ids = [m["audio_event"]["event_id"] for m in client.of("audio")]
        assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] > 0
        samples = ulaw_decode(audio)
        assert len(samples) == 3200 and abs(dominant_hz(samples, 8000) - 400) < 10
        assert conn.overrides == override and conn.replies[0].text == "Hi there!"


async def test_pcm_16000_agent_streams_pcm16() -> None:
    agent = AgentSettings(output_format="pcm_16000", input_format="pcm_16000")
    async with running_elevenlabs_mock(fast(replies=(Reply("Hi", duration_ms=200),)), agent) as m:
        async with connect(url(m)) as ws:
            client = Client(ws)
            await client.send(INIT)
            meta = await client.next("conversation_initiation_metadata")
            assert meta["conversation_initiation_metadata_event"]["agent_output_audio_format"] == (
                "pcm_16000"
            )
            audio = await client.audio_until(6400)
        samples = np.frombuffer(audio, dtype="<i2")
        assert len(samples) == 3200 and abs(dominant_hz(samples, 16000) - 400) < 10


async def test_override_not_allowed_closes_1008() -> None:
    agent = AgentSettings(allowed_overrides=("agent.first_message",))
    async with running_elevenlabs_mock(fast(), agent) as mock:
        async with connect(url(mock)) as ws:
            client = Client(ws)
            override = {"agent": {"first_message": "Hi", "prompt": {"prompt": "x"}}}
            await client.send({**INIT, "conversation_config_override": override})
            error = await client.next("error")
            assert error["error_event"]["error_type"] == "override_error"
            with pytest.raises(ConnectionClosed) as closed:
                await client.next("never")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "agent.prompt.prompt" in closed.value.rcvd.reason


async def test_initiation_must_come_first() -> None:
    async with running_elevenlabs_mock(fast()) as mock:
        async with connect(url(mock)) as ws:
            await ws.send(json.dumps({"user_audio_chunk": "/w=="}))
            with pytest.raises(ConnectionClosed) as closed:
                await Client(ws).next("never")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_malformed_frame_is_refused() -> None:
    async with running_elevenlabs_mock(fast(), AgentSettings(greets=False)) as mock:
        async with connect(url(mock)) as ws:
            client = Client(ws)
            await client.send(INIT)
            await client.next("conversation_initiation_metadata")
            await ws.send("{not json")
            with pytest.raises(ConnectionClosed):
                await client.next("never")
        await mock.wait_for(lambda: mock.last.closed_at)
        assert mock.last.bad_frames == 1 and mock.last.close_code == 1008


async def test_pings_expect_pongs_and_record_late_and_missing_ones() -> None:
    agent = AgentSettings(greets=False, ping_interval_s=0.05, pong_late_ms=300)
    async with running_elevenlabs_mock(fast(), agent) as mock:
        async with connect(url(mock)) as ws:
            client = Client(ws)
            await client.send(INIT)
            first = await client.next("ping")
            await client.send({"type": "pong", "event_id": first["ping_event"]["event_id"]})
            second = await client.next("ping")
            await asyncio.sleep(0.6)  # answer late on purpose
            await client.send({"type": "pong", "event_id": second["ping_event"]["event_id"]})
            conn = mock.last
            await mock.wait_for(lambda: conn.pings[1].pong_at is not None)
            await client.next("ping")  # this one stays unanswered
        assert not conn.pings[0].late and conn.pings[1].late
        assert conn.late_pongs == [conn.pings[1]]
        assert conn.pings[2] in conn.missing_pongs


async def test_caller_speech_interrupts_with_stale_chunks_then_transcript_and_reply() -> None:
    script = Script(
        replies=(
            Reply("A very long greeting indeed", duration_ms=4000),
            Reply("Sure.", duration_ms=500),
        ),
        transcripts=("Stop please",),
        speed=4.0,
        think_ms=20,
    )
    async with running_elevenlabs_mock(script) as mock:
        async with connect(url(mock)) as ws:
            client = Client(ws)
            await client.send(INIT)
            await client.next("audio")
            await speak(client, 400)
            interruption = await client.next("interruption")
            cut = interruption["interruption_event"]["event_id"]
            correction = await client.next("agent_response_correction")
            transcript = await client.next("user_transcript")
            response = await client.next("agent_response")
        body = correction["agent_response_correction_event"]
        assert body["original_agent_response"] == "A very long greeting indeed"
        assert body["corrected_agent_response"].endswith("...")
        assert transcript["user_transcription_event"]["user_transcript"] == "Stop please"
        assert response["agent_response_event"]["agent_response"] == "Sure."
        position = client.seen.index(interruption)
        after = [
            m["audio_event"]["event_id"] for m in client.seen[position:] if m["type"] == "audio"
        ]
        stale = [i for i in after if i <= cut]
        assert len(stale) == 2  # the quirk the client must handle
        conn = mock.last
        assert conn.replies[0].status == "interrupted"
        assert conn.user_turns[0].interruption_event_id == cut
        assert conn.user_turns[0].interrupted_reply == 0
        sent_at = conn.user_turns[0].interruption_sent_at
        assert sent_at is not None and sent_at >= conn.user_turns[0].speech_started_at


async def test_client_tool_call_waits_for_the_result() -> None:
    script = fast(
        replies=(Reply("Hi", duration_ms=100),),
        transcripts=("What time is it?",),
        function_calls=(FunctionCallSpec("get_time", {"tz": "UTC"}, after_user_turns=1),),
        function_reply="It is {output}",
    )
    async with running_elevenlabs_mock(script) as mock:
        async with connect(url(mock)) as ws:
            client = Client(ws)
            await client.send(INIT)
            await client.next("agent_response")
            await speak(client, 300)
            call = (await client.next("client_tool_call"))["client_tool_call"]
            assert call["tool_name"] == "get_time" and call["parameters"] == {"tz": "UTC"}
            await asyncio.sleep(0.1)
            assert len(client.of("agent_response")) == 1  # nothing until the result
            result = {
                "type": "client_tool_result",
                "tool_call_id": call["tool_call_id"],
                "result": "noon",
                "is_error": False,
            }
            await client.send(result)
            response = await client.next("agent_response")
        assert response["agent_response_event"]["agent_response"] == "It is noon"
        assert [(r.call_id, r.result) for r in mock.last.tool_results] == [
            (call["tool_call_id"], "noon")
        ]


async def test_contextual_update_then_user_message() -> None:
    script = fast(
        replies=(Reply("Hi", duration_ms=100), Reply("Bye", duration_ms=100)),
        inject_reply="Noted: {text}",
    )
    async with running_elevenlabs_mock(script, AgentSettings(greets=False)) as mock:
        async with connect(url(mock)) as ws:
            client = Client(ws)
            await client.send(INIT)
            await client.next("conversation_initiation_metadata")
            await client.send({"type": "contextual_update", "text": "VIP caller"})
            await client.send({"type": "user_message", "text": "Respond to that."})
            first = await client.next("agent_response")
            await client.send({"type": "user_message", "text": "Say goodbye."})
            second = await client.next("agent_response")
        assert first["agent_response_event"]["agent_response"] == "Noted: VIP caller"
        assert second["agent_response_event"]["agent_response"] == "Hi"
        assert [(i.role, i.text) for i in mock.last.injects] == [
            ("system", "VIP caller"),
            ("user", "Respond to that."),
            ("user", "Say goodbye."),
        ]


async def test_signed_url_flow_and_private_agent() -> None:
    agent = AgentSettings(agent_id="agent_1", private=True, greets=False)
    async with running_elevenlabs_mock(fast(api_key="xi-key"), agent) as mock:
        endpoint = mock.base_url.replace("ws://", "http://") + "/get-signed-url?agent_id=agent_1"
        async with aiohttp.ClientSession() as http:
            async with http.get(endpoint) as response:
                assert response.status == 401
            async with http.get(endpoint, headers={"xi-api-key": "wrong"}) as response:
                assert response.status == 401
            async with http.get(endpoint, headers={"xi-api-key": "xi-key"}) as response:
                assert response.status == 200
                signed = (await response.json())["signed_url"]
        assert signed.startswith(mock.base_url) and "token=" in signed
        for refused, status in ((url(mock), 403), (url(mock, "other"), 404)):
            with pytest.raises(InvalidStatus) as error:
                async with connect(refused):
                    pass
            assert error.value.response.status_code == status
        with pytest.raises(InvalidStatus) as error:
            async with connect(url(mock) + "&token=forged"):
                pass
        assert error.value.response.status_code == 401
        async with connect(signed) as ws:
            client = Client(ws)
            await client.send(INIT)
            await client.next("conversation_initiation_metadata")
        assert mock.last.token is not None
        assert [r.accepted for r in mock.signed_url_requests] == [False, False, True]


async def test_handshake_delay_and_forced_close() -> None:
    faults = Faults(handshake_delay_s=0.2, close_after_s=0.2, close_code=1011)
    async with running_elevenlabs_mock(fast(faults=faults), AgentSettings(greets=False)) as mock:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with connect(url(mock)) as ws:
            assert loop.time() - started >= 0.2
            client = Client(ws)
            await client.send(INIT)
            with pytest.raises(ConnectionClosed) as closed:
                await client.next("never")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


def test_script_json_takes_an_elevenlabs_section() -> None:
    script, agent = script_from_json(
        {"replies": ["Hi"], "elevenlabs": {"output_format": "pcm_16000", "private": True}}
    )
    assert script.replies == (Reply("Hi"),)
    assert agent.output_format == "pcm_16000" and agent.private
    with pytest.raises(ValueError, match="unknown keys"):
        script_from_json({"elevenlabs": {"nope": 1}})
    with pytest.raises(ValueError, match="mp3"):
        AgentSettings(output_format="mp3_44100")


async def test_process_mode_prints_listening_and_stops_on_sigterm(tmp_path: Path) -> None:
    script_file = tmp_path / "script.json"
    script_file.write_text(json.dumps({"replies": ["From a file."], "think_ms": 0, "speed": 0}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testbed.mocks.mock_elevenlabs",
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
        base = line.split(" ", 1)[1] + "/v1/convai/conversation"
        async with connect(f"{base}?agent_id=a") as ws:
            client = Client(ws)
            await client.send(INIT)
            response = await client.next("agent_response")
        assert response["agent_response_event"]["agent_response"] == "From a file."
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT_S):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
