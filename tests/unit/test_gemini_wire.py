from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from sip4ai.config import GeminiConfig
from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import gemini_wire as wire
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


pytestmark = pytest.mark.unit

RECORDED = Path(__file__).parent.parent / "data" / "gemini_live_session.jsonl"
A = b"\x01\x00" * 4
B = b"\x02\x00" * 4


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audio_message(data: bytes, **extra: Any) -> str:
    blob = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": b64(data)}}
    return json.dumps({"serverContent": {"modelTurn": {"parts": [blob]}, **extra}})


def test_recorded_session_decodes_to_provider_events() -> None:
    decoder = wire.Decoder()
    events: list[ProviderEvent] = []
    for line in RECORDED.read_text().splitlines():
        events += decoder.decode(line)
    assert events == [
        Ready(),
        AudioOut(A, "gemini-reply-1"),
        AudioOut(B, "gemini-reply-1"),  # the thought part is skipped
        Transcript("ai", "Hello, how can I help?"),
        ReplyDone("completed", "gemini-reply-1"),
        Transcript("user", "What time is it?"),  # the tool call ends the caller's turn
        ToolCall("fc_1", "get_time", '{"tz":"UTC"}'),
        AudioOut(A, "gemini-reply-2"),
        SpeechStarted(),
        Transcript("ai", "It is"),
        ReplyDone("cancelled", "gemini-reply-2"),
        # late audio and transcription of the interrupted turn are dropped; its
        # turnComplete closes nothing a second time
    ]
    assert decoder.handle == "handle-2"  # a non-resumable update keeps the last good handle
    assert decoder.go_away_s == 50.0
    assert decoder.pending_calls == {"fc_1": "get_time"}
    assert not decoder.in_turn


def test_binary_frames_are_utf8_json() -> None:
    decoder = wire.Decoder()
    assert decoder.decode(b'{"setupComplete":{}}') == [Ready()]
    assert decoder.decode(audio_message(A).encode()) == [AudioOut(A, "gemini-reply-1")]


def test_snake_case_server_fields_are_accepted() -> None:
    decoder = wire.Decoder()
    blob = {"inline_data": {"mime_type": "audio/pcm;rate=24000", "data": b64(A)}}
    message = {"server_content": {"model_turn": {"parts": [blob]}, "turn_complete": True}}
    assert decoder.decode(json.dumps(message)) == [
        AudioOut(A, "gemini-reply-1"),
        ReplyDone("completed", "gemini-reply-1"),
    ]


def test_bundled_message_audio_transcript_and_turn_complete() -> None:
    """Gemini 3.x puts audio, transcription and turnComplete into one message."""
    decoder = wire.Decoder()
    message = audio_message(A, outputTranscription={"text": "Hi."}, turnComplete=True)
    assert decoder.decode(message) == [
        AudioOut(A, "gemini-reply-1"),
        Transcript("ai", "Hi."),
        ReplyDone("completed", "gemini-reply-1"),
    ]
    assert decoder.decode(audio_message(B)) == [AudioOut(B, "gemini-reply-2")]


def test_input_transcription_finished_or_turn_end_makes_one_user_transcript() -> None:
    decoder = wire.Decoder()
    piece = {"serverContent": {"inputTranscription": {"text": "Yes"}}}
    last = {"serverContent": {"inputTranscription": {"text": " please", "finished": True}}}
    assert decoder.decode(json.dumps(piece)) == []
    assert decoder.decode(json.dumps(last)) == [Transcript("user", "Yes please")]
    assert decoder.decode(json.dumps(piece)) == []
    done = {"serverContent": {"turnComplete": True}}
    assert decoder.decode(json.dumps(done)) == [Transcript("user", "Yes"), ReplyDone("completed")]


def test_interrupt_without_audio_still_ends_the_reply() -> None:
    decoder = wire.Decoder()
    interrupted = json.dumps({"serverContent": {"interrupted": True}})
    assert decoder.decode(interrupted) == [SpeechStarted(), ReplyDone("cancelled", None)]
    assert decoder.in_turn
    assert decoder.decode(audio_message(A)) == []
    assert decoder.decode(json.dumps({"serverContent": {"turnComplete": True}})) == []
    assert decoder.decode(audio_message(B)) == [AudioOut(B, "gemini-reply-1")]


def test_abort_turn_closes_an_open_reply_once() -> None:
    decoder = wire.Decoder()
    decoder.decode(audio_message(A, outputTranscription={"text": "Half"}))
    assert decoder.abort_turn() == [Transcript("ai", "Half"), ReplyDone("failed", "gemini-reply-1")]
    assert decoder.abort_turn() == []


