"""OpenAI Realtime (GA interface) wire codec: pure functions, no I/O.

Client events are built by ``encode_*``; server events are turned into ProviderEvents by
``Decoder.decode``, a table-driven dispatcher that keeps the little per-connection state the
protocol needs (which reply item is playing). Reference: providers.md section 1.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from sip4ai.audio.formats import AudioFormat, Encoding
from sip4ai.config import OpenAIConfig
from sip4ai.errors import ProviderProtocolError
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


logger = logging.getLogger(__name__)

PCMU_8K = AudioFormat(Encoding.PCMU, 8000)

# Errors that end the session for good, and the ones a new session can recover from.
RETRYABLE_ERROR_CODES = frozenset({"session_expired", "server_error", "rate_limit_exceeded"})
FATAL_ERROR_CODES = frozenset(
    {"invalid_api_key", "beta_api_shape_disabled", "missing_required_parameter", "model_not_found"}
)
# Errors that only concern one client request and leave the session usable.
BENIGN_ERROR_CODES = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response"}
)


def _dumps(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def session_update(config: OpenAIConfig, settings: SessionSettings) -> str:
    td = config.turn_detection
    turn_detection: dict[str, Any] | None
    if td.type == "none":
        turn_detection = None
    elif td.type == "semantic_vad":
        turn_detection = {
            "type": "semantic_vad",
            "create_response": True,
            "interrupt_response": True,
        }
    else:
        turn_detection = {
            "type": "server_vad",
            "threshold": td.threshold,
            "prefix_padding_ms": td.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms,
            "create_response": True,
            "interrupt_response": True,
        }
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": settings.instructions,
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": "gpt-4o-transcribe"},
                "turn_detection": turn_detection,
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": config.voice},
        },
    }
    if settings.tools:
        session["tools"] = [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters),
            }
            for tool in settings.tools
        ]
        session["tool_choice"] = "auto"
    return _dumps({"type": "session.update", "session": session})


def append_audio(audio: bytes) -> str:
    return _dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()})


def response_create(instructions: str | None = None) -> str:
    if instructions is None:
        return _dumps({"type": "response.create"})
    return _dumps({"type": "response.create", "response": {"instructions": instructions}})


def response_cancel() -> str:
    return _dumps({"type": "response.cancel"})


def truncate(item_id: str, audio_end_ms: int) -> str:
    return _dumps(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": max(0, audio_end_ms),
        }
    )


def message_item(text: str, role: str) -> str:
    return _dumps(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": role,
                "content": [{"type": "input_text", "text": text}],
            },
        }
    )


def function_output(call_id: str, output: str) -> str:
    return _dumps(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }
    )


Handler = Callable[["Decoder", Mapping[str, Any]], list[ProviderEvent]]


class Decoder:
    """Server events -> ProviderEvents. One per connection; tracks audio bytes per reply item."""

    def __init__(self) -> None:
        self.audio_bytes: dict[str, int] = {}
        """Audio received per reply item, to clamp truncation to what exists."""

    def decode(self, raw: str | bytes) -> list[ProviderEvent]:
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ProviderProtocolError("openai: a server message is not JSON") from None
        if not isinstance(event, Mapping) or not isinstance(event.get("type"), str):
            raise ProviderProtocolError("openai: a server message has no type")
        kind: str = event["type"]
        handler = _HANDLERS.get(kind)
        if handler is None:
            logger.debug("< openai %s (ignored)", kind)
            return []
        try:
            return handler(self, event)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise ProviderProtocolError("openai: malformed event", event_type=kind) from None

    def clamp(self, item_id: str, played_ms: int) -> int:
        """Never claim more was played than the server sent (it rejects that)."""
        received_ms = self.audio_bytes.get(item_id, 0) // 8  # mu-law: 8 bytes per ms
        return max(0, min(played_ms, received_ms))

    def _audio_delta(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        audio = base64.b64decode(event["delta"], validate=True)
        item_id = str(event["item_id"])
        self.audio_bytes[item_id] = self.audio_bytes.get(item_id, 0) + len(audio)
        return [AudioOut(audio, item_id)]

    def _session_updated(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        return [Ready()]

    def _speech_started(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        return [SpeechStarted()]

    def _speech_stopped(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        return [SpeechStopped()]

    def _user_transcript(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        text = str(event["transcript"]).strip()
        return [Transcript("user", text)] if text else []

    def _ai_transcript(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        text = str(event["transcript"]).strip()
        return [Transcript("ai", text)] if text else []

    def _function_call(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        return [ToolCall(str(event["call_id"]), str(event["name"]), str(event["arguments"]))]

    def _response_done(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        response = event["response"]
        output = response.get("output") or []
        item_id = next((str(o["id"]) for o in output if o.get("type") == "message"), None)
        return [ReplyDone(str(response.get("status", "completed")), item_id)]

    def _error(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        error = event.get("error") or {}
        code = error.get("code")
        message = str(error.get("message", ""))
        if code in BENIGN_ERROR_CODES:
            logger.debug("< openai error %s (ignored)", code)
            return []
        if code in FATAL_ERROR_CODES or code in RETRYABLE_ERROR_CODES:
            return [
                Closed(
                    f"openai: {code}",
                    retryable=code in RETRYABLE_ERROR_CODES,
                    details={"message": message},
                )
            ]
        # Request-level errors (e.g. a truncate past the end): logged, the session goes on.
        logger.warning("! openai error %s: %s", code, message)
        return []


_HANDLERS: Mapping[str, Handler] = {
    "session.updated": Decoder._session_updated,
    "response.output_audio.delta": Decoder._audio_delta,
    "response.audio.delta": Decoder._audio_delta,
    "input_audio_buffer.speech_started": Decoder._speech_started,
    "input_audio_buffer.speech_stopped": Decoder._speech_stopped,
    "conversation.item.input_audio_transcription.completed": Decoder._user_transcript,
    "response.output_audio_transcript.done": Decoder._ai_transcript,
    "response.audio_transcript.done": Decoder._ai_transcript,
    "response.function_call_arguments.done": Decoder._function_call,
    "response.done": Decoder._response_done,
    "error": Decoder._error,
}
