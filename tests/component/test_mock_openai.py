"""The OpenAI Realtime mock against a real websockets client on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sip4ai.audio.g711 import ulaw_decode
from testbed.mocks.mock_openai import (
    Faults,
    FunctionCallSpec,
    OpenAIMock,
    Reply,
    ReplyContext,
    Script,
    dominant_hz,
    running_openai_mock,
)
from testbed.mocks.realtime_client import (
    PCMU_SESSION,
    RealtimeClient,
    realtime_client,
    ulaw_silence,
    ulaw_tone,
)


pytestmark = pytest.mark.component

TIMEOUT_S = 5.0 * float(os.environ.get("SIP4AI_TEST_TIMEOUT_FACTOR", "1"))
REPO_ROOT = Path(__file__).resolve().parents[2]


def fast_script(**fields: Any) -> Script:
    """A script for tests that do not care about pacing: short think time, audio at once."""
    return Script(**{"think_ms": 20, "speed": 0.0, **fields})


def connect_client(
    mock: OpenAIMock,
    *,
    session: Mapping[str, Any] | None = PCMU_SESSION,
    headers: Mapping[str, str] | None = None,
    model: str = "gpt-realtime",
) -> contextlib.AbstractAsyncContextManager[RealtimeClient]:
    return realtime_client(
        mock.realtime_url(model), session=session, headers=headers, timeout_s=TIMEOUT_S
    )


def audio_of(client: RealtimeClient, response_id: str) -> npt.NDArray[np.int16]:
    return ulaw_decode(client.output_audio(response_id))


# --- connect and auth --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code", "message"),
    [
        ({"Authorization": "Bearer wrong-key-123456"}, "invalid_api_key", "Incorrect API key"),
        ({}, None, "Missing bearer or basic authentication in header"),
    ],
)
async def test_bad_or_missing_key_gets_http_401(
    headers: dict[str, str], code: str | None, message: str
) -> None:
    async with running_openai_mock() as mock:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(mock.realtime_url(), additional_headers=headers):
                pass
    response = caught.value.response
    assert response.status_code == 401
    error = json.loads(response.body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["message"].startswith(message)
    assert "wrong-key-123456" not in error["message"]
    assert mock.connections == []


async def test_old_style_auth_failure_sends_error_and_closes_3000() -> None:
    async with running_openai_mock(Script(auth_failure="ws")) as mock:
        async with connect(
            mock.realtime_url(), additional_headers={"Authorization": "Bearer nope-nope-nope"}
        ) as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
    assert error["error"]["code"] == "invalid_api_key"
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 3000
    assert caught.value.rcvd.reason == "invalid_request_error.invalid_api_key"


async def test_beta_header_is_refused_with_close_4000() -> None:
    async with running_openai_mock() as mock:
        headers = {"Authorization": "Bearer test-key", "OpenAI-Beta": "realtime=v1"}
        async with connect(mock.realtime_url(), additional_headers=headers) as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
    assert error["error"]["code"] == "beta_api_shape_disabled"
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4000


async def test_session_created_then_updated() -> None:
    async with running_openai_mock() as mock:
        async with connect_client(mock, session=None, model="gpt-realtime-2.1") as client:
            created = client.events[0]["session"]
            assert created["type"] == "realtime"
            assert created["object"] == "realtime.session"
            assert created["id"].startswith("sess_")
            assert created["model"] == "gpt-realtime-2.1"
            assert created["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            await client.send({"type": "session.update", "session": PCMU_SESSION})
            updated = (await client.next("session.updated"))["session"]
        assert updated["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert updated["audio"]["output"] == {
            "format": {"type": "audio/pcmu"},
            "voice": "marin",
            "speed": 1.0,
        }
        assert updated["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 300
        assert updated["instructions"] == "You are a phone agent."
        record = mock.last
        assert record.model == "gpt-realtime-2.1"
        assert record.session == updated
        assert record.received_of("session.update")[0]["session"] == PCMU_SESSION


@pytest.mark.parametrize(
    ("session", "code", "param", "message"),
    [
        (
            {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
            "missing_required_parameter",
            "session.type",
            "Missing required parameter: 'session.type'.",
        ),
        (
            {"type": "realtime", "modalities": ["text", "audio"]},
            "unknown_parameter",
            "session.modalities",
            "Unknown parameter: 'session.modalities'.",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "pcm16"}}}},
            "invalid_value",
            "session.audio.input.format.type",
            "Invalid value: 'pcm16'. Supported values are: 'audio/pcm', 'audio/pcmu', and "
            "'audio/pcma'.",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}},
            },
            "decimal_above_max_value",
            "session.audio.input.turn_detection.threshold",
            "Invalid 'session.audio.input.turn_detection.threshold': decimal above maximum "
            "value. Expected a value <= 1, but got 2 instead.",
        ),
    ],
)
async def test_invalid_session_update_gets_error_event(
    session: dict[str, Any], code: str, param: str, message: str
) -> None:
    async with running_openai_mock() as mock:
        async with connect_client(mock, session=None) as client:
            before = mock.last.session
            await client.send({"type": "session.update", "event_id": "evt_7", "session": session})
            error = (await client.next("error"))["error"]
            assert error == {
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": "evt_7",
            }
            assert client.of("session.updated") == []
            assert mock.last.session == before


# --- turns, replies, barge-in ------------------------------------------------------------------


async def test_speech_gives_vad_events_transcript_and_faster_than_real_time_reply() -> None:
    script = Script(
        replies=(Reply("Hello, this is the mock.", duration_ms=2000),),
        transcripts=("I would like to book a table.",),
        think_ms=50,
        speed=4.0,
    )
    async with running_openai_mock(script) as mock:
        async with connect_client(mock) as client:
            await client.append(ulaw_silence(500) + ulaw_tone(600) + ulaw_silence(400))
            started = await client.next("input_audio_buffer.speech_started")
            stopped = await client.next("input_audio_buffer.speech_stopped")
            committed = await client.next("input_audio_buffer.committed")
            added = await client.next("conversation.item.added")
            completed = await client.next("conversation.item.input_audio_transcription.completed")
            created = await client.next("response.created")
            first = await client.next("response.output_audio.delta")
            first_at = client.arrival(first)
            audio_done = await client.next("response.output_audio.done")
            done_at = client.arrival(audio_done)
            transcript = await client.next("response.output_audio_transcript.done")
            done = await client.next("response.done")
    assert started["audio_start_ms"] == 200  # onset 500 ms minus 300 ms prefix padding
    assert stopped["audio_end_ms"] == 1400  # speech end 1100 ms plus 300 ms of silence
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert added["item"]["role"] == "user" and added["item"]["id"] == committed["item_id"]
    assert completed["transcript"] == "I would like to book a table."
    rid = created["response"]["id"]
    assert done["response"]["id"] == rid and done["response"]["status"] == "completed"
    assert done["response"]["usage"]["output_token_details"]["audio_tokens"] > 0
    assert transcript["transcript"] == "Hello, this is the mock."
    pcm = audio_of(client, rid)
    assert pcm.size == 2000 * 8
    assert dominant_hz(pcm, 8000) == pytest.approx(script.tone_for(0), abs=5)
    wall_s = done_at - first_at
    assert wall_s < 2.0 / 2  # 2 s of audio at 4x takes ~0.5 s
    assert wall_s > 1.9 / 4 * 0.9  # paced, not a burst
    record = mock.last
    assert record.audio_in == ulaw_silence(500) + ulaw_tone(600) + ulaw_silence(400)
    turn = record.user_turns[0]
    assert (turn.audio_start_ms, turn.audio_end_ms) == (200, 1400)
    assert turn.speech_started_at is not None
    response = record.responses[0]
    assert (response.trigger, response.status, response.audio_ms_sent) == (
        "turn",
        "completed",
        2000,
    )
    assert response.first_audio_at is not None and response.first_audio_at >= response.created_at


async def test_greeting_and_replies_have_distinct_tones() -> None:
    script = fast_script(replies=(Reply("Welcome."), Reply("Second.")))
    async with running_openai_mock(script) as mock:
        async with connect_client(mock) as client:
            await client.send({"type": "response.create", "response": {"instructions": "Greet"}})
            greeting = await client.next("response.done")
            await client.send({"type": "response.create"})
            second = await client.next("response.done")
        tones = [
            dominant_hz(audio_of(client, r["response"]["id"]), 8000) for r in (greeting, second)
        ]
    assert tones == [
        pytest.approx(script.tone_for(0), abs=5),
        pytest.approx(script.tone_for(1), abs=5),
    ]
    assert [r.text for r in mock.last.responses] == ["Welcome.", "Second."]
    assert mock.last.responses[0].instructions == "Greet"


async def test_barge_in_cancels_the_playing_response() -> None:
    script = Script(replies=(Reply("A long answer.", duration_ms=4000),), think_ms=10, speed=1.0)
    async with running_openai_mock(script) as mock:
        async with connect_client(mock) as client:
            await client.send({"type": "response.create"})
            rid = (await client.next("response.created"))["response"]["id"]
            await client.next("response.output_audio.delta")
            await client.append(ulaw_tone(300) + ulaw_silence(400))
            started = await client.next("input_audio_buffer.speech_started")
            cancelled = await client.next("response.done")
            next_response = await client.next("response.done")
    assert cancelled["response"]["id"] == rid
    assert cancelled["response"]["status"] == "cancelled"
    assert cancelled["response"]["status_details"] == {
        "type": "cancelled",
        "reason": "turn_detected",
    }
    assert cancelled["response"]["output"][0]["status"] == "incomplete"
    assert client.events.index(started) < client.events.index(cancelled)
    assert audio_of(client, rid).size < 4000 * 8
    late = [
        e
        for e in client.events[client.events.index(cancelled) :]
        if e.get("response_id") == rid and e["type"].endswith(".delta")
    ]
    assert late == []
    assert next_response["response"]["id"] != rid
    record = mock.last
    assert record.responses[0].status == "cancelled"
    assert record.responses[0].reason == "turn_detected"
    assert record.user_turns[0].interrupted_response_id == rid


async def test_response_cancel_and_cancel_without_response() -> None:
    script = Script(replies=(Reply("Long.", duration_ms=5000),), think_ms=10, speed=1.0)
    async with running_openai_mock(script) as mock:
        async with connect_client(mock) as client:
            await client.send({"type": "response.create"})
            await client.next("response.output_audio.delta")
            await client.send({"type": "response.create"})
            busy = (await client.next("error"))["error"]
            await client.send({"type": "response.cancel"})
            done = await client.next("response.done")
            await client.send({"type": "response.cancel", "event_id": "evt_c"})
            error = (await client.next("error"))["error"]
    assert busy["code"] == "conversation_already_has_active_response"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert error["code"] == "response_cancel_not_active"
    assert error["message"] == "Cancellation failed: no active response found"
    assert error["event_id"] == "evt_c"
    assert mock.last.responses[0].status == "cancelled"


async def test_manual_turns_without_turn_detection() -> None:
    manual = copy.deepcopy(PCMU_SESSION)
    manual["audio"]["input"]["turn_detection"] = None
    async with running_openai_mock(fast_script(replies=(Reply("Manual."),))) as mock:
        async with connect_client(mock, session=manual) as client:
            await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_e"})
            empty = (await client.next("error"))["error"]
            await client.append(ulaw_silence(200) + ulaw_tone(300))
            await client.send({"type": "input_audio_buffer.commit"})
            committed = await client.next("input_audio_buffer.committed")
            await client.send({"type": "response.create"})
            reply = await client.next("response.output_audio_transcript.done")
    assert empty["code"] == "input_audio_buffer_commit_empty"
    assert empty["event_id"] == "evt_e"
    assert client.of("input_audio_buffer.speech_started") == []
    assert reply["transcript"] == "Manual."
    turn = mock.last.user_turns[0]
    assert (turn.item_id, turn.audio_start_ms, turn.committed) == (committed["item_id"], 0, True)


# --- truncate, inject, function call -----------------------------------------------------------


async def test_truncate_validates_audio_end_ms() -> None:
    script = fast_script(replies=(Reply("One second.", duration_ms=1000),))
    async with running_openai_mock(script) as mock:
        async with connect_client(mock) as client:
            await client.send({"type": "response.create"})
            done = await client.next("response.done")
            item_id = done["response"]["output"][0]["id"]
            truncate = {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
            }
            await client.send({**truncate, "audio_end_ms": 400})
            truncated = await client.next("conversation.item.truncated")
            await client.send({**truncate, "audio_end_ms": 1500, "event_id": "evt_t"})
            too_long = (await client.next("error"))["error"]
            await client.send({**truncate, "item_id": "item_unknown", "audio_end_ms": 10})
            unknown = (await client.next("error"))["error"]
    assert truncated == {**truncated, "item_id": item_id, "content_index": 0, "audio_end_ms": 400}
    assert too_long["message"] == "Audio content of 1000ms is already shorter than 1500ms"
    assert (too_long["type"], too_long["code"], too_long["event_id"]) == (
        "invalid_request_error",
        None,
        None,
    )
    assert unknown["code"] == "item_not_found"
    first, second = mock.last.truncates[:2]
    assert (first.audio_end_ms, first.audio_sent_ms, first.accepted) == (400, 1000, True)
    assert (second.audio_end_ms, second.accepted) == (1500, False)


async def test_truncate_of_user_item_is_refused() -> None:
    async with running_openai_mock(fast_script()) as mock:
        async with connect_client(mock) as client:
            await client.append(ulaw_tone(300) + ulaw_silence(400))
            user_item = (await client.next("input_audio_buffer.committed"))["item_id"]
            await client.next("response.done")
            await client.send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": user_item,
                    "content_index": 0,
                    "audio_end_ms": 0,
                }
            )
            error = (await client.next("error"))["error"]
    assert error["message"] == "Only model output audio messages can be truncated"
    assert mock.last.truncates[0].accepted is False


async def test_inject_changes_the_next_reply() -> None:
    script = fast_script(replies=(Reply("Scripted."),), inject_reply="Noted: {text}")
    async with running_openai_mock(script) as mock:
        async with connect_client(mock) as client:
            await client.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "system",
                        "content": [{"type": "input_text", "text": "Caller is verified."}],
                    },
                }
            )
            added = await client.next("conversation.item.added")
            await client.send({"type": "response.create"})
            first = await client.next("response.output_audio_transcript.done")
            await client.send({"type": "response.create"})
            second = await client.next("response.output_audio_transcript.done")
    assert added["item"]["role"] == "system"
    assert first["transcript"] == "Noted: Caller is verified."
    assert second["transcript"] == "Scripted."
    inject = mock.last.injects[0]
    assert (inject.role, inject.text, inject.item_id) == (
        "system",
        "Caller is verified.",
        added["item"]["id"],
    )


async def test_reply_hook_sees_context() -> None:
    seen: list[ReplyContext] = []

    def hook(context: ReplyContext) -> Reply | None:
        seen.append(context)
        return Reply(f"You said {context.transcript}", tone_hz=1234.0)

    script = fast_script(transcripts=("hi there",), reply_hook=hook)
    async with running_openai_mock(script) as mock:
        async with connect_client(mock) as client:
            await client.append(ulaw_tone(300) + ulaw_silence(400))
            done = await client.next("response.output_audio_transcript.done")
    assert done["transcript"] == "You said hi there"
    assert seen[0].trigger == "turn" and seen[0].user_turns == 1
    assert mock.last.responses[0].tone_hz == 1234.0


async def test_function_call_round_trip() -> None:
    script = fast_script(
        function_calls=(FunctionCallSpec("transfer_call", {"to": "sales"}, after_user_turns=1),),
        function_reply="Transferred: {output}",
    )
    async with running_openai_mock(script) as mock:
        async with connect_client(mock) as client:
            await client.append(ulaw_tone(300) + ulaw_silence(400))
            added = await client.next("response.output_item.added")
            args_done = await client.next("response.function_call_arguments.done")
            call_done = await client.next("response.done")
            call_id = args_done["call_id"]
            output_item = {
                "type": "function_call_output",
                "call_id": call_id,
                "output": '{"ok":true}',
            }
            await client.send({"type": "conversation.item.create", "item": output_item})
            await client.next("conversation.item.added")
            await client.send({"type": "response.create"})
            reply = await client.next("response.output_audio_transcript.done")
            bogus = {**output_item, "call_id": "call_bogus"}
            await client.send({"type": "conversation.item.create", "item": bogus})
            error = (await client.next("error"))["error"]
    assert added["item"]["type"] == "function_call"
    assert added["item"]["name"] == "transfer_call"
    deltas = "".join(e["delta"] for e in client.of("response.function_call_arguments.delta"))
    assert json.loads(deltas) == json.loads(args_done["arguments"]) == {"to": "sales"}
    assert args_done["name"] == "transfer_call"
    assert call_done["response"]["status"] == "completed"
    assert call_done["response"]["output"][0]["arguments"] == args_done["arguments"]
    assert reply["transcript"] == 'Transferred: {"ok":true}'
    assert error["param"] == "item.call_id"
    record = mock.last
    assert [(c.name, c.call_id) for c in record.function_calls] == [("transfer_call", call_id)]
    assert [(o.call_id, o.output) for o in record.function_outputs] == [(call_id, '{"ok":true}')]
    assert [r.kind for r in record.responses] == ["function_call", "audio"]


# --- expiry, echo, faults ----------------------------------------------------------------------


async def test_session_expiry_sends_error_and_closes_1001() -> None:
    async with running_openai_mock(Script(session_max_s=0.2)) as mock:
        async with connect_client(mock) as client:
            error = (await client.next("error"))["error"]
            with pytest.raises(ConnectionClosed) as caught:
                await client.ws.recv()
        await mock.wait_for(lambda: mock.last.closed_at, TIMEOUT_S)
    assert error["code"] == "session_expired"
    assert error["message"] == "Your session hit the maximum duration of 60 minutes."
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1001
    assert caught.value.rcvd.reason == error["message"]


async def test_echo_mode_sends_back_exactly_what_it_hears() -> None:
    rng = np.random.default_rng(7)
    heard = bytes(rng.integers(0, 256, 1600, dtype=np.uint8))
    async with running_openai_mock(Script(mode="echo")) as mock:
        async with connect_client(mock) as client:
            await client.append(heard)
            echoed = b""
            while len(echoed) < len(heard):
                echoed += base64.b64decode(
                    (await client.next("response.output_audio.delta"))["delta"]
                )
    assert echoed == heard
    assert bytes(mock.last.echo_out) == heard
    assert client.of("input_audio_buffer.speech_started") == []


async def test_faults_close_malformed_frame_and_slow_handshake() -> None:
    faults = Faults(
        handshake_delay_s=0.2, malformed_after_s=0.05, close_after_s=0.1, close_code=4321
    )
    async with running_openai_mock(Script(faults=faults)) as mock:
        started = time.monotonic()
        async with connect_client(mock, session=None) as client:
            connected_s = time.monotonic() - started
            malformed = await client.ws.recv()
            with pytest.raises(ConnectionClosed) as caught:
                await client.ws.recv()
    assert connected_s >= 0.2
    with pytest.raises(ValueError):
        json.loads(malformed)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4321


# --- scripts and process mode ------------------------------------------------------------------


def test_script_from_json() -> None:
    script = Script.from_json(
        {
            "replies": ["Hi.", {"text": "Bye.", "tone_hz": 900, "duration_ms": 500}],
            "function_calls": [{"name": "hangup", "transcript_contains": "bye"}],
            "faults": {"close_after_s": 3},
            "speed": 2,
        }
    )
    assert script.replies == (Reply("Hi."), Reply("Bye.", 900, 500))
    assert script.function_calls == (FunctionCallSpec("hangup", transcript_contains="bye"),)
    assert script.faults.close_after_s == 3
    with pytest.raises(ValueError, match="unknown keys"):
        Script.from_json({"replys": []})


async def test_process_mode_prints_listening_and_stops_on_sigterm(tmp_path: Path) -> None:
    script_file = tmp_path / "script.json"
    script_file.write_text(json.dumps({"replies": ["From a file."], "think_ms": 0, "speed": 0}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "testbed.mocks.mock_openai",
        "--port",
        "0",
        "--key",
        "proc-key",
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
        url = line.split(" ", 1)[1] + "/v1/realtime?model=gpt-realtime"
        async with connect(url, additional_headers={"Authorization": "Bearer proc-key"}) as ws:
            client = RealtimeClient(ws, TIMEOUT_S)
            await client.next("session.created")
            await client.send({"type": "response.create"})
            transcript = await client.next("response.output_audio_transcript.done")
        assert transcript["transcript"] == "From a file."
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT_S):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
