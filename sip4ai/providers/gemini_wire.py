"""Gemini Live (BidiGenerateContent) wire codec: pure functions, no I/O.

Client messages are built by the module functions; server messages are turned into
ProviderEvents by ``Decoder.decode``, which keeps the per-session state the protocol needs:
the reply being played (Gemini has no reply ids, so one is made per model turn), the output and
input transcription pieces of the current turn, the dropping of an interrupted turn's late audio,
pending tool calls, the latest session resumption handle and a pending ``goAway``.
Reference: providers.md section 3.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Final

from sip4ai.audio.formats import AudioFormat, Encoding
from sip4ai.config import GeminiConfig
from sip4ai.errors import ProviderProtocolError
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


logger = logging.getLogger(__name__)

INPUT_FORMAT: Final = AudioFormat(Encoding.PCM16, 16_000)
"""Gemini's native input: PCM16 LE mono, 16 kHz, rate declared in the mime type."""
OUTPUT_FORMAT: Final = AudioFormat(Encoding.PCM16, 24_000)
"""Gemini always answers PCM16 LE mono at 24 kHz."""
INPUT_MIME: Final = f"audio/pcm;rate={INPUT_FORMAT.rate_hz}"

FATAL_CLOSE_CODES: Final = frozenset({1007, 1008})
"""1007 invalid argument (bad setup, bad key), 1008 policy / model not found: a retry fails too."""
NORMAL_CLOSE_CODE: Final = 1000

# OpenAPI-subset schema keys Gemini's functionDeclarations accept; others (e.g.
# ``additionalProperties``, ``$schema``) make the server reject the setup with 1007.
_SCHEMA_KEYS: Final = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "anyOf",
        "propertyOrdering",
        "default",
        "example",
    }
)


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def model_name(model: str) -> str:
    """Gemini wants ``models/<id>``; accept the bare id from config too."""
    return model if model.startswith("models/") else f"models/{model}"


def system_instruction(config: GeminiConfig, settings: SessionSettings) -> str:
    """Config ``system_prompt`` plus the call's instructions (without saying it twice)."""
    parts: list[str] = []
    prompt = (config.system_prompt or "").strip()
    if prompt and prompt not in settings.instructions:
        parts.append(prompt)
    if settings.instructions.strip():
        parts.append(settings.instructions.strip())
    return "\n\n".join(parts)


