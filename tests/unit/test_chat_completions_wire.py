"""Chat Completions request body, SSE parsing and stream decoding on recorded lines (5d)."""

from __future__ import annotations

import json

import pytest

from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import chat_completions_wire as wire
from sip4ai.providers.base import Tool


pytestmark = pytest.mark.unit

HEAD = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
TEXT_STREAM_LINES = [
    HEAD
    + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
    HEAD + '"choices":[{"index":0,"delta":{"content":"Sure, "},"finish_reason":null}]}',
    HEAD + '"choices":[{"index":0,"delta":{"content":"I can help."},"finish_reason":null}]}',
    HEAD + '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    HEAD + '"choices":[],"usage":{"prompt_tokens":50,"completion_tokens":9,"total_tokens":59}}',
    "[DONE]",
]
TEXT_STREAM = "".join(f"data: {line}\n\n" for line in TEXT_STREAM_LINES).encode()

TOOL_STREAM_LINES = [
    '{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":"transfer_call","arguments":""}}]},"finish_reason":null}]}',
    '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"to\\":"}}]},"finish_reason":null}]}',
    '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_def","type":"function","function":{"name":"lookup","arguments":"{}"}}]},"finish_reason":null}]}',
    '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"sales\\"}"}}]},"finish_reason":null}]}',
    '{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
    "[DONE]",
]


def decode_all(payloads: list[str]) -> list[wire.ChatEvent]:
    decoder = wire.StreamDecoder()
    out: list[wire.ChatEvent] = []
    for data in payloads:
        out += decoder.decode(data)
    return out


def test_request_body_streams_with_tools() -> None:
    tool = Tool("transfer_call", "Transfer", {"type": "object", "properties": {"to": {}}})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = wire.request_body("gpt-4o-mini", messages, (tool,))
    assert body["model"] == "gpt-4o-mini" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == messages and body["messages"] is not messages
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "transfer_call",
                "description": "Transfer",
                "parameters": {"type": "object", "properties": {"to": {}}},
            },
        }
    ]
    assert body["tool_choice"] == "auto"
    assert "tools" not in wire.request_body("m", messages)
    assert wire.auth_headers("k")["Authorization"] == "Bearer k"


def test_sse_parser_handles_split_chunks_crlf_and_comments() -> None:
    parser = wire.SseParser()
    raw = TEXT_STREAM.replace(b"\n", b"\r\n")
    payloads: list[str] = []
    for i in range(0, len(raw), 7):
        payloads += parser.feed(raw[i : i + 7])
    payloads += parser.close()
    assert len(payloads) == 6 and payloads[-1] == "[DONE]"
    assert wire.SseParser().feed(b": keep-alive\n\nevent: x\ndata: a\ndata: b\n\n") == ["a\nb"]
    parser = wire.SseParser()
    assert parser.feed(b"data: tail") == [] and parser.close() == ["tail"]


def test_text_stream_decodes_to_deltas_then_finished() -> None:
    payloads = wire.SseParser().feed(TEXT_STREAM)
    decoder = wire.StreamDecoder()
    events: list[wire.ChatEvent] = []
    for data in payloads:
        events += decoder.decode(data)
    assert events == [
        wire.TextDelta("Sure, "),
        wire.TextDelta("I can help."),
        wire.Finished("stop", ()),
    ]
    assert decoder.usage == {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}
    assert decoder.decode('{"choices":[{"index":0,"delta":{"content":"late"}}]}') == []


def test_tool_call_fragments_are_joined_per_index() -> None:
    events = decode_all(TOOL_STREAM_LINES)
    assert events == [
        wire.Finished(
            "tool_calls",
            (
                wire.ToolCallRequest("call_abc", "transfer_call", '{"to":"sales"}'),
                wire.ToolCallRequest("call_def", "lookup", "{}"),
            ),
        )
    ]


def test_stream_without_done_can_be_finished() -> None:
    decoder = wire.StreamDecoder()
    decoder.decode(TOOL_STREAM_LINES[0])
    assert decoder.finish() == wire.Finished(
        None, (wire.ToolCallRequest("call_abc", "transfer_call", "{}"),)
    )


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        "[]",
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{}}]}}]}',
        '{"error":{"message":"overloaded","code":"server_error"}}',
    ],
)
def test_malformed_or_error_chunks_raise(data: str) -> None:
    with pytest.raises(ProviderProtocolError):
        wire.StreamDecoder().decode(data)


def test_error_bodies_and_retry_policy() -> None:
    body = json.dumps(
        {
            "error": {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    ).encode()
    assert wire.error_message(401, body) == ("Incorrect API key provided", "invalid_api_key")
    assert wire.error_message(502, b"<html>bad gateway</html>") == ("HTTP 502", None)
    assert wire.retryable_status(429) and wire.retryable_status(503)
    assert not wire.retryable_status(400) and not wire.retryable_status(401)