def test_tool_call_cancellation_forgets_the_call() -> None:
    decoder = wire.Decoder()
    calls = {"functionCalls": [{"id": "a", "name": "f", "args": {}}, {"name": "g"}]}
    events = decoder.decode(json.dumps({"toolCall": calls}))
    assert events == [ToolCall("a", "f", "{}"), ToolCall("gemini-call-2", "g", "{}")]
    decoder.decode(json.dumps({"toolCallCancellation": {"ids": ["a"]}}))
    assert decoder.pending_calls == {"gemini-call-2": "g"}


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe not utf8",
        "not json",
        "[1, 2]",
        '{"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm"}}]}}}',
        '{"serverContent": {"modelTurn": {"parts": [{"inlineData": '
        '{"mimeType": "audio/pcm", "data": "!!"}}]}}}',
        '{"serverContent": 3}',
    ],
)
def test_malformed_messages_raise_protocol_errors(raw: str | bytes) -> None:
    with pytest.raises(ProviderProtocolError):
        wire.Decoder().decode(raw)


def test_unknown_members_are_ignored() -> None:
    assert wire.Decoder().decode('{"voiceActivity": {"type": "START"}, "usageMetadata": {}}') == []


def test_setup_carries_model_voice_instructions_tools_and_transcriptions() -> None:
    config = GeminiConfig(
        model="gemini-2.5-flash-native-audio-preview-12-2025",
        voice="Kore",
        system_prompt="You work for Acme.",
    )
    tool = Tool(
        "transfer_call",
        "Transfer the caller",
        {
            "type": "object",
            "properties": {
                "to": {"type": "string", "enum": ["sales", "support"]},
                "note": {"type": ["string", "null"], "additionalProperties": False},
            },
            "required": ["to"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    )
    settings = SessionSettings("Be brief.", greeting="Greet", tools=(tool,))
    setup = json.loads(wire.setup(config, settings))["setup"]
    assert setup["model"] == "models/gemini-2.5-flash-native-audio-preview-12-2025"
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    voice = setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]
    assert voice == {"voiceName": "Kore"}
    assert setup["systemInstruction"] == {"parts": [{"text": "You work for Acme.\n\nBe brief."}]}
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
    assert setup["sessionResumption"] == {}
    assert setup["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "transfer_call",
                    "description": "Transfer the caller",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "to": {"type": "string", "enum": ["sales", "support"]},
                            "note": {"type": "string", "nullable": True},
                        },
                        "required": ["to"],
                    },
                }
            ]
        }
    ]


def test_setup_resumes_with_handle_and_does_not_repeat_the_prompt() -> None:
    config = GeminiConfig(model="models/m", system_prompt="Be brief.")
    setup = json.loads(wire.setup(config, SessionSettings("Be brief."), handle="h-9"))["setup"]
    assert setup["sessionResumption"] == {"handle": "h-9"}
    assert setup["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert "tools" not in setup


def test_client_messages() -> None:
    audio = json.loads(wire.realtime_audio(b"\x00\x01"))
    assert audio == {
        "realtimeInput": {"audio": {"mimeType": "audio/pcm;rate=16000", "data": "AAE="}}
    }
    assert json.loads(wire.realtime_text("Say hi")) == {"realtimeInput": {"text": "Say hi"}}
    turn = json.loads(wire.client_turn(wire.inject_text("VIP caller", "system")))
    assert turn == {
        "clientContent": {
            "turns": [
                {
                    "role": "user",
                    "parts": [{"text": "System note (not said by the caller): VIP caller"}],
                }
            ],
            "turnComplete": True,
        }
    }
    assert wire.inject_text("hello", "user") == "hello"


@pytest.mark.parametrize(
    ("output", "response"),
    [
        ('{"ok": true}', {"ok": True}),
        ("[1, 2]", {"result": [1, 2]}),
        ("plain text", {"result": "plain text"}),
    ],
)
def test_tool_response_is_an_object_with_id_and_name(output: str, response: object) -> None:
    message = json.loads(wire.tool_response("fc_1", "f", output))
    assert message == {
        "toolResponse": {"functionResponses": [{"id": "fc_1", "name": "f", "response": response}]}
    }


@pytest.mark.parametrize(
    ("code", "retryable"), [(1000, False), (1007, False), (1008, False), (1011, True), (1006, True)]
)
def test_close_codes(code: int, retryable: bool) -> None:
    closed = wire.close_event(code, "why")
    assert closed == Closed(f"gemini: connection closed ({code}: why)", retryable=retryable)


@pytest.mark.parametrize(
    ("value", "seconds"), [("50s", 50.0), ("0.5s", 0.5), (12, 12.0), ("soon", None), (None, None)]
)
def test_durations(value: object, seconds: float | None) -> None:
    assert wire.parse_duration_s(value) == seconds
