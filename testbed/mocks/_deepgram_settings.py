"""Validation of the Deepgram Voice Agent ``Settings`` message for the mock (pure).

Like the real API (providers.md section 4: provider objects are tagged unions, unknown fields
are rejected), any field outside the v1 schema, a wrong type or an unknown provider ``type``
makes the whole message unparsable. ``parse_settings`` raises ``SettingsError`` naming the
offending path (kept in the mock's record; the wire only gets the generic error).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sip4ai.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode


INPUT_ENCODINGS: Final = frozenset(
    {"linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus"}
    | {"speex", "g729"}
)
OUTPUT_ENCODINGS: Final = frozenset({"linear16", "mulaw", "alaw", "mp3", "opus", "flac", "aac"})
MOCK_CODECS: Final = frozenset({"linear16", "mulaw", "alaw"})
"""What the mock can actually decode (VAD) and synthesize (tones)."""

_STR, _NUM, _BOOL, _LIST, _OBJ, _ANY = str, (int, float), bool, list, dict, object

_THINK_PROVIDERS: Final[Mapping[str, Mapping[str, Any]]] = {
    "open_ai": {"model": _STR, "temperature": _NUM, "reasoning_mode": _STR},
    "anthropic": {"model": _STR, "temperature": _NUM},
    "google": {"model": _STR, "temperature": _NUM, "version": _STR},
    "groq": {"model": _STR, "temperature": _NUM},
    "aws_bedrock": {"model": _STR, "temperature": _NUM, "credentials": _OBJ},
}
_SPEAK_PROVIDERS: Final[Mapping[str, Mapping[str, Any]]] = {
    "deepgram": {"model": _STR, "speed": _NUM},
    "eleven_labs": {"model_id": _STR, "language": _STR, "language_code": _STR},
    "cartesia": {"model_id": _STR, "voice": _OBJ, "language": _STR},
    "open_ai": {"model": _STR, "voice": _STR},
    "aws_polly": {
        "voice": _STR,
        "language": _STR,
        "language_code": _STR,
        "engine": _STR,
        "credentials": _OBJ,
    },
}
_LISTEN_V1: Final = {
    "version": _STR,
    "model": _STR,
    "language": _STR,
    "keyterms": _LIST,
    "smart_format": _BOOL,
}
_LISTEN_V2: Final = {
    "version": _STR,
    "model": _STR,
    "keyterms": _LIST,
    "eot_threshold": _NUM,
    "eager_eot_threshold": _NUM,
    "eot_timeout_ms": _NUM,
    "language_hints": _LIST,
}
_ENDPOINT: Final = {"url": _STR, "headers": _OBJ, "method": _STR}


class SettingsError(ValueError):
    """The ``Settings`` message does not match the schema; ``path`` names where."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


@dataclass(frozen=True)
class WireAudio:
    """An ``audio.input``/``audio.output`` format."""

    encoding: str
    sample_rate: int

    @property
    def bytes_per_ms(self) -> float:
        return self.sample_rate / 1000 * (2 if self.encoding == "linear16" else 1)

    def decode(self, data: bytes) -> npt.NDArray[np.int16]:
        if self.encoding == "mulaw":
            return ulaw_decode(data)
        if self.encoding == "alaw":
            return alaw_decode(data)
        usable = len(data) - len(data) % 2
        return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if self.encoding == "mulaw":
            return ulaw_encode(pcm)
        if self.encoding == "alaw":
            return alaw_encode(pcm)
        return pcm.astype("<i2").tobytes()


@dataclass(frozen=True)
class AgentSettings:
    """What the mock uses from an accepted ``Settings`` message."""

    input: WireAudio
    output: WireAudio
    container: str
    prompt: str
    greeting: str | None
    functions: tuple[str, ...]
    listen_model: str | None
    think_provider: str | None
    think_model: str | None
    speak_model: str | None
    history: bool


def parse_settings(message: Mapping[str, Any]) -> AgentSettings:
    _fields(
        message,
        "",
        {
            "type": _STR,
            "tags": _LIST,
            "mip_opt_out": _BOOL,
            "experimental": _BOOL,
            "flags": _OBJ,
            "audio": _OBJ,
            "agent": (str, dict),
        },
    )
    flags = message.get("flags", {})
    _fields(flags, "flags", {"history": _BOOL})
    audio = message.get("audio", {})
    _fields(audio, "audio", {"input": _OBJ, "output": _OBJ})
    raw_in = audio.get("input", {})
    _fields(raw_in, "audio.input", {"encoding": _STR, "sample_rate": int})
    raw_out = audio.get("output", {})
    _fields(
        raw_out,
        "audio.output",
        {"encoding": _STR, "sample_rate": int, "bitrate": int, "container": _STR},
    )
    audio_in = WireAudio(raw_in.get("encoding", "linear16"), raw_in.get("sample_rate", 24000))
    audio_out = WireAudio(raw_out.get("encoding", "linear16"), raw_out.get("sample_rate", 24000))
    if audio_in.encoding not in INPUT_ENCODINGS:
        raise SettingsError("audio.input.encoding", f"unknown variant {audio_in.encoding!r}")
    if audio_out.encoding not in OUTPUT_ENCODINGS:
        raise SettingsError("audio.output.encoding", f"unknown variant {audio_out.encoding!r}")
    container = raw_out.get("container", "none")
    if container not in ("none", "wav", "ogg"):
        raise SettingsError("audio.output.container", f"unknown variant {container!r}")
    agent = message.get("agent")
    if agent is None:
        raise SettingsError("agent", "missing field")
    if isinstance(agent, str):  # a stored agent configuration: nothing to check here
        return AgentSettings(
            audio_in, audio_out, container, "", None, (), None, None, None, None, False
        )
    return _agent(agent, audio_in, audio_out, container, bool(flags.get("history", True)))