def schema(value: Any) -> Any:
    """A JSON schema reduced to the OpenAPI subset of ``functionDeclarations.parameters``."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in _SCHEMA_KEYS:
                continue
            if key == "properties" and isinstance(item, Mapping):
                out[key] = {str(name): schema(prop) for name, prop in item.items()}
            elif key == "type" and isinstance(item, list):
                # JSON schema ["string", "null"] -> type + nullable.
                kinds = [k for k in item if k != "null"]
                out["type"] = kinds[0] if kinds else "string"
                if len(kinds) != len(item):
                    out["nullable"] = True
            else:
                out[key] = schema(item)
        return out
    if isinstance(value, list):
        return [schema(v) for v in value]
    return value


def function_declaration(tool: Tool) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": tool.name, "description": tool.description}
    parameters = schema(tool.parameters)
    if parameters and parameters.get("properties"):
        declaration["parameters"] = parameters
    return declaration


def setup(config: GeminiConfig, settings: SessionSettings, handle: str | None = None) -> str:
    """The first client message; ``handle`` resumes an earlier session (goAway, lost link)."""
    body: dict[str, Any] = {
        "model": model_name(config.model),
        "generationConfig": {
            "responseModalities": ["AUDIO"],
            "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": config.voice}}},
        },
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
        # Always ask for handles so a goAway or a dropped link can be resumed.
        "sessionResumption": {"handle": handle} if handle else {},
        # Without compression an audio session ends after 15 minutes.
        "contextWindowCompression": {"slidingWindow": {}},
    }
    instruction = system_instruction(config, settings)
    if instruction:
        body["systemInstruction"] = {"parts": [{"text": instruction}]}
    if settings.tools:
        body["tools"] = [
            {"functionDeclarations": [function_declaration(t) for t in settings.tools]}
        ]
    return _dumps({"setup": body})


def realtime_audio(pcm16: bytes) -> str:
    """Caller audio in ``INPUT_FORMAT``."""
    data = base64.b64encode(pcm16).decode()
    return _dumps({"realtimeInput": {"audio": {"mimeType": INPUT_MIME, "data": data}}})


def realtime_text(text: str) -> str:
    """Text the model takes like something the caller said, and answers (greeting, goodbye)."""
    return _dumps({"realtimeInput": {"text": text}})


def client_turn(text: str, *, turn_complete: bool = True) -> str:
    """An ordered user turn (context injection); ``turn_complete`` makes the model answer."""
    turn = {"role": "user", "parts": [{"text": text}]}
    return _dumps({"clientContent": {"turns": [turn], "turnComplete": turn_complete}})


def inject_text(message: str, role: str) -> str:
    """Gemini turns have no system role: system context is labelled as such in a user turn."""
    if role == "system":
        return f"System note (not said by the caller): {message}"
    return message


def tool_response(call_id: str, name: str, output: str) -> str:
    """``response`` must be a JSON object: other JSON (or plain text) goes under ``result``."""
    try:
        value = json.loads(output)
    except ValueError:
        value = output
    response = value if isinstance(value, dict) else {"result": value}
    function_response = {"id": call_id, "name": name, "response": response}
    return _dumps({"toolResponse": {"functionResponses": [function_response]}})


def close_event(code: int, reason: str) -> Closed:
    """How a websocket close ends the session when it cannot (or need not) be resumed."""
    text = f"gemini: connection closed ({code}{': ' + reason if reason else ''})"
    return Closed(text, retryable=code not in FATAL_CLOSE_CODES and code != NORMAL_CLOSE_CODE)


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)s\s*$")


def parse_duration_s(value: object) -> float | None:
    """Protobuf JSON duration (``"50s"``, ``"0.5s"``) in seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1))
    return None


