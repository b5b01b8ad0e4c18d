"""ElevenLabs Agents (Conversational AI) wire codec: pure functions, no I/O.

Client messages are built by the module functions; server messages are turned into
ProviderEvents by ``Decoder.decode``. Reference: providers.md section 2.

The protocol has no end-of-reply event, so the decoder delimits replies itself. A reply opens
with its first ``audio`` (or its ``agent_response`` text) and ends, as ``ReplyDone``:

- ``completed`` when no audio or text of it arrived for ``REPLY_IDLE_S`` (the session calls
  ``expire`` at ``deadline``), or as soon as the next turn shows up (a ``user_transcript``, a
  ``client_tool_call``, or a second ``agent_response`` after audio);
- ``cancelled`` on ``interruption``; every later ``audio`` whose ``event_id`` is at most the
  interruption's is stale and dropped (what both official SDKs do).

ElevenLabs streams TTS faster than real time, so the idle gap normally elapses while the reply
is still being played; the bridge's goodbye waits for ReplyDone and then for the playout.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sip4ai.audio.formats import AudioFormat, Encoding
from sip4ai.config import ElevenLabsConfig
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
DEFAULT_FORMAT = PCMU_8K
"""What sip4ai expects the agent to use (providers.md: set both formats to ulaw_8000)."""
MISSING_FORMAT = AudioFormat(Encoding.PCM16, 16000)
"""Assumed when the metadata leaves a format out (the JS SDK's default)."""
REPLY_IDLE_S = 0.8
"""A reply is complete when nothing of it arrived for this long."""
SYSTEM_NUDGE = "Take the context update you just received into account and respond briefly."
"""Sent as a user_message after a contextual_update, so a system inject gets a reply."""

_FORMAT = re.compile(r"^(pcm|ulaw|alaw)_(\d{4,6})$")
_ENCODINGS = {"pcm": Encoding.PCM16, "ulaw": Encoding.PCMU, "alaw": Encoding.PCMA}


def parse_format(name: str) -> AudioFormat:
    """``ulaw_8000`` -> mu-law 8 kHz, ``pcm_16000`` -> PCM16 16 kHz; ValueError otherwise."""
    match = _FORMAT.match(name)
    if match is None:
        raise ValueError(f"unknown ElevenLabs audio format {name!r}")
    return AudioFormat(_ENCODINGS[match.group(1)], int(match.group(2)))


def format_name(fmt: AudioFormat) -> str:
    """The inverse of ``parse_format``."""
    prefix = {v: k for k, v in _ENCODINGS.items()}[fmt.encoding]
    return f"{prefix}_{fmt.rate_hz}"


def _dumps(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def merged_prompt(system_prompt: str | None, instructions: str) -> str | None:
    """The prompt override: the configured system prompt plus the call's own instructions.

    The call's instructions normally already start with the system prompt (they are built from
    it), so it is not repeated. ``None`` without a configured system prompt: the agent's own
    prompt is kept, because an override the agent does not allow closes the connection.
    """
    if not system_prompt:
        return None
    if not instructions or instructions.startswith(system_prompt):
        return instructions or system_prompt
    return f"{system_prompt}\n\n{instructions}"


def first_message(
    config: ElevenLabsConfig, settings: SessionSettings
) -> tuple[str | None, str | None]:
    """The ``first_message`` override, and the greeting instruction to send once ready.

    Without a configured ``first_message`` nothing is overridden: the agent's own first message
    greets (or the agent waits for the caller if it has none). With one, it is the greeting
    when the call's greeting is that text; a call that wants another greeting (a takeover after
    a failover) gets an empty first message and the instruction as a ``user_message``.
    """
    configured = config.first_message
    greeting = settings.greeting
    if not configured or greeting is None:
        return None, None
    if configured in greeting:
        return configured, None
    return "", greeting


def initiation(config: ElevenLabsConfig, settings: SessionSettings) -> str:
    """``conversation_initiation_client_data``, the first client message.

    Overrides are sent only for what is configured: ``agent.prompt.prompt`` from
    ``system_prompt`` (+ the call's instructions) and ``agent.first_message`` from
    ``first_message`` (see ``first_message``). Each must be enabled in the agent's Security
    settings, or the server closes the connection (1008).
    """
    agent: dict[str, Any] = {}
    prompt = merged_prompt(config.system_prompt, settings.instructions)
    if prompt:
        agent["prompt"] = {"prompt": prompt}
    first, _ = first_message(config, settings)
    if first is not None:
        agent["first_message"] = first
    message: dict[str, Any] = {"type": "conversation_initiation_client_data"}
    if agent:
        message["conversation_config_override"] = {"agent": agent}
    return _dumps(message)


def audio_chunk(audio: bytes) -> str:
    """Caller audio in the agent's input format (this message has no ``type``)."""
    return _dumps({"user_audio_chunk": base64.b64encode(audio).decode()})


def pong(event_id: int) -> str:
    return _dumps({"type": "pong", "event_id": event_id})


def tool_result(call_id: str, output: str) -> str:
    """``client_tool_result``; ``is_error`` when the output is a ``{"ok": false}`` object."""
    try:
        parsed = json.loads(output)
    except ValueError:
        parsed = None
    is_error = isinstance(parsed, Mapping) and parsed.get("ok") is False
    return _dumps(
        {
            "type": "client_tool_result",
            "tool_call_id": call_id,
            "result": output,
            "is_error": is_error,
        }
    )


def contextual_update(text: str) -> str:
    return _dumps({"type": "contextual_update", "text": text})


def user_message(text: str) -> str:
    return _dumps({"type": "user_message", "text": text})


@dataclass
class Decoded:
    """What one server message produced: events for the bridge, messages to send back now."""

    events: list[ProviderEvent] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)


@dataclass
class _Reply:
    item_id: str
    last_at: float
    text: str | None = None
    audio_bytes: int = 0


Handler = Callable[["Decoder", Mapping[str, Any], float, Decoded], None]


class Decoder:
    """Server messages -> ProviderEvents for one connection. ``now`` is any monotonic clock."""

    def __init__(self, reply_idle_s: float = REPLY_IDLE_S) -> None:
        self.reply_idle_s = reply_idle_s
        self.input_format = DEFAULT_FORMAT
        self.output_format = DEFAULT_FORMAT
        self.conversation_id: str | None = None
        self.ready = False
        self.interrupted_id = -1
        """Audio with an ``event_id`` up to this belongs to an interrupted reply."""
        self.dropped_audio = 0
        self.last_error: str | None = None
        self._reply: _Reply | None = None
        self._replies = 0

    @property
    def deadline(self) -> float | None:
        """When ``expire`` will end the open reply (``None``: no reply open)."""
        if self._reply is None:
            return None
        return self._reply.last_at + self.reply_idle_s

    def decode(self, raw: str | bytes, now: float) -> Decoded:
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ProviderProtocolError("elevenlabs: a server message is not JSON") from None
        if not isinstance(event, Mapping) or not isinstance(event.get("type"), str):
            raise ProviderProtocolError("elevenlabs: a server message has no type")
        kind: str = event["type"]
        out = Decoded()
        handler = _HANDLERS.get(kind)
        if handler is None:
            logger.debug("< elevenlabs %s (ignored)", kind)
            return out
        try:
            handler(self, event, now, out)
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
            raise ProviderProtocolError("elevenlabs: malformed event", event_type=kind) from None
        return out

    def expire(self, now: float) -> list[ProviderEvent]:
        """End the open reply if it has been idle long enough."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        return self._end_reply("completed")

    def finish(self) -> list[ProviderEvent]:
        """The connection ended: close the open reply, if any."""
        return self._end_reply("incomplete")

    def _end_reply(self, status: str) -> list[ProviderEvent]:
        reply, self._reply = self._reply, None
        if reply is None:
            return []
        events: list[ProviderEvent] = []
        if reply.text:
            events.append(Transcript("ai", reply.text))
        events.append(ReplyDone(status, reply.item_id))
        return events

    def _open_reply(self, now: float) -> _Reply:
        if self._reply is None:
            self._replies += 1
            self._reply = _Reply(f"el-reply-{self._replies}", now)
        return self._reply

    # --- handlers -------------------------------------------------------------------------------

    def _metadata(self, event: Mapping[str, Any], now: float, out: Decoded) -> None:
        meta = event["conversation_initiation_metadata_event"]
        output = meta.get("agent_output_audio_format")
        given = meta.get("user_input_audio_format")
        self.output_format = parse_format(output) if output else MISSING_FORMAT
        self.input_format = parse_format(given) if given else MISSING_FORMAT
        conversation_id = meta.get("conversation_id")
        self.conversation_id = str(conversation_id) if conversation_id else None
        if not self.ready:
            self.ready = True
            out.events.append(Ready())

    def _audio(self, event: Mapping[str, Any], now: float, out: Decoded) -> None:
        body = event["audio_event"]
        event_id = int(body["event_id"])
        audio = base64.b64decode(body["audio_base_64"], validate=True)
        if event_id <= self.interrupted_id:
            self.dropped_audio += 1
            return
        reply = self._open_reply(now)
        reply.last_at = now
        reply.audio_bytes += len(audio)
        if audio:
            out.events.append(AudioOut(audio, reply.item_id))

    def _agent_response(self, event: Mapping[str, Any], now: float, out: Decoded) -> None:
        body = event["agent_response_event"]
        event_id = body.get("event_id")
        if event_id is not None and int(event_id) <= self.interrupted_id:
            return
        text = str(body["agent_response"]).strip()
        reply = self._reply
        if reply is not None and reply.text is not None and reply.audio_bytes:
            out.events.extend(self._end_reply("completed"))  # a new reply follows at once
        reply = self._open_reply(now)
        reply.last_at = now
        reply.text = f"{reply.text} {text}".strip() if reply.text else text

    def _user_transcript(self, event: Mapping[str, Any], now: float, out: Decoded) -> None:
        text = str(event["user_transcription_event"]["user_transcript"]).strip()
        out.events.extend(self._end_reply("completed"))
        out.events.append(SpeechStopped())
        if text:
            out.events.append(Transcript("user", text))

    def _interruption(self, event: Mapping[str, Any], now: float, out: Decoded) -> None:
        body = event.get("interruption_event") or {}
        event_id = body.get("event_id")
        if event_id is not None:
            self.interrupted_id = max(self.interrupted_id, int(event_id))
        out.events.append(SpeechStarted())
        out.events.extend(self._end_reply("cancelled"))

    def _ping(self, event: Mapping[str, Any], now: float, out: Decoded) -> None:
        out.replies.append(pong(int(event["ping_event"]["event_id"])))

    def _tool_call(self, event: Mapping[str, Any], now: float, out: Decoded) -> None:
        call = event["client_tool_call"]
        parameters = call.get("parameters") or {}
        out.events.extend(self._end_reply("completed"))
        out.events.append(
            ToolCall(str(call["tool_call_id"]), str(call["tool_name"]), json.dumps(parameters))
        )

    def _correction(self, event: Mapping[str, Any], now: float, out: Decoded) -> None:
        body = event["agent_response_correction_event"]
        logger.debug(
            "< elevenlabs reply corrected to %d chars", len(body["corrected_agent_response"])
        )

    def _error(self, event: Mapping[str, Any], now: float, out: Decoded) -> None:
        body = event.get("error_event") or {}
        kind = body.get("error_type") or body.get("code") or "error"
        self.last_error = str(kind)
        logger.warning("! elevenlabs error %s: %s", kind, body.get("message", ""))
        if kind == "max_duration_exceeded":
            out.events.extend(self._end_reply("incomplete"))
            out.events.append(Closed("elevenlabs: max_duration_exceeded", retryable=False))


_HANDLERS: Mapping[str, Handler] = {
    "conversation_initiation_metadata": Decoder._metadata,
    "audio": Decoder._audio,
    "agent_response": Decoder._agent_response,
    "agent_response_correction": Decoder._correction,
    "user_transcript": Decoder._user_transcript,
    "interruption": Decoder._interruption,
    "ping": Decoder._ping,
    "client_tool_call": Decoder._tool_call,
    "error": Decoder._error,
}


def close_outcome(code: int, reason: str, last_error: str | None) -> Closed:
    """``Closed`` for a websocket close: 1000 is the agent ending the call, 1008 is a refusal
    (override not allowed, bad token, unknown agent); both final. Anything else is a dropped
    link that a new session may continue."""
    detail = f": {reason}" if reason else ""
    details = {"error": last_error} if last_error else {}
    return Closed(
        f"elevenlabs: connection closed ({code}){detail}",
        retryable=code not in (1000, 1008),
        details=details,
    )
