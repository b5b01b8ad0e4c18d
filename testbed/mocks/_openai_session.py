"""OpenAI Realtime GA session state for the mock: validation of ``session.update`` and the
``session`` object of ``session.created``/``session.updated``. Pure: no asyncio, no sockets.

Error texts are the ones real clients have logged (providers.md section 1 and the captures
cited in the mock's docstring); where no capture exists the text follows OpenAI's usual style.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sip4ai.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode


VOICES: Final = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
FORMAT_TYPES: Final = ("audio/pcm", "audio/pcmu", "audio/pcma")
DEFAULT_INSTRUCTIONS: Final = "You are a helpful, witty, and friendly AI."
_SESSION_KEYS: Final = frozenset(
    {
        "type",
        "model",
        "instructions",
        "output_modalities",
        "audio",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "tracing",
        "truncation",
        "prompt",
        "include",
        "reasoning",
        "parallel_tool_calls",
    }
)
_INPUT_KEYS: Final = frozenset({"format", "transcription", "noise_reduction", "turn_detection"})
_OUTPUT_KEYS: Final = frozenset({"format", "voice", "speed"})
_VAD_KEYS: Final = {
    "server_vad": frozenset(
        {
            "type",
            "threshold",
            "prefix_padding_ms",
            "silence_duration_ms",
            "create_response",
            "interrupt_response",
            "idle_timeout_ms",
        }
    ),
    "semantic_vad": frozenset({"type", "eagerness", "create_response", "interrupt_response"}),
}


class WireError(Exception):
    """An OpenAI ``error`` object: ``{type, code, message, param, event_id}``."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type

    def to_error(self, event_id: str | None) -> dict[str, Any]:
        return {
            "type": self.error_type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": event_id,
        }


def unknown_parameter(param: str) -> WireError:
    return WireError(f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)