class Decoder:
    """Server messages -> ProviderEvents. One per session; survives resumed connections."""

    def __init__(self) -> None:
        self.handle: str | None = None
        """Latest resumable ``sessionResumptionUpdate.newHandle``."""
        self.go_away_s: float | None = None
        """``goAway.timeLeft`` once the server announced the end of this connection."""
        self.pending_calls: dict[str, str] = {}
        """Tool calls (id -> name) awaiting a response, minus cancelled ones."""
        self.reply_id: str | None = None
        """The reply being received (None between replies)."""
        self._replies = 0
        self._ai_text: list[str] = []
        self._user_text: list[str] = []
        self._dropping = False

    @property
    def in_turn(self) -> bool:
        """A model turn is under way (audio or transcription arrived, no turnComplete yet)."""
        return self.reply_id is not None or self._dropping

    def new_connection(self) -> None:
        """A resumed connection starts: a goAway belonged to the old one."""
        self.go_away_s = None

    def decode(self, raw: str | bytes) -> list[ProviderEvent]:
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ProviderProtocolError("gemini: a server message is not JSON") from None
        if not isinstance(message, Mapping):
            raise ProviderProtocolError("gemini: a server message is not an object")
        events: list[ProviderEvent] = []
        try:
            for key, value in message.items():
                events += self._member(str(key), value)
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
            raise ProviderProtocolError("gemini: malformed message") from None
        return events

    def _member(self, key: str, value: Any) -> list[ProviderEvent]:
        if key in ("setupComplete", "setup_complete"):
            return [Ready()]
        if key in ("serverContent", "server_content"):
            return self._server_content(value)
        if key in ("toolCall", "tool_call"):
            return self._tool_call(value)
        if key in ("toolCallCancellation", "tool_call_cancellation"):
            for call_id in value.get("ids") or []:
                self.pending_calls.pop(str(call_id), None)
            return []
        if key in ("goAway", "go_away"):
            left = parse_duration_s(value.get("timeLeft", value.get("time_left")))
            self.go_away_s = left if left is not None else 0.0
            logger.info("< gemini goAway (%.1f s left)", self.go_away_s)
            return []
        if key in ("sessionResumptionUpdate", "session_resumption_update"):
            handle = value.get("newHandle", value.get("new_handle"))
            if handle and value.get("resumable", True) is not False:
                self.handle = str(handle)
            return []
        logger.debug("< gemini %s (ignored)", key)
        return []

    def _server_content(self, content: Mapping[str, Any]) -> list[ProviderEvent]:
        if not isinstance(content, Mapping):
            raise TypeError("serverContent")
        events: list[ProviderEvent] = []
        if content.get("interrupted"):
            events += self._interrupted()
        heard = content.get("inputTranscription", content.get("input_transcription"))
        if isinstance(heard, Mapping):
            self._user_text.append(str(heard.get("text") or ""))
            if heard.get("finished"):
                events += self._flush_user()
        turn = content.get("modelTurn", content.get("model_turn"))
        if isinstance(turn, Mapping):
            for part in turn.get("parts") or []:
                events += self._part(part)
        said = content.get("outputTranscription", content.get("output_transcription"))
        if isinstance(said, Mapping) and not self._dropping:
            events += self._start_reply()
            self._ai_text.append(str(said.get("text") or ""))
        if content.get("turnComplete", content.get("turn_complete")):
            events += self._turn_complete()
        return events

    def _part(self, part: Mapping[str, Any]) -> list[ProviderEvent]:
        blob = part.get("inlineData", part.get("inline_data"))
        if not isinstance(blob, Mapping) or part.get("thought"):
            return []
        mime = str(blob.get("mimeType", blob.get("mime_type", "")))
        if not mime.startswith("audio/pcm"):
            return []
        audio = base64.b64decode(blob["data"], validate=True)
        if self._dropping or not audio:
            return []
        events = self._start_reply()
        assert self.reply_id is not None
        return [*events, AudioOut(audio, self.reply_id)]

    def _start_reply(self) -> list[ProviderEvent]:
        """Open a reply if none is open; the caller's words so far end their turn."""
        if self.reply_id is not None:
            return []
        self._replies += 1
        self.reply_id = f"gemini-reply-{self._replies}"
        return self._flush_user()

    def _end_reply(self, status: str) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        text = "".join(self._ai_text).strip()
        if text:
            events.append(Transcript("ai", text))
        events.append(ReplyDone(status, self.reply_id))
        self._ai_text.clear()
        self.reply_id = None
        return events

    def _flush_user(self) -> list[ProviderEvent]:
        text = "".join(self._user_text).strip()
        self._user_text.clear()
        return [Transcript("user", text)] if text else []

    def _interrupted(self) -> list[ProviderEvent]:
        """Barge-in: end the reply now and drop what still arrives of it until turnComplete
        (the server goes "interrupted > turnComplete" for an interrupted turn)."""
        events: list[ProviderEvent] = [SpeechStarted()]
        if not self._dropping:
            events += self._end_reply("cancelled")
        self._dropping = True
        return events

    def _turn_complete(self) -> list[ProviderEvent]:
        events = self._flush_user()
        if self._dropping:
            self._dropping = False
            self._ai_text.clear()
            return events
        return events + self._end_reply("completed")

    def abort_turn(self) -> list[ProviderEvent]:
        """The connection broke mid-turn: close the open reply so nobody waits for it."""
        events = self._flush_user()
        if self._dropping:
            self._dropping = False
            return events
        if self.reply_id is not None:
            events += self._end_reply("failed")
        return events

    def _tool_call(self, value: Mapping[str, Any]) -> list[ProviderEvent]:
        events = self._flush_user()
        for call in value.get("functionCalls", value.get("function_calls")) or []:
            name = str(call["name"])
            call_id = str(call.get("id") or f"gemini-call-{len(self.pending_calls) + 1}")
            self.pending_calls[call_id] = name
            args = call.get("args") or {}
            events.append(ToolCall(call_id, name, json.dumps(args, separators=(",", ":"))))
        return events
