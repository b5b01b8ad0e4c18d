"""Deepgram Voice Agent API (v1) wire codec: pure functions and a decoder, no I/O.

Client messages are built by the functions below; server messages (JSON text frames and binary
audio frames) are turned into ProviderEvents by ``Decoder``, which keeps the little state the
protocol needs. Reference: providers.md section 4.

Deepgram has no reply ids, so the decoder numbers replies itself: ``AgentStartedSpeaking`` starts
one (a new ``item_id``), ``AgentAudioDone`` ends it with ``ReplyDone("completed")``. The agent's
``ConversationText`` lines are collected and reported as one ``Transcript("ai")`` right before
that reply's ``ReplyDone``. ``UserStartedSpeaking`` is the barge-in: ``SpeechStarted``, then
``ReplyDone("cancelled")`` for the reply being spoken, and audio still arriving for it is dropped
until the next ``AgentStartedSpeaking``. Deepgram has no "user stopped speaking" message; the
caller's finalized utterance (``ConversationText`` role ``user``) stands in for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from sip4ai.audio.formats import AudioFormat, Encoding
from sip4ai.config import DeepgramConfig
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

PCMU_8K: Final = AudioFormat(Encoding.PCMU, 8000)

RETRYABLE_ERROR_CODES: Final = frozenset({"CLIENT_MESSAGE_TIMEOUT"})
"""Errors after which a new session can carry on with the call (anything else ends it)."""

SYSTEM_CONTEXT_HEADING: Final = "Additional context:"
"""How ``inject(role="system")`` extends the prompt (see ``extended_prompt``)."""


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def settings(config: DeepgramConfig, session: SessionSettings) -> str:
    """The ``Settings`` message: mu-law 8 kHz both ways, the call's prompt and functions.

    The literal ``agent.greeting`` is sent only when the config has one and the call wants a
    greeting at all; otherwise the session asks for a greeting with ``say`` (see the session).
    """
    think: dict[str, Any] = {
        "provider": {"type": config.think_provider, "model": config.think_model},
        "prompt": session.instructions,
    }
    if session.tools:
        think["functions"] = [
            {"name": t.name, "description": t.description, "parameters": dict(t.parameters)}
            for t in session.tools
        ]
    agent: dict[str, Any] = {
        "listen": {"provider": {"type": "deepgram", "version": "v1", "model": config.listen_model}},
        "think": think,
        "speak": {"provider": {"type": "deepgram", "model": config.model}},
    }
    if config.greeting and session.greeting is not None:
        agent["greeting"] = config.greeting
    return _dumps(
        {
            "type": "Settings",
            "tags": ["sip4ai"],
            "audio": {
                "input": {"encoding": "mulaw", "sample_rate": 8000},
                "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
            },
            "agent": agent,
        }
    )


def literal_greeting(config: DeepgramConfig, session: SessionSettings) -> bool:
    """Whether ``settings`` carries a literal greeting (else the session must ask for one)."""
    return bool(config.greeting) and session.greeting is not None


def keep_alive() -> str:
    return _dumps({"type": "KeepAlive"})


def function_call_response(call_id: str, name: str, content: str) -> str:
    return _dumps({"type": "FunctionCallResponse", "id": call_id, "name": name, "content": content})


def inject_user_message(content: str) -> str:
    """A text turn of the caller: the agent answers it as if it had been spoken."""
    return _dumps({"type": "InjectUserMessage", "content": content})


def inject_agent_message(message: str) -> str:
    """Literal text the agent speaks (refused while someone is mid-turn)."""
    return _dumps({"type": "InjectAgentMessage", "message": message})


def update_prompt(prompt: str) -> str:
    return _dumps({"type": "UpdatePrompt", "prompt": prompt})


def extended_prompt(prompt: str, context: str) -> str:
    """The prompt with one more piece of background context appended."""
    if SYSTEM_CONTEXT_HEADING in prompt:
        return f"{prompt}\n- {context}"
    return f"{prompt}\n\n{SYSTEM_CONTEXT_HEADING}\n- {context}"


Handler = Callable[["Decoder", Mapping[str, Any]], list[ProviderEvent]]


class Decoder:
    """Server frames -> ProviderEvents. One per connection."""

    def __init__(self) -> None:
        self._replies = 0
        self._reply: str | None = None
        """The reply being spoken (its item id), if any."""
        self._dropping = False
        """After a barge-in: audio of the interrupted reply is discarded."""
        self._texts: list[str] = []
        """Agent ``ConversationText`` not yet reported."""
        self.call_names: dict[str, str] = {}
        """Function call id -> name, for ``FunctionCallResponse``."""
        self.dropped_audio_bytes = 0
        self.request_id: str | None = None
        self._injected: list[str] = []
        """Text sent as ``InjectUserMessage``: its echo is not the caller speaking."""

    def injected_user_text(self, text: str) -> None:
        """Expect ``text`` back as a user ``ConversationText`` and do not report it."""
        self._injected.append(text.strip())

    @property
    def speaking(self) -> str | None:
        """The item id of the reply being received, if any."""
        return self._reply

    def decode(self, raw: str | bytes) -> list[ProviderEvent]:
        if isinstance(raw, bytes):
            return self._audio(raw)
        try:
            message = json.loads(raw)
        except ValueError:
            raise ProviderProtocolError("deepgram: a server message is not JSON") from None
        if not isinstance(message, Mapping) or not isinstance(message.get("type"), str):
            raise ProviderProtocolError("deepgram: a server message has no type")
        kind: str = message["type"]
        handler = _HANDLERS.get(kind)
        if handler is None:
            logger.debug("< deepgram %s (ignored)", kind)
            return []
        try:
            return handler(self, message)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProviderProtocolError("deepgram: malformed message", event_type=kind) from None

    # --- replies -------------------------------------------------------------------------------

    def _start_reply(self) -> list[ProviderEvent]:
        events = self._end_reply("completed")
        self._replies += 1
        self._reply = f"dg-reply-{self._replies}"
        self._dropping = False
        return events

    def _end_reply(self, status: str) -> list[ProviderEvent]:
        item_id, self._reply = self._reply, None
        if item_id is None:
            return []
        events: list[ProviderEvent] = []
        if self._texts:
            events.append(Transcript("ai", " ".join(self._texts)))
            self._texts = []
        events.append(ReplyDone(status, item_id))
        return events

    def _audio(self, audio: bytes) -> list[ProviderEvent]:
        if self._dropping:
            self.dropped_audio_bytes += len(audio)
            return []
        events: list[ProviderEvent] = []
        if self._reply is None:  # audio without AgentStartedSpeaking: a reply all the same
            events = self._start_reply()
        assert self._reply is not None
        events.append(AudioOut(audio, self._reply))
        return events

    def _agent_started(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        return self._start_reply()

    def _agent_audio_done(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        return self._end_reply("completed")

    def _user_started(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        events: list[ProviderEvent] = [SpeechStarted()]
        if self._reply is not None:
            self._dropping = True
            events += self._end_reply("cancelled")
        return events

    # --- everything else -----------------------------------------------------------------------

    def _welcome(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        request_id = message.get("request_id")
        self.request_id = request_id if isinstance(request_id, str) else None
        logger.debug("< deepgram Welcome (request %s)", self.request_id)
        return []

    def _settings_applied(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        return [Ready()]

    def _conversation_text(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        role, content = message["role"], message["content"]
        if not isinstance(content, str) or role not in ("user", "assistant"):
            raise ValueError(role)
        text = content.strip()
        if not text:
            return []
        if role == "assistant":
            self._texts.append(text)
            return []
        if text in self._injected:
            self._injected.remove(text)
            return []
        return [SpeechStopped(), Transcript("user", text)]

    def _function_call_request(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        for function in message["functions"]:
            call_id, name = str(function["id"]), str(function["name"])
            if not function.get("client_side", False):
                logger.debug("< deepgram server-side function %s (not ours)", name)
                continue
            arguments = function.get("arguments", "{}")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            self.call_names[call_id] = name
            events.append(ToolCall(call_id, name, arguments))
        return events

    def _error(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        code = str(message.get("code") or "UNKNOWN")
        description = str(message.get("description") or message.get("message") or "")
        logger.warning("! deepgram error %s: %s", code, description)
        return [
            Closed(
                f"deepgram: {code}",
                retryable=code in RETRYABLE_ERROR_CODES,
                details={"description": description},
            )
        ]

    def _warning(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        logger.warning("! deepgram warning %s: %s", message.get("code"), message.get("description"))
        return []

    def _refused(self, message: Mapping[str, Any]) -> list[ProviderEvent]:
        logger.info("! deepgram refused an injection: %s", message.get("message"))
        return []


_HANDLERS: Final[Mapping[str, Handler]] = {
    "Welcome": Decoder._welcome,
    "SettingsApplied": Decoder._settings_applied,
    "ConversationText": Decoder._conversation_text,
    "UserStartedSpeaking": Decoder._user_started,
    "AgentStartedSpeaking": Decoder._agent_started,
    "AgentAudioDone": Decoder._agent_audio_done,
    "FunctionCallRequest": Decoder._function_call_request,
    "InjectionRefused": Decoder._refused,
    "Warning": Decoder._warning,
    "Error": Decoder._error,
}


def close_is_retryable(code: int, reason: str) -> bool:
    """Whether a websocket close (without an ``Error`` before it) may be retried elsewhere.

    A normal close (1000) and closes about the request itself (bad data, policy/auth, or a
    reason naming invalid credentials or an unparsable message) are final; any other (1006
    abnormal, 1011 server error, 1001 going away, ...) means the link failed.
    """
    upper = reason.upper()
    if "AUTH" in upper or "UNPARSABLE" in upper or "CREDENTIALS" in upper:
        return False
    return code not in NON_RETRYABLE_CLOSE_CODES


NON_RETRYABLE_CLOSE_CODES: Final = frozenset({1000, 1003, 1007, 1008, 4001, 4003, 4008})
