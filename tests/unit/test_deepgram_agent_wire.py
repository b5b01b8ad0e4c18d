"""The Deepgram Voice Agent codec on recorded message shapes (providers.md section 4)."""

from __future__ import annotations

import json

import pytest

from sip4ai.config import DeepgramConfig
from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import deepgram_agent_wire as wire
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

# A session as the server sends it: greeting, one caller turn with a client-side and a
# server-side function, then a reply the caller interrupts (its audio still arriving after
# UserStartedSpeaking). Binary frames are written as bytes.
RECORDED: list[str | bytes] = [
    '{"type":"Welcome","request_id":"8c8f4a42-1c2b-4d1e-9a55-3d1f0b8c9e11"}',
    '{"type":"SettingsApplied"}',
    '{"type":"ConversationText","role":"assistant","content":"Hello, how can I help you?"}',
    '{"type":"History","role":"assistant","content":"Hello, how can I help you?"}',
    '{"type":"AgentStartedSpeaking","total_latency":0.41,"tts_latency":0.12,"ttt_latency":0.29}',
    b"\xff" * 160,
    b"\x7f" * 160,
    '{"type":"AgentAudioDone"}',
    '{"type":"UserStartedSpeaking"}',
    '{"type":"ConversationText","role":"user","content":"Transfer me to sales, please."}',
    '{"type":"AgentThinking","content":""}',
    '{"type":"FunctionCallRequest","functions":[{"id":"fc_1","name":"transfer_call",'
    '"arguments":"{\\"to\\": \\"sales\\"}","client_side":true},{"id":"fc_2","name":"lookup",'
    '"arguments":"{}","client_side":false}]}',
    '{"type":"FunctionCallResponse","id":"fc_2","name":"lookup","content":"{}"}',
    '{"type":"ConversationText","role":"assistant","content":"One moment."}',
    '{"type":"AgentStartedSpeaking","total_latency":0.5,"tts_latency":0.1,"ttt_latency":0.4}',
    b"\x01" * 160,
    '{"type":"ConversationText","role":"assistant","content":"I am connecting you."}',
    '{"type":"UserStartedSpeaking"}',
    b"\x02" * 160,
    '{"type":"AgentAudioDone"}',
    '{"type":"LatencyReport","ttt_token_latency":0.2,"tts_latency":0.1,"total_latency":0.5}',
    '{"type":"ConversationText","role":"user","content":"Wait."}',
    '{"type":"AgentStartedSpeaking","total_latency":0.3,"tts_latency":0.1,"ttt_latency":0.2}',
    b"\x03" * 160,
    '{"type":"ConversationText","role":"assistant","content":"Sure."}',
    '{"type":"AgentAudioDone"}',
]


def decode_all(decoder: wire.Decoder, frames: list[str | bytes]) -> list[ProviderEvent]:
    events: list[ProviderEvent] = []
    for frame in frames:
        events += decoder.decode(frame)
    return events


def test_recorded_session_decodes_to_provider_events() -> None:
    decoder = wire.Decoder()
    assert decode_all(decoder, RECORDED) == [
        Ready(),
        AudioOut(b"\xff" * 160, "dg-reply-1"),
        AudioOut(b"\x7f" * 160, "dg-reply-1"),
        Transcript("ai", "Hello, how can I help you?"),
        ReplyDone("completed", "dg-reply-1"),
        SpeechStarted(),
        SpeechStopped(),
        Transcript("user", "Transfer me to sales, please."),
        ToolCall("fc_1", "transfer_call", '{"to": "sales"}'),
        AudioOut(b"\x01" * 160, "dg-reply-2"),
        SpeechStarted(),
        Transcript("ai", "One moment. I am connecting you."),
        ReplyDone("cancelled", "dg-reply-2"),
        SpeechStopped(),
        Transcript("user", "Wait."),
        AudioOut(b"\x03" * 160, "dg-reply-3"),
        Transcript("ai", "Sure."),
        ReplyDone("completed", "dg-reply-3"),
    ]
    assert decoder.request_id == "8c8f4a42-1c2b-4d1e-9a55-3d1f0b8c9e11"
    assert decoder.dropped_audio_bytes == 160  # the interrupted reply's late audio
    assert decoder.call_names == {"fc_1": "transfer_call"}  # server-side calls are not ours


def test_audio_without_agent_started_speaking_is_a_new_reply() -> None:
    decoder = wire.Decoder()
    events = decode_all(decoder, [b"\x10" * 8, '{"type":"AgentAudioDone"}', b"\x11" * 8])
    assert events == [
        AudioOut(b"\x10" * 8, "dg-reply-1"),
        ReplyDone("completed", "dg-reply-1"),
        AudioOut(b"\x11" * 8, "dg-reply-2"),
    ]


def test_agent_started_speaking_closes_an_unfinished_reply() -> None:
    decoder = wire.Decoder()
    started = '{"type":"AgentStartedSpeaking"}'
    events = decode_all(decoder, [started, b"\x10", started, b"\x11"])
    assert events == [
        AudioOut(b"\x10", "dg-reply-1"),
        ReplyDone("completed", "dg-reply-1"),
        AudioOut(b"\x11", "dg-reply-2"),
    ]


def test_barge_in_without_a_reply_only_reports_speech() -> None:
    decoder = wire.Decoder()
    assert decoder.decode('{"type":"UserStartedSpeaking"}') == [SpeechStarted()]
    assert decoder.decode(b"\x05") == [AudioOut(b"\x05", "dg-reply-1")]


