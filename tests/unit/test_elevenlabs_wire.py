"""The ElevenLabs Agents wire codec on recorded-shape JSON lines (providers.md section 2)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sip4ai.audio.formats import AudioFormat, Encoding
from sip4ai.config import ElevenLabsConfig
from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import elevenlabs_wire as wire
from sip4ai.providers.base import (
    AudioOut,
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


pytestmark = pytest.mark.unit

B64_FF = base64.b64encode(b"\xff" * 4).decode()
B64_00 = base64.b64encode(b"\x00" * 4).decode()

# One conversation as the server sends it (shapes from the asyncapi spec and the SDKs), with the
# client's clock (seconds) at which each line arrived.
RECORDED: list[tuple[float, str]] = [
    (
        0.00,
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":'
        '{"conversation_id":"conv_01","agent_output_audio_format":"ulaw_8000",'
        '"user_input_audio_format":"ulaw_8000"}}',
    ),
    (0.10, '{"type":"agent_response","agent_response_event":{"agent_response":"Hello!"}}'),
    (0.11, f'{{"type":"audio","audio_event":{{"audio_base_64":"{B64_FF}","event_id":1}}}}'),
    (
        0.12,
        f'{{"type":"audio","audio_event":{{"audio_base_64":"{B64_00}","event_id":2,'
        '"alignment":{"chars":["H"],"char_start_times_ms":[0],"char_durations_ms":[50]}}}',
    ),
    (0.50, '{"type":"ping","ping_event":{"event_id":3,"ping_ms":null}}'),
    (0.60, '{"type":"vad_score","vad_score_event":{"vad_score":0.95}}'),
    (
        2.00,
        '{"type":"user_transcript","user_transcription_event":'
        '{"user_transcript":"What time is it?","event_id":4}}',
    ),
    (
        2.10,
        '{"type":"agent_response","agent_response_event":'
        '{"agent_response":"It is noon, and","event_id":5}}',
    ),
    (2.11, f'{{"type":"audio","audio_event":{{"audio_base_64":"{B64_FF}","event_id":6}}}}'),
    (2.30, '{"type":"interruption","interruption_event":{"event_id":8}}'),
    (2.31, f'{{"type":"audio","audio_event":{{"audio_base_64":"{B64_FF}","event_id":7}}}}'),
    (2.32, f'{{"type":"audio","audio_event":{{"audio_base_64":"{B64_FF}","event_id":8}}}}'),
    (
        2.33,
        '{"type":"agent_response_correction","agent_response_correction_event":'
        '{"original_agent_response":"It is noon, and","corrected_agent_response":"It is...",'
        '"event_id":8}}',
    ),
    (
        3.50,
        '{"type":"client_tool_call","client_tool_call":{"tool_name":"get_time",'
        '"tool_call_id":"toolu_01","parameters":{"tz":"UTC"},"event_id":9}}',
    ),
    (3.90, f'{{"type":"audio","audio_event":{{"audio_base_64":"{B64_00}","event_id":10}}}}'),
]


def test_recorded_conversation_decodes_to_provider_events() -> None:
    decoder = wire.Decoder()
    events: list[ProviderEvent] = []
    replies: list[str] = []
    for at, line in RECORDED:
        events += decoder.expire(at)
        decoded = decoder.decode(line, at)
        events += decoded.events
        replies += decoded.replies
    events += decoder.expire(10.0)
    assert events == [
        Ready(),
        AudioOut(b"\xff" * 4, "el-reply-1"),
        AudioOut(b"\x00" * 4, "el-reply-1"),
        Transcript("ai", "Hello!"),
        ReplyDone("completed", "el-reply-1"),  # 0.8 s after the last chunk, before the ping
        SpeechStopped(),
        Transcript("user", "What time is it?"),
        AudioOut(b"\xff" * 4, "el-reply-2"),
        SpeechStarted(),
        Transcript("ai", "It is noon, and"),
        ReplyDone("cancelled", "el-reply-2"),
        ToolCall("toolu_01", "get_time", '{"tz": "UTC"}'),
        AudioOut(b"\x00" * 4, "el-reply-3"),
        ReplyDone("completed", "el-reply-3"),  # no text arrived for it
    ]
    assert replies == ['{"type":"pong","event_id":3}']
    assert decoder.dropped_audio == 2  # event_id 7 and 8 came after the interruption at 8
    assert decoder.conversation_id == "conv_01"


def test_expire_waits_for_the_idle_gap() -> None:
    decoder = wire.Decoder(reply_idle_s=0.5)
    audio = {"type": "audio", "audio_event": {"audio_base_64": B64_FF, "event_id": 1}}
    deadlines = [decoder.deadline]
    decoder.decode(json.dumps(audio), 1.0)
    deadlines.append(decoder.deadline)
    assert decoder.expire(1.4) == []
    assert decoder.expire(1.5) == [ReplyDone("completed", "el-reply-1")]
    deadlines.append(decoder.deadline)
    assert deadlines == [None, 1.5, None]


def test_a_second_agent_response_after_audio_starts_a_new_reply() -> None:
    decoder = wire.Decoder()

    def line(kind: str, body: dict[str, Any]) -> str:
        return json.dumps({"type": kind, f"{kind}_event": body})

    events = decoder.decode(line("agent_response", {"agent_response": "One."}), 0.0).events
    events += decoder.decode(line("audio", {"audio_base_64": B64_FF, "event_id": 1}), 0.1).events
    events += decoder.decode(line("agent_response", {"agent_response": "Two."}), 0.2).events
    events += decoder.finish()
    assert events == [
        AudioOut(b"\xff" * 4, "el-reply-1"),
        Transcript("ai", "One."),
        ReplyDone("completed", "el-reply-1"),
        Transcript("ai", "Two."),
        ReplyDone("incomplete", "el-reply-2"),
    ]


@pytest.mark.parametrize(
    ("output", "given", "expected_out", "expected_in"),
    [
        ("ulaw_8000", "ulaw_8000", AudioFormat(Encoding.PCMU, 8000), wire.PCMU_8K),
        ("pcm_22050", "pcm_16000", AudioFormat(Encoding.PCM16, 22050), wire.MISSING_FORMAT),
        (None, None, wire.MISSING_FORMAT, wire.MISSING_FORMAT),
    ],
)
def test_metadata_sets_the_formats(
    output: str | None, given: str | None, expected_out: AudioFormat, expected_in: AudioFormat
) -> None:
    decoder = wire.Decoder()
    assert (decoder.input_format, decoder.output_format) == (wire.PCMU_8K, wire.PCMU_8K)
    meta: dict[str, Any] = {"conversation_id": "c"}
    if output:
        meta["agent_output_audio_format"] = output
    if given:
        meta["user_input_audio_format"] = given
    event = {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": meta,
    }
    assert decoder.decode(json.dumps(event), 0.0).events == [Ready()]
    assert (decoder.output_format, decoder.input_format) == (expected_out, expected_in)


def test_format_names_round_trip() -> None:
    for name in ("ulaw_8000", "pcm_16000", "pcm_44100", "alaw_8000"):
        assert wire.format_name(wire.parse_format(name)) == name
    with pytest.raises(ValueError, match="mp3_44100"):
        wire.parse_format("mp3_44100")


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        '{"no_type": 1}',
        '{"type":"audio","audio_event":{"audio_base_64":"@@@","event_id":1}}',
        '{"type":"ping","ping_event":{}}',
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":'
        '{"agent_output_audio_format":"mp3_44100"}}',
    ],
)
def test_malformed_messages_raise_protocol_errors(line: str) -> None:
    with pytest.raises(ProviderProtocolError):
        wire.Decoder().decode(line, 0.0)


def test_max_duration_error_closes_for_good() -> None:
    line = json.dumps(
        {
            "type": "error",
            "error_event": {"code": 1000, "error_type": "max_duration_exceeded", "message": "m"},
        }
    )
    decoder = wire.Decoder()
    assert decoder.decode(line, 0.0).events == [
        Closed("elevenlabs: max_duration_exceeded", retryable=False)
    ]
    assert decoder.last_error == "max_duration_exceeded"


def test_initiation_carries_the_configured_overrides() -> None:
    config = ElevenLabsConfig(agent_id="a", first_message="Hello!", system_prompt="Be kind.")
    settings = SessionSettings("Be kind.\n\nThe caller is Bob.", greeting="Say: Hello!")
    assert json.loads(wire.initiation(config, settings)) == {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {
            "agent": {
                "prompt": {"prompt": "Be kind.\n\nThe caller is Bob."},
                "first_message": "Hello!",
            }
        },
    }
    other = SessionSettings("Call about the invoice.", greeting=None)
    assert json.loads(wire.initiation(config, other))["conversation_config_override"] == {
        "agent": {"prompt": {"prompt": "Be kind.\n\nCall about the invoice."}}
    }


@pytest.mark.parametrize(
    ("configured", "greeting", "expected"),
    [
        ("Hello!", "Start the conversation by saying: Hello!", ("Hello!", None)),
        ("Hello!", "You take over; greet again.", ("", "You take over; greet again.")),
        ("Hello!", None, (None, None)),
        (None, "Greet the caller briefly.", (None, None)),
    ],
)
def test_first_message_plan(
    configured: str | None, greeting: str | None, expected: tuple[str | None, str | None]
) -> None:
    config = ElevenLabsConfig(agent_id="a", first_message=configured)
    assert wire.first_message(config, SessionSettings("x", greeting=greeting)) == expected


def test_initiation_without_configured_overrides_sends_none() -> None:
    message = wire.initiation(ElevenLabsConfig(agent_id="a"), SessionSettings("x", greeting="g"))
    assert json.loads(message) == {"type": "conversation_initiation_client_data"}


def test_client_messages() -> None:
    assert json.loads(wire.audio_chunk(b"\xff\x7f")) == {"user_audio_chunk": "/38="}
    assert json.loads(wire.pong(42)) == {"type": "pong", "event_id": 42}
    assert json.loads(wire.contextual_update("VIP")) == {"type": "contextual_update", "text": "VIP"}
    assert json.loads(wire.user_message("Hi")) == {"type": "user_message", "text": "Hi"}
    ok = json.loads(wire.tool_result("t1", '{"ok": true, "result": 3}'))
    assert ok == {
        "type": "client_tool_result",
        "tool_call_id": "t1",
        "result": '{"ok": true, "result": 3}',
        "is_error": False,
    }
    assert json.loads(wire.tool_result("t2", '{"ok": false, "error": {}}'))["is_error"] is True
    assert json.loads(wire.tool_result("t3", "plain text"))["is_error"] is False


@pytest.mark.parametrize(
    ("code", "retryable"), [(1000, False), (1008, False), (1011, True), (1006, True), (1002, True)]
)
def test_close_codes(code: int, retryable: bool) -> None:
    closed = wire.close_outcome(code, "why", "llm_timeout")
    assert closed.retryable is retryable
    assert closed.reason == f"elevenlabs: connection closed ({code}): why"
    assert closed.details == {"error": "llm_timeout"}
