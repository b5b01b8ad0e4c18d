from __future__ import annotations

import json
from pathlib import Path

import pytest

from sip4ai.config import OpenAIConfig, TurnDetection
from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import openai_wire as wire
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


pytestmark = pytest.mark.unit

RECORDED = Path(__file__).parent.parent / "data" / "openai_realtime_session.jsonl"


def test_recorded_session_decodes_to_provider_events() -> None:
    decoder = wire.Decoder()
    events: list[ProviderEvent] = []
    for line in RECORDED.read_text().splitlines():
        events += decoder.decode(line)
    assert events == [
        Ready(),
        AudioOut(b"\xff" * 8, "item_a1"),
        AudioOut(b"\x00" * 8, "item_a1"),
        Transcript("ai", "Hello, how can I help?"),
        ReplyDone("completed", "item_a1"),
        SpeechStarted(),
        SpeechStopped(),
        Transcript("user", "What time is it?"),
        ToolCall("call_abc", "get_time", '{"tz":"UTC"}'),
        ReplyDone("cancelled", None),
        Closed(
            "openai: session_expired",
            retryable=True,
            details={"message": "Your session hit the maximum duration of 60 minutes."},
        ),
    ]
    assert decoder.audio_bytes == {"item_a1": 16}


def test_beta_event_names_are_accepted() -> None:
    decoder = wire.Decoder()
    beta = {"type": "response.audio.delta", "item_id": "i", "delta": "/w=="}
    assert decoder.decode(json.dumps(beta)) == [AudioOut(b"\xff", "i")]


def test_truncate_is_clamped_to_audio_received() -> None:
    decoder = wire.Decoder()
    decoder.audio_bytes["item_a1"] = 8 * 1500  # 1.5 s of mu-law
    assert decoder.clamp("item_a1", 4000) == 1500
    assert decoder.clamp("item_a1", 700) == 700
    assert decoder.clamp("unknown", 700) == 0
    assert decoder.clamp("item_a1", -5) == 0


@pytest.mark.parametrize(
    ("raw", "event_type"),
    [
        ("not json", None),
        ('{"no": "type"}', None),
        ('{"type": "response.output_audio.delta", "item_id": "x"}', "response.output_audio.delta"),
        (
            '{"type": "response.output_audio.delta", "item_id": "x", "delta": "!!!"}',
            "response.output_audio.delta",
        ),
        ('{"type": "response.done"}', "response.done"),
    ],
)
def test_malformed_messages_raise_without_payload(raw: str, event_type: str | None) -> None:
    with pytest.raises(ProviderProtocolError) as info:
        wire.Decoder().decode(raw)
    assert info.value.event_type == event_type
    assert "!!!" not in str(info.value)


def test_fatal_and_request_errors() -> None:
    decoder = wire.Decoder()
    fatal = {"type": "error", "error": {"code": "invalid_api_key", "message": "bad key"}}
    (closed,) = decoder.decode(json.dumps(fatal))
    assert isinstance(closed, Closed) and not closed.retryable
    truncate = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": None,
            "message": "Audio content of 13600ms is already shorter than 55960ms",
        },
    }
    assert decoder.decode(json.dumps(truncate)) == []


def test_session_update_is_ga_shape_with_pcmu_and_tools() -> None:
    config = OpenAIConfig(
        voice="shimmer",
        turn_detection=TurnDetection(threshold=0.7, silence_duration_ms=1000),
    )
    tool = Tool("book", "Book it", {"type": "object", "properties": {"date": {"type": "string"}}})
    event = json.loads(wire.session_update(config, SessionSettings("Be brief.", tools=(tool,))))
    session = event["session"]
    assert event["type"] == "session.update"
    assert session["type"] == "realtime"
    assert session["instructions"] == "Be brief."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "shimmer"}
    vad = session["audio"]["input"]["turn_detection"]
    assert vad["type"] == "server_vad" and vad["threshold"] == 0.7
    assert vad["silence_duration_ms"] == 1000 and vad["interrupt_response"] is True
    assert session["tools"] == [
        {
            "type": "function",
            "name": "book",
            "description": "Book it",
            "parameters": {"type": "object", "properties": {"date": {"type": "string"}}},
        }
    ]


def test_turn_detection_none_disables_vad() -> None:
    config = OpenAIConfig(turn_detection=TurnDetection(type="none"))
    event = json.loads(wire.session_update(config, SessionSettings("x")))
    assert event["session"]["audio"]["input"]["turn_detection"] is None


def test_client_events() -> None:
    assert json.loads(wire.append_audio(b"\xff\xff")) == {
        "type": "input_audio_buffer.append",
        "audio": "//8=",
    }
    assert json.loads(wire.truncate("item_a1", 640)) == {
        "type": "conversation.item.truncate",
        "item_id": "item_a1",
        "content_index": 0,
        "audio_end_ms": 640,
    }
    inject = json.loads(wire.message_item("VIP caller", "system"))
    assert inject["item"] == {
        "type": "message",
        "role": "system",
        "content": [{"type": "input_text", "text": "VIP caller"}],
    }
    output = json.loads(wire.function_output("call_abc", '{"ok":true}'))
    assert output["item"] == {
        "type": "function_call_output",
        "call_id": "call_abc",
        "output": '{"ok":true}',
    }
    assert json.loads(wire.response_create("Say bye")) == {
        "type": "response.create",
        "response": {"instructions": "Say bye"},
    }
