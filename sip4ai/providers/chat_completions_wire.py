"""OpenAI Chat Completions streaming (SSE) wire codec: pure functions, no I/O.

``request_body`` builds the POST body; ``SseParser`` splits the response bytes into ``data:``
payloads; ``StreamDecoder`` turns chunk JSON into text deltas and, at the end, the complete
tool calls (argument fragments concatenated per ``index``). Reference: providers.md section 5d.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sip4ai.errors import ProviderProtocolError
from sip4ai.providers.base import Tool


DONE_SENTINEL = "[DONE]"


def request_body(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Tool] = (),
    *,
    temperature: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [dict(m) for m in messages],
    }
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": dict(tool.parameters),
                },
            }
            for tool in tools
        ]
        body["tool_choice"] = "auto"
    if temperature is not None:
        body["temperature"] = temperature
    return body


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def error_message(status: int, body: bytes) -> tuple[str, str | None]:
    """``(message, code)`` from an HTTP error answer ``{"error": {...}}`` (best effort)."""
    try:
        error = json.loads(body).get("error") or {}
        return str(error.get("message") or f"HTTP {status}"), error.get("code")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return f"HTTP {status}", None


def retryable_status(status: int) -> bool:
    """Worth another attempt (or another provider): rate limits and server errors."""
    return status == 429 or status >= 500


class SseParser:
    """Incremental ``text/event-stream`` parser: bytes in, ``data`` payloads out.

    Events end with a blank line; several ``data:`` lines of one event are joined with newlines;
    comments (``:``) and other fields (``event:``, ``id:``) are ignored. CRLF is accepted.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        out: list[str] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return out
            line = self._buffer[:end].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buffer = self._buffer[end + 1 :]
            if not line:
                if self._data:
                    out.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if name == "data":
                self._data.append(value[1:] if value.startswith(" ") else value)

    def close(self) -> list[str]:
        """End of stream: a last event not followed by a blank line still counts."""
        out = self.feed(b"\n\n") if self._buffer or self._data else []
        return out


# ---- decoded stream ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The stream ended (``[DONE]``): why, and the complete tool calls if any."""

    finish_reason: str | None
    tool_calls: tuple[ToolCallRequest, ...] = ()


ChatEvent = TextDelta | Finished


@dataclass
class _PartialCall:
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamDecoder:
    """``data`` payloads of one response -> ``TextDelta``s, then one ``Finished`` on ``[DONE]``."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self._finish_reason: str | None = None
        self.done = False
        self.usage: Mapping[str, Any] | None = None

    def decode(self, data: str) -> list[ChatEvent]:
        if self.done:
            return []
        if data.strip() == DONE_SENTINEL:
            return [self.finish()]
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProviderProtocolError("chat completions: a stream event is not JSON") from None
        if not isinstance(chunk, Mapping):
            raise ProviderProtocolError("chat completions: a stream event is not an object")
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], Mapping) else {}
            raise ProviderProtocolError(
                f"chat completions: error in stream: {error.get('message', '')}",
                event_type=str(error.get("code") or "error"),
            )
        try:
            return self._chunk(chunk)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProviderProtocolError("chat completions: malformed chunk") from None

    def _chunk(self, chunk: Mapping[str, Any]) -> list[ChatEvent]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out: list[ChatEvent] = []
        for choice in chunk.get("choices") or ():
            if int(choice.get("index", 0)) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                out.append(TextDelta(str(content)))
            for fragment in delta.get("tool_calls") or ():
                self._tool_fragment(fragment)
            if choice.get("finish_reason"):
                self._finish_reason = str(choice["finish_reason"])
        return out

    def _tool_fragment(self, fragment: Mapping[str, Any]) -> None:
        call = self._calls.setdefault(int(fragment["index"]), _PartialCall())
        if fragment.get("id"):
            call.call_id = str(fragment["id"])
        function = fragment.get("function") or {}
        if function.get("name"):
            call.name += str(function["name"])
        if function.get("arguments"):
            call.arguments.append(str(function["arguments"]))

    def finish(self) -> Finished:
        """The stream's result so far (also used when it ends without ``[DONE]``)."""
        self.done = True
        calls = tuple(
            ToolCallRequest(c.call_id, c.name, "".join(c.arguments) or "{}")
            for _, c in sorted(self._calls.items())
            if c.call_id and c.name
        )
        return Finished(self._finish_reason, calls)
