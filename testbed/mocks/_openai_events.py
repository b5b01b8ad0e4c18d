"""Builders for OpenAI Realtime GA server events and objects (pure, no I/O).

Shapes follow openai-python ``src/openai/types/realtime`` (GA) as summarised in providers.md
section 1: ``realtime.item`` / ``realtime.response`` objects, ``status_details`` and ``usage``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any, Final

from testbed.mocks._openai_session import AudioFormat, WireError


CLIENT_EVENT_TYPES: Final = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "input_audio_buffer.commit",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
)


def new_id(prefix: str) -> str:
    """An id shaped like the real ones: prefix, underscore, 21 url-safe characters."""
    return f"{prefix}_{secrets.token_urlsafe(16)[:21]}"


def error_event(error: WireError, event_id: str | None) -> dict[str, Any]:
    return {"type": "error", "error": error.to_error(event_id)}


def http_error_body(error: WireError) -> dict[str, Any]:
    """The JSON body of an HTTP error from the REST front (auth failures on the upgrade)."""
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }


def mask_key(key: str) -> str:
    """How OpenAI echoes a wrong key: the start and the last four characters."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"


def auth_error(authorization: str | None, expected_key: str | None) -> WireError | None:
    """``None`` if ``Authorization`` carries an accepted bearer key, else the API's error."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return WireError("Missing bearer or basic authentication in header")
    key = authorization[7:].strip()
    if not key or (expected_key is not None and key != expected_key):
        return WireError(
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
    return None


BETA_SHAPE_ERROR: Final = WireError(
    "The beta Realtime API shape is disabled; connect without the 'OpenAI-Beta: realtime=v1' "
    "header to use the GA interface.",
    code="beta_api_shape_disabled",
)


def session_expired_error(limit_minutes: int) -> WireError:
    return WireError(
        f"Your session hit the maximum duration of {limit_minutes} minutes.",
        code="session_expired",
    )


def assistant_message(item_id: str, status: str, transcript: str | None) -> dict[str, Any]:
    content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def user_audio_message(item_id: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def usage(
    *, input_text: int, input_audio_ms: int, output_text: int, output_audio_ms: int
) -> dict[str, Any]:
    """Deterministic stand-in token counts (about one audio token per 50 ms)."""
    in_audio = math.ceil(input_audio_ms / 50)
    out_audio = math.ceil(output_audio_ms / 50)
    total_in = input_text + in_audio
    total_out = output_text + out_audio
    return {
        "total_tokens": total_in + total_out,
        "input_tokens": total_in,
        "output_tokens": total_out,
        "input_token_details": {
            "text_tokens": input_text,
            "audio_tokens": in_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": out_audio},
    }


def response_object(
    *,
    response_id: str,
    conversation_id: str,
    status: str,
    reason: str | None,
    output: list[dict[str, Any]],
    output_format: AudioFormat,
    voice: str | Mapping[str, Any],
    usage_obj: dict[str, Any] | None,
) -> dict[str, Any]:
    details: dict[str, Any] | None = None
    if status in ("cancelled", "incomplete", "failed"):
        details = {"type": status, "reason": reason}
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": details,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": output_format.to_wire(), "voice": voice}},
        "usage": usage_obj,
        "metadata": None,
    }


def word_chunks(text: str) -> list[str]:
    """Split a transcript into deltas that concatenate back to it exactly."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]