def missing_parameter(param: str) -> WireError:
    return WireError(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def invalid_value(value: object, supported: tuple[str, ...], param: str) -> WireError:
    """OpenAI's wording: "'a' and 'b'" for two values, "'a', 'b', and 'c'" for more."""
    quoted = [f"'{s}'" for s in supported]
    if len(quoted) <= 2:
        listed = " and ".join(quoted)
    else:
        listed = ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
    shown = f"'{value}'" if isinstance(value, str) else repr(value)
    return WireError(
        f"Invalid value: {shown}. Supported values are: {listed}.",
        code="invalid_value",
        param=param,
    )


def invalid_type(param: str, expected: str) -> WireError:
    return WireError(
        f"Invalid type for '{param}': expected {expected}.", code="invalid_type", param=param
    )


@dataclass(frozen=True)
class AudioFormat:
    """A GA audio format; G.711 is implicitly 8 kHz, ``audio/pcm`` is PCM16 LE at 24 kHz."""

    type: str = "audio/pcm"

    @property
    def rate_hz(self) -> int:
        return 24_000 if self.type == "audio/pcm" else 8_000

    @property
    def bytes_per_ms(self) -> int:
        return 48 if self.type == "audio/pcm" else 8

    def to_wire(self) -> dict[str, Any]:
        if self.type == "audio/pcm":
            return {"type": self.type, "rate": 24_000}
        return {"type": self.type}

    def decode(self, data: bytes) -> npt.NDArray[np.int16]:
        if self.type == "audio/pcmu":
            return ulaw_decode(data)
        if self.type == "audio/pcma":
            return alaw_decode(data)
        usable = len(data) - len(data) % 2
        return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if self.type == "audio/pcmu":
            return ulaw_encode(pcm)
        if self.type == "audio/pcma":
            return alaw_encode(pcm)
        return pcm.astype("<i2").tobytes()

    def transcode(self, data: bytes, target: AudioFormat) -> bytes:
        """``data`` in this format re-encoded as ``target`` (linear interpolation for rate)."""
        if target == self:
            return data
        pcm = self.decode(data)
        if target.rate_hz != self.rate_hz and pcm.size:
            n_out = pcm.size * target.rate_hz // self.rate_hz
            x_new = np.linspace(0, pcm.size - 1, n_out)
            pcm = np.interp(x_new, np.arange(pcm.size), pcm).astype(np.int16)
        return target.encode(pcm)


@dataclass(frozen=True)
class TurnDetection:
    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None
    eagerness: str = "auto"

    def to_wire(self) -> dict[str, Any]:
        if self.type == "semantic_vad":
            return {
                "type": self.type,
                "eagerness": self.eagerness,
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response,
            }
        return {
            "type": self.type,
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
            "create_response": self.create_response,
            "interrupt_response": self.interrupt_response,
            "idle_timeout_ms": self.idle_timeout_ms,
        }


@dataclass(frozen=True)
class SessionConfig:
    """The session as the mock applies it; ``to_wire`` renders the GA session object."""

    id: str
    model: str
    expires_at: int
    instructions: str = DEFAULT_INSTRUCTIONS
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: AudioFormat = AudioFormat()
    output_format: AudioFormat = AudioFormat()
    turn_detection: TurnDetection | None = TurnDetection()
    transcription: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None
    voice: str | dict[str, Any] = "alloy"
    speed: float = 1.0
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    max_output_tokens: int | str = "inf"
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields accepted and echoed without effect (tracing, truncation, prompt, ...)."""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": [copy.deepcopy(t) for t in self.tools],
            "tool_choice": copy.deepcopy(self.tool_choice),
            "max_output_tokens": self.max_output_tokens,
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": self.expires_at,
            "audio": {
                "input": {
                    "format": self.input_format.to_wire(),
                    "transcription": copy.deepcopy(self.transcription),
                    "noise_reduction": copy.deepcopy(self.noise_reduction),
                    "turn_detection": (
                        self.turn_detection.to_wire() if self.turn_detection else None
                    ),
                },
                "output": {
                    "format": self.output_format.to_wire(),
                    "voice": copy.deepcopy(self.voice),
                    "speed": self.speed,
                },
            },
            "include": None,
        }
        wire.update(copy.deepcopy(self.extra))
        return wire


def apply_session_update(
    current: SessionConfig, session: object, *, voice_locked: bool
) -> SessionConfig:
    """Validate a GA ``session.update`` payload and merge it; raise ``WireError`` on any fault.

    A rejected update changes nothing (the real API refuses the whole update).
    ``voice_locked`` is true once the model produced audio: the voice cannot change after that.
    """
    if not isinstance(session, dict):
        raise invalid_type("session", "an object")
    if "type" not in session:
        raise missing_parameter("session.type")
    if session["type"] == "transcription":
        raise WireError(
            "Passing a transcription session update event to a realtime session is not allowed.",
            code="invalid_value",
            param="session.type",
        )
    if session["type"] != "realtime":
        raise invalid_value(session["type"], ("realtime", "transcription"), "session.type")
    for key in session:
        if key not in _SESSION_KEYS:
            raise unknown_parameter(f"session.{key}")
    new = current
    if "instructions" in session:
        if not isinstance(session["instructions"], str):
            raise invalid_type("session.instructions", "a string")
        new = replace(new, instructions=session["instructions"])
    if "output_modalities" in session:
        new = replace(new, output_modalities=_modalities(session["output_modalities"]))
    if "audio" in session:
        new = _apply_audio(new, session["audio"], voice_locked=voice_locked)
    if "tools" in session:
        new = replace(new, tools=_tools(session["tools"]))
    if "tool_choice" in session:
        new = replace(new, tool_choice=_tool_choice(session["tool_choice"]))
    if "max_output_tokens" in session:
        new = replace(new, max_output_tokens=_max_tokens(session["max_output_tokens"]))
    passthrough = {k: session[k] for k in ("tracing", "truncation", "prompt") if k in session}
    if passthrough:
        new = replace(new, extra={**new.extra, **passthrough})
    return new


def _modalities(value: object) -> tuple[str, ...]:
    param = "session.output_modalities"
    if not isinstance(value, list) or not value:
        raise invalid_type(param, "a non-empty array")
    for item in value:
        if item not in ("audio", "text"):
            raise invalid_value(item, ("text", "audio"), param)
    if len(set(value)) > 1:
        raise WireError(
            "Invalid modalities: ['audio', 'text']. Supported combinations are: ['text'] "
            "and ['audio'].",
            code="invalid_value",
            param=param,
        )
    return (str(value[0]),)


def _apply_audio(new: SessionConfig, audio: object, *, voice_locked: bool) -> SessionConfig:
    if not isinstance(audio, dict):
        raise invalid_type("session.audio", "an object")
    for key in audio:
        if key not in ("input", "output"):
            raise unknown_parameter(f"session.audio.{key}")
    audio_in = audio.get("input", {})
    if not isinstance(audio_in, dict):
        raise invalid_type("session.audio.input", "an object")
    for key in audio_in:
        if key not in _INPUT_KEYS:
            raise unknown_parameter(f"session.audio.input.{key}")
    if "format" in audio_in:
        new = replace(new, input_format=_format(audio_in["format"], "session.audio.input.format"))
    if "turn_detection" in audio_in:
        new = replace(new, turn_detection=_turn_detection(audio_in["turn_detection"]))
    if "transcription" in audio_in:
        new = replace(new, transcription=_object_or_null(audio_in, "transcription"))
    if "noise_reduction" in audio_in:
        new = replace(new, noise_reduction=_object_or_null(audio_in, "noise_reduction"))
    audio_out = audio.get("output", {})
    if not isinstance(audio_out, dict):
        raise invalid_type("session.audio.output", "an object")
    for key in audio_out:
        if key not in _OUTPUT_KEYS:
            raise unknown_parameter(f"session.audio.output.{key}")
    if "format" in audio_out:
        fmt = _format(audio_out["format"], "session.audio.output.format")
        new = replace(new, output_format=fmt)
    if "voice" in audio_out:
        voice = _voice(audio_out["voice"])
        if voice_locked and voice != new.voice:
            raise WireError(
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
            )
        new = replace(new, voice=voice)
    if "speed" in audio_out:
        speed = audio_out["speed"]
        param = "session.audio.output.speed"
        if not isinstance(speed, int | float) or isinstance(speed, bool):
            raise invalid_type(param, "a number")
        _check_range(float(speed), 0.25, 1.5, param)
        new = replace(new, speed=float(speed))
    return new


def _object_or_null(audio_in: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = audio_in[key]
    if value is not None and not isinstance(value, dict):
        raise invalid_type(f"session.audio.input.{key}", "an object or null")
    return value


def _format(value: object, param: str) -> AudioFormat:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object")
    if "type" not in value:
        raise missing_parameter(f"{param}.type")
    kind = value["type"]
    if kind not in FORMAT_TYPES:
        raise invalid_value(kind, FORMAT_TYPES, f"{param}.type")
    for key in value:
        if key not in ("type", "rate"):
            raise unknown_parameter(f"{param}.{key}")
    if "rate" in value:
        if kind != "audio/pcm":
            raise unknown_parameter(f"{param}.rate")
        if value["rate"] != 24_000:
            raise WireError(
                f"Invalid value: {value['rate']!r}. Supported values are: 24000.",
                code="invalid_value",
                param=f"{param}.rate",
            )
    return AudioFormat(str(kind))


def _turn_detection(value: object) -> TurnDetection | None:
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_type(param, "an object or null")
    kind = value.get("type")
    if kind is None:
        raise missing_parameter(f"{param}.type")
    if kind not in _VAD_KEYS:
        raise invalid_value(kind, tuple(_VAD_KEYS), f"{param}.type")
    for key in value:
        if key not in _VAD_KEYS[kind]:
            raise unknown_parameter(f"{param}.{key}")
    td = TurnDetection(type=str(kind))
    if "threshold" in value:
        threshold = _number(value["threshold"], f"{param}.threshold")
        _check_range(threshold, 0.0, 1.0, f"{param}.threshold")
        td = replace(td, threshold=threshold)
    prefix_ms = _ms(value, "prefix_padding_ms", param)
    silence_ms = _ms(value, "silence_duration_ms", param)
    td = replace(
        td,
        prefix_padding_ms=td.prefix_padding_ms if prefix_ms is None else prefix_ms,
        silence_duration_ms=td.silence_duration_ms if silence_ms is None else silence_ms,
        idle_timeout_ms=_ms(value, "idle_timeout_ms", param),
        create_response=_flag(value, "create_response", param),
        interrupt_response=_flag(value, "interrupt_response", param),
    )
    if "eagerness" in value:
        if value["eagerness"] not in ("low", "medium", "high", "auto"):
            raise invalid_value(
                value["eagerness"], ("low", "medium", "high", "auto"), f"{param}.eagerness"
            )
        td = replace(td, eagerness=str(value["eagerness"]))
    return td


def _ms(value: dict[str, Any], key: str, param: str) -> int | None:
    raw = value.get(key)
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise invalid_type(f"{param}.{key}", "a non-negative integer")
    return raw


def _flag(value: dict[str, Any], key: str, param: str) -> bool:
    raw = value.get(key, True)
    if not isinstance(raw, bool):
        raise invalid_type(f"{param}.{key}", "a boolean")
    return raw


def _number(value: object, param: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid_type(param, "a number")
    return float(value)


def _check_range(value: float, low: float, high: float, param: str) -> None:
    if value > high:
        raise WireError(
            f"Invalid '{param}': decimal above maximum value. Expected a value <= {high:g}, "
            f"but got {value:g} instead.",
            code="decimal_above_max_value",
            param=param,
        )
    if value < low:
        raise WireError(
            f"Invalid '{param}': decimal below minimum value. Expected a value >= {low:g}, "
            f"but got {value:g} instead.",
            code="decimal_below_min_value",
            param=param,
        )


def _voice(value: object) -> str | dict[str, Any]:
    param = "session.audio.output.voice"
    if isinstance(value, dict):
        if not isinstance(value.get("id"), str):
            raise missing_parameter(f"{param}.id")
        return dict(value)
    if value not in VOICES:
        raise invalid_value(value, VOICES, param)
    return str(value)


def _tools(value: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        raise invalid_type("session.tools", "an array")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        param = f"session.tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid_type(param, "an object")
        if tool.get("type") not in ("function", "mcp"):
            raise invalid_value(tool.get("type"), ("function", "mcp"), f"{param}.type")
        if tool["type"] == "function":
            for key in tool:
                if key not in ("type", "name", "description", "parameters"):
                    raise unknown_parameter(f"{param}.{key}")
            if not isinstance(tool.get("name"), str):
                raise missing_parameter(f"{param}.name")
        tools.append(copy.deepcopy(tool))
    return tuple(tools)


def _tool_choice(value: object) -> str | dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if value not in ("auto", "none", "required"):
        raise invalid_value(value, ("none", "auto", "required"), "session.tool_choice")
    return str(value)


def _max_tokens(value: object) -> int | str:
    param = "session.max_output_tokens"
    if value == "inf":
        return "inf"
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
        raise WireError(
            'max_output_tokens must be an integer between 1 and 4096, or "inf"',
            code="invalid_value",
            param=param,
        )
    return value