def _agent(
    agent: Mapping[str, Any], audio_in: WireAudio, audio_out: WireAudio, container: str, hist: bool
) -> AgentSettings:
    _fields(
        agent,
        "agent",
        {
            "language": _STR,
            "listen": _OBJ,
            "think": (dict, list),
            "speak": (dict, list),
            "greeting": _STR,
            "context": _OBJ,
        },
    )
    listen = agent.get("listen", {})
    _fields(listen, "agent.listen", {"provider": _OBJ})
    listen_provider = listen.get("provider", {"type": "deepgram"})
    v2 = listen_provider.get("version") == "v2"
    _provider(
        listen_provider, "agent.listen.provider", {"deepgram": _LISTEN_V2 if v2 else _LISTEN_V1}
    )
    thinks = _as_list(agent.get("think", {}), "agent.think")
    prompt, functions = "", []
    for i, think in enumerate(thinks):
        where = f"agent.think[{i}]" if isinstance(agent.get("think"), list) else "agent.think"
        _fields(
            think,
            where,
            {
                "provider": _OBJ,
                "endpoint": _OBJ,
                "prompt": _STR,
                "functions": _LIST,
                "context_length": (int, str),
            },
        )
        _provider(think.get("provider", {}), f"{where}.provider", _THINK_PROVIDERS)
        _fields(think.get("endpoint", {}), f"{where}.endpoint", _ENDPOINT)
        if i == 0:
            prompt = think.get("prompt", "")
            functions = [
                _function(f, f"{where}.functions[{k}]")
                for k, f in enumerate(think.get("functions", []))
            ]
    speaks = _as_list(agent.get("speak", {}), "agent.speak")
    for i, speak in enumerate(speaks):
        where = f"agent.speak[{i}]" if isinstance(agent.get("speak"), list) else "agent.speak"
        _fields(speak, where, {"provider": _OBJ, "endpoint": _OBJ})
        _provider(speak.get("provider", {}), f"{where}.provider", _SPEAK_PROVIDERS)
        _fields(speak.get("endpoint", {}), f"{where}.endpoint", _ENDPOINT)
    _context(agent.get("context", {}))
    think0 = thinks[0].get("provider", {}) if thinks else {}
    speak0 = speaks[0].get("provider", {}) if speaks else {}
    return AgentSettings(
        input=audio_in,
        output=audio_out,
        container=container,
        prompt=prompt,
        greeting=agent.get("greeting"),
        functions=tuple(functions),
        listen_model=listen_provider.get("model"),
        think_provider=think0.get("type"),
        think_model=think0.get("model"),
        speak_model=speak0.get("model") or speak0.get("model_id"),
        history=hist,
    )


def _as_list(value: Any, where: str) -> list[Mapping[str, Any]]:
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SettingsError(f"{where}[{i}]", "expected an object")
    return items


def _fields(obj: object, where: str, allowed: Mapping[str, Any]) -> None:
    """``obj`` is an object whose keys are all in ``allowed`` with values of the given type."""
    if not isinstance(obj, dict):
        raise SettingsError(where or "$", "expected an object")
    for key, value in obj.items():
        path = f"{where}.{key}" if where else key
        if key not in allowed:
            raise SettingsError(path, "unknown field")
        if not _type_ok(value, allowed[key]):
            raise SettingsError(path, f"invalid type {type(value).__name__}")


def _type_ok(value: object, expected: Any) -> bool:
    if expected is _ANY:
        return True
    if isinstance(value, bool):  # JSON true/false is not a number here
        return expected is bool or (isinstance(expected, tuple) and bool in expected)
    return isinstance(value, expected)


def _provider(obj: object, where: str, union: Mapping[str, Mapping[str, Any]]) -> None:
    if not isinstance(obj, dict):
        raise SettingsError(where, "expected an object")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in union:
        raise SettingsError(f"{where}.type", f"unknown variant {kind!r}")
    _fields(obj, where, {"type": _STR, **union[kind]})


def _function(obj: object, where: str) -> str:
    _fields(
        obj,
        where,
        {"name": _STR, "description": _STR, "parameters": _OBJ, "endpoint": _OBJ},
    )
    assert isinstance(obj, dict)
    name = obj.get("name")
    if not name:
        raise SettingsError(f"{where}.name", "missing field")
    _fields(obj.get("endpoint", {}), f"{where}.endpoint", _ENDPOINT)
    return str(name)


def _context(obj: object) -> None:
    _fields(obj, "agent.context", {"messages": _LIST})
    assert isinstance(obj, dict)
    messages: Sequence[Any] = obj.get("messages", [])
    for i, message in enumerate(messages):
        where = f"agent.context.messages[{i}]"
        _fields(
            message,
            where,
            {"type": _STR, "role": _STR, "content": _STR, "function_calls": _LIST},
        )