def test_injected_user_text_is_not_reported_as_the_caller() -> None:
    decoder = wire.Decoder()
    decoder.injected_user_text("Say goodbye. ")
    user = '{"type":"ConversationText","role":"user","content":"Say goodbye."}'
    assert decoder.decode(user) == []
    assert decoder.decode(user) == [SpeechStopped(), Transcript("user", "Say goodbye.")]


@pytest.mark.parametrize(
    ("line", "retryable"),
    [
        (
            '{"type":"Error","description":"We waited too long for a websocket message.",'
            '"code":"CLIENT_MESSAGE_TIMEOUT"}',
            True,
        ),
        (
            '{"type":"Error","description":"Text message received from client did not match '
            'any of the formats we expect.","code":"UNPARSABLE_CLIENT_MESSAGE"}',
            False,
        ),
        ('{"type":"Error","description":"Invalid credentials.","code":"INVALID_AUTH"}', False),
        ('{"type":"Error","message":"legacy shape"}', False),
    ],
)
def test_errors_end_the_session(line: str, retryable: bool) -> None:
    [event] = wire.Decoder().decode(line)
    assert isinstance(event, Closed)
    assert event.retryable is retryable
    assert event.reason.startswith("deepgram: ")
    assert event.details["description"]


def test_warnings_refusals_and_unknown_messages_are_ignored() -> None:
    decoder = wire.Decoder()
    for line in (
        '{"type":"Warning","description":"slow down","code":"W1"}',
        '{"type":"InjectionRefused","message":"busy"}',
        '{"type":"PromptUpdated"}',
        '{"type":"SomethingNew","x":1}',
    ):
        assert decoder.decode(line) == []


@pytest.mark.parametrize(
    "line",
    [
        '{"type":"ConversationText","role":"assistant"',
        '["Welcome"]',
        '{"request_id":"x"}',
        '{"type":"ConversationText","role":"robot","content":"x"}',
        '{"type":"FunctionCallRequest","functions":[{"name":"x"}]}',
        '{"type":"FunctionCallRequest"}',
    ],
)
def test_malformed_messages_raise_protocol_errors(line: str) -> None:
    with pytest.raises(ProviderProtocolError):
        wire.Decoder().decode(line)


def test_settings_carry_formats_models_prompt_functions_and_greeting() -> None:
    config = DeepgramConfig(
        model="aura-2-asteria-en",
        listen_model="nova-3",
        think_provider="anthropic",
        think_model="claude-x",
        greeting="Hi, this is Ada.",
    )
    tool = Tool("transfer_call", "Transfer", {"type": "object", "properties": {}})
    settings = SessionSettings("Be brief.", greeting="Start by saying: Hi", tools=(tool,))
    message = json.loads(wire.settings(config, settings))
    assert message["type"] == "Settings"
    assert message["audio"] == {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    }
    agent = message["agent"]
    assert agent["listen"] == {"provider": {"type": "deepgram", "version": "v1", "model": "nova-3"}}
    assert agent["think"] == {
        "provider": {"type": "anthropic", "model": "claude-x"},
        "prompt": "Be brief.",
        "functions": [
            {
                "name": "transfer_call",
                "description": "Transfer",
                "parameters": {"type": "object", "properties": {}},
            }
        ],
    }
    assert agent["speak"] == {"provider": {"type": "deepgram", "model": "aura-2-asteria-en"}}
    assert agent["greeting"] == "Hi, this is Ada."
    assert wire.literal_greeting(config, settings)


def test_settings_without_literal_greeting_or_tools() -> None:
    settings = SessionSettings("Be brief.", greeting="Greet the caller.")
    agent = json.loads(wire.settings(DeepgramConfig(), settings))["agent"]
    assert "greeting" not in agent and "functions" not in agent["think"]
    assert not wire.literal_greeting(DeepgramConfig(), settings)
    no_greeting = SessionSettings("Be brief.", greeting=None)
    agent = json.loads(wire.settings(DeepgramConfig(greeting="Hi"), no_greeting))["agent"]
    assert "greeting" not in agent


def test_client_messages() -> None:
    assert json.loads(wire.keep_alive()) == {"type": "KeepAlive"}
    assert json.loads(wire.function_call_response("fc_1", "f", '{"ok":true}')) == {
        "type": "FunctionCallResponse",
        "id": "fc_1",
        "name": "f",
        "content": '{"ok":true}',
    }
    assert json.loads(wire.inject_user_message("Hi")) == {
        "type": "InjectUserMessage",
        "content": "Hi",
    }
    assert json.loads(wire.inject_agent_message("Hold on")) == {
        "type": "InjectAgentMessage",
        "message": "Hold on",
    }
    assert json.loads(wire.update_prompt("P")) == {"type": "UpdatePrompt", "prompt": "P"}


def test_extended_prompt_appends_context_once_per_piece() -> None:
    once = wire.extended_prompt("Be brief.", "The caller is a VIP.")
    assert once == "Be brief.\n\nAdditional context:\n- The caller is a VIP."
    twice = wire.extended_prompt(once, "They pressed 5.")
    assert twice == once + "\n- They pressed 5."


@pytest.mark.parametrize(
    ("code", "reason", "retryable"),
    [
        (1000, "", False),
        (1008, "", False),
        (1011, "internal error", True),
        (1006, "", True),
        (1001, "", True),
        (1005, "", True),
        (1011, "INVALID_AUTH", False),
        (4000, "UNPARSABLE_CLIENT_MESSAGE", False),
    ],
)
def test_close_codes(code: int, reason: str, retryable: bool) -> None:
    assert wire.close_is_retryable(code, reason) is retryable
