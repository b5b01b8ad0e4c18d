"""What the Deepgram Voice Agent mock says (``DeepgramScript``) and what it saw (records).

``DeepgramScript`` is the OpenAI mock's ``Script`` (same JSON shape: replies, transcripts,
function_calls, think_ms, speed, faults, ...) plus a few Deepgram-only knobs, so one script file
can drive every provider mock. OpenAI-only fields (``reject_beta_header``,
``legacy_item_created``, ``session_max_s``, ``truncate_clamp_after_error``) are accepted and
ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from testbed.mocks._deepgram_settings import AgentSettings
from testbed.mocks._openai_script import Script
from testbed.mocks._ws_common import EventRecord


@dataclass(frozen=True)
class DeepgramScript(Script):
    """``Script`` plus the Deepgram-specific behaviour of the mock."""

    client_message_timeout_s: float | None = 10.0
    """``CLIENT_MESSAGE_TIMEOUT`` error + close after this long without audio (or KeepAlive)."""
    keepalive_counts: bool = True
    """``KeepAlive`` resets the timeout (docs); ``False`` imitates deepgram-js-sdk#419."""
    settings_delay_ms: int = 0
    """Delay before ``SettingsApplied`` (a slow start after the upgrade)."""
    error_close_code: int = 1000
    """Close code after an ``Error`` (1000 and 1005 are observed)."""
    server_side_functions: tuple[str, ...] = ()
    """Scripted function calls by these names are ``client_side: false`` (the server runs them)."""
    stale_audio_ms: int = 0
    """Audio of an interrupted reply still sent after ``UserStartedSpeaking`` (in flight)."""
    audio_done_after_barge_in: bool = False
    """Also send ``AgentAudioDone`` for a reply cut by barge-in."""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DeepgramScript:
        values = dict(raw)
        if "server_side_functions" in values:
            values["server_side_functions"] = tuple(str(n) for n in raw["server_side_functions"])
        script = super().from_json(values)
        assert isinstance(script, DeepgramScript)
        return script

    @classmethod
    def load(cls, path: Path) -> DeepgramScript:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_json(raw)


ReplyTrigger = Literal["greeting", "turn", "inject_user", "inject_agent", "function", "echo"]


@dataclass
class ReplyRecord:
    """One agent reply (a ``AgentStartedSpeaking`` .. ``AgentAudioDone`` span)."""

    number: int
    trigger: ReplyTrigger
    text: str
    tone_hz: float
    duration_ms: int
    created_at: float
    started_at: float | None = None
    """Monotonic time ``AgentStartedSpeaking`` was written to the socket."""
    first_audio_at: float | None = None
    """Monotonic time the first binary audio frame was written to the socket."""
    audio_bytes_sent: int = 0
    audio_ms_sent: int = 0
    stale_bytes_sent: int = 0
    """Audio sent after ``UserStartedSpeaking`` cut the reply (``stale_audio_ms``)."""
    status: Literal["in_progress", "completed", "interrupted"] = "in_progress"
    done_at: float | None = None


@dataclass
class UserTurn:
    number: int
    audio_start_ms: int
    speech_started_at: float | None = None
    """Monotonic time ``UserStartedSpeaking`` was written to the socket."""
    audio_end_ms: int | None = None
    transcript: str | None = None
    interrupted_reply: int | None = None


@dataclass
class FunctionRequestRecord:
    id: str
    name: str
    arguments: str
    client_side: bool
    at: float


@dataclass
class FunctionResponseRecord:
    id: str
    name: str | None
    content: str
    known: bool
    """The id was one of a pending client-side request."""
    at: float


@dataclass
class InjectRecord:
    kind: Literal["user", "agent", "prompt"]
    """``InjectUserMessage``, ``InjectAgentMessage`` or ``UpdatePrompt``."""
    text: str
    at: float
    behavior: str | None = None
    accepted: bool = True


@dataclass
class ConnectionRecord:
    """Everything one websocket connection of the mock saw and did."""

    number: int
    path: str
    headers: dict[str, str]
    opened_at: float
    received: list[EventRecord] = field(default_factory=list)
    """JSON messages from the client (binary audio is in ``audio_in``)."""
    sent: list[EventRecord] = field(default_factory=list)
    """JSON messages to the client (binary audio is counted in ``replies``)."""
    audio_in: bytearray = field(default_factory=bytearray)
    audio_before_applied: int = 0
    """Bytes of audio received before ``SettingsApplied`` was sent (not processed)."""
    keepalives: list[float] = field(default_factory=list)
    settings: dict[str, Any] | None = None
    """The raw ``Settings`` message."""
    applied: AgentSettings | None = None
    settings_error: str | None = None
    """Why ``Settings`` (or a first message) was rejected, naming the field."""
    prompt: str = ""
    user_turns: list[UserTurn] = field(default_factory=list)
    replies: list[ReplyRecord] = field(default_factory=list)
    function_requests: list[FunctionRequestRecord] = field(default_factory=list)
    function_responses: list[FunctionResponseRecord] = field(default_factory=list)
    injects: list[InjectRecord] = field(default_factory=list)
    closed_at: float | None = None
    close_code: int | None = None

    def received_of(self, event_type: str) -> list[dict[str, Any]]:
        return [r.event for r in self.received if r.type == event_type]

    def sent_of(self, event_type: str) -> list[dict[str, Any]]:
        return [r.event for r in self.sent if r.type == event_type]

    def errors_sent(self) -> list[str]:
        """The ``code`` of every ``Error`` sent."""
        return [str(e.get("code")) for e in self.sent_of("Error")]
