"""Gemini Live mock: pure wire helpers (key normalisation, setup checks, server messages).

No asyncio, no sockets. Server messages are emitted in protobuf-JSON camelCase; client messages
are accepted in camelCase or snake_case (python-genai sends ``realtime_input`` with camelCase
inner fields). Reference: providers.md sections 3 and 6.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt


INVALID_ARGUMENT: Final = "Request contains an invalid argument."
BAD_KEY: Final = "API key not valid. Please pass a valid API key."
CLIENT_MESSAGES: Final = frozenset(
    {"setup", "config", "realtimeInput", "clientContent", "toolResponse"}
)
OUTPUT_RATE_HZ: Final = 24_000
OUTPUT_MIME: Final = f"audio/pcm;rate={OUTPUT_RATE_HZ}"

# Under these keys the names are the user's (function arguments, schema property names): they
# are never renamed.
_OPAQUE: Final = frozenset({"response", "args", "properties", "parametersJsonSchema"})
_RATE = re.compile(r"rate\s*=\s*([0-9]+)")


class CloseRequest(Exception):
    """The client did something the real server answers by closing the socket."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def normalize(value: Any) -> Any:
    """snake_case keys -> camelCase, recursively, except inside user-named maps."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = camel(str(key))
            out[name] = item if name in _OPAQUE else normalize(item)
        return out
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def message_kind(message: Mapping[str, Any]) -> str:
    """The top-level member naming a client message (``setup``, ``realtimeInput`` ...)."""
    kinds = [k for k in message if k in CLIENT_MESSAGES]
    if len(kinds) != 1:
        raise CloseRequest(1007, INVALID_ARGUMENT)
    return kinds[0]


def mime_rate_hz(mime: object) -> int:
    """``audio/pcm;rate=8000`` -> 8000; plain ``audio/pcm`` is 16 kHz (the native rate)."""
    if not isinstance(mime, str) or not mime.startswith("audio/pcm"):
        raise CloseRequest(1007, INVALID_ARGUMENT)
    match = _RATE.search(mime)
    return int(match.group(1)) if match else 16_000


def decode_pcm(data: object) -> bytes:
    if not isinstance(data, str):
        raise CloseRequest(1007, INVALID_ARGUMENT)
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise CloseRequest(1007, INVALID_ARGUMENT) from None


def samples(pcm: bytes) -> npt.NDArray[np.int16]:
    usable = len(pcm) - len(pcm) % 2
    return np.frombuffer(pcm[:usable], dtype="<i2").astype(np.int16)


def resample(pcm: npt.NDArray[np.int16], rate_hz: int, target_hz: int) -> npt.NDArray[np.int16]:
    """Linear interpolation (good enough for the mock's echo mode)."""
    if rate_hz == target_hz or not pcm.size:
        return pcm
    n_out = pcm.size * target_hz // rate_hz
    x_new = np.linspace(0, pcm.size - 1, n_out)
    return np.interp(x_new, np.arange(pcm.size), pcm).astype(np.int16)


@dataclass(frozen=True)
class Setup:
    """What the mock keeps of a (normalised) ``setup`` message."""

    model: str
    voice: str | None
    system_instruction: str
    tools: tuple[str, ...]
    input_transcription: bool
    output_transcription: bool
    resume_handle: str | None


def parse_setup(body: object, known_models: tuple[str, ...] | None) -> Setup:
    """Validate ``setup``; raise ``CloseRequest`` the way the real server closes."""
    if not isinstance(body, Mapping):
        raise CloseRequest(1007, INVALID_ARGUMENT)
    model = body.get("model")
    if not isinstance(model, str) or not model.startswith("models/"):
        raise CloseRequest(1007, INVALID_ARGUMENT)
    if known_models is not None and model not in known_models:
        raise CloseRequest(
            1008,
            f"{model} is not found for API version v1beta, or is not supported for "
            "bidiGenerateContent.",
        )
    generation = body.get("generationConfig") or {}
    modalities = generation.get("responseModalities", ["AUDIO"])
    if modalities != ["AUDIO"]:
        raise CloseRequest(1007, INVALID_ARGUMENT)
    voice_config = (generation.get("speechConfig") or {}).get("voiceConfig") or {}
    voice = (voice_config.get("prebuiltVoiceConfig") or {}).get("voiceName")
    instruction = body.get("systemInstruction") or {}
    parts = instruction.get("parts") or [] if isinstance(instruction, Mapping) else []
    text = "".join(str(p.get("text", "")) for p in parts if isinstance(p, Mapping))
    tools: list[str] = []
    for tool in body.get("tools") or []:
        for declaration in tool.get("functionDeclarations") or []:
            if not isinstance(declaration, Mapping) or not declaration.get("name"):
                raise CloseRequest(1007, INVALID_ARGUMENT)
            tools.append(str(declaration["name"]))
    resumption = body.get("sessionResumption")
    handle = resumption.get("handle") if isinstance(resumption, Mapping) else None
    return Setup(
        model=model,
        voice=voice if isinstance(voice, str) else None,
        system_instruction=text,
        tools=tuple(tools),
        input_transcription="inputAudioTranscription" in body,
        output_transcription="outputAudioTranscription" in body,
        resume_handle=handle if isinstance(handle, str) and handle else None,
    )


# --- server messages ---------------------------------------------------------------------------


def setup_complete(session_id: str) -> dict[str, Any]:
    return {"setupComplete": {"sessionId": session_id}}


def audio_part(pcm: bytes) -> dict[str, Any]:
    return {"inlineData": {"mimeType": OUTPUT_MIME, "data": base64.b64encode(pcm).decode()}}


def server_content(**fields: Any) -> dict[str, Any]:
    return {"serverContent": fields}


def model_audio(pcm: bytes, transcript: str | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"modelTurn": {"parts": [audio_part(pcm)]}}
    if transcript is not None:
        fields["outputTranscription"] = {"text": transcript}
    return server_content(**fields)


def tool_call(calls: list[tuple[str, str, Mapping[str, Any]]]) -> dict[str, Any]:
    return {
        "toolCall": {
            "functionCalls": [
                {"id": call_id, "name": name, "args": dict(args)} for call_id, name, args in calls
            ]
        }
    }


def go_away(time_left_s: float) -> dict[str, Any]:
    return {"goAway": {"timeLeft": f"{time_left_s:g}s"}}


def resumption_update(handle: str) -> dict[str, Any]:
    return {"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}}


def usage(prompt_tokens: int, response_tokens: int) -> dict[str, Any]:
    return {
        "promptTokenCount": prompt_tokens,
        "responseTokenCount": response_tokens,
        "totalTokenCount": prompt_tokens + response_tokens,
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": response_tokens}],
    }


def kind_of(message: Mapping[str, Any]) -> str:
    """The name a record or log line gives a message: its first non-usage member."""
    for key in message:
        if key != "usageMetadata":
            return str(key)
    return "usageMetadata" if message else "empty"


def redact(value: Any) -> Any:
    """``value`` with audio payloads replaced by their length (records and logs)."""
    if isinstance(value, dict):
        return {
            k: (f"<{len(v)} b64 chars>" if k == "data" and isinstance(v, str) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
