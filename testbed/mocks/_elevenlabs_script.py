"""What the ElevenLabs mock's agent is like (``AgentSettings``) and what it saw (records).

The conversation itself is scripted with the OpenAI mock's ``Script`` (same JSON shape: replies,
transcripts, function_calls, think_ms, speed, faults, ...); the ElevenLabs-only settings live
under an optional ``"elevenlabs"`` key of the same JSON object (see ``load_script``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sip4ai.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from testbed.mocks._openai_script import InjectRecord, Script
from testbed.mocks._ws_common import EventRecord


ALL_OVERRIDES: Final = (
    "agent.prompt.prompt",
    "agent.first_message",
    "agent.language",
    "tts.voice_id",
)


@dataclass(frozen=True)
class AgentSettings:
    """The agent's dashboard configuration as the mock imitates it."""

    agent_id: str | None = None
    """Only this agent exists (``None``: any ``agent_id`` is accepted, but one is required)."""
    allowed_overrides: tuple[str, ...] = ALL_OVERRIDES
    """Dotted override paths enabled in the agent's Security tab; any other closes with 1008."""
    output_format: str = "ulaw_8000"
    input_format: str = "ulaw_8000"
    greets: bool = True
    """The agent has a first message of its own (otherwise it waits for the caller, unless the
    client overrides ``first_message``; an empty override always makes it wait)."""
    private: bool = False
    """The websocket requires a signed-URL token (or a valid ``xi-api-key`` header)."""
    ping_interval_s: float = 2.0
    pong_late_ms: int = 1000
    """A pong arriving later than this after its ping is recorded as late."""
    stale_chunks: int = 2
    """Audio chunks of an interrupted reply still sent after the ``interruption`` (with
    ``event_id`` up to the interruption's, as the real server may)."""
    interruptions: bool = True
    vad_threshold: float = 0.5
    vad_silence_ms: int = 500
    signed_url_ttl_s: float = 900.0
    signed_url_status: int | None = None
    """Fault: answer every get-signed-url request with this HTTP status (e.g. 503)."""

    def __post_init__(self) -> None:
        WireFormat(self.output_format)  # raises ValueError for an unknown format
        WireFormat(self.input_format)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AgentSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"script.elevenlabs: unknown keys {sorted(unknown)}")
        values = dict(raw)
        if "allowed_overrides" in values:
            values["allowed_overrides"] = tuple(str(v) for v in values["allowed_overrides"])
        return cls(**values)


def script_from_json(raw: Mapping[str, Any]) -> tuple[Script, AgentSettings]:
    """An OpenAI-mock script object, plus the optional ``elevenlabs`` section."""
    rest = dict(raw)
    agent = rest.pop("elevenlabs", None) or {}
    if not isinstance(agent, Mapping):
        raise ValueError("script.elevenlabs: expected an object")
    return Script.from_json(rest), AgentSettings.from_json(agent)


def load_script(path: Path) -> tuple[Script, AgentSettings]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return script_from_json(raw)


# --- audio formats -----------------------------------------------------------------------------

_FORMAT = re.compile(r"^(pcm|ulaw|alaw)_(\d+)$")


@dataclass(frozen=True)
class WireFormat:
    """An ElevenLabs ``<enc>_<rate>`` audio format."""

    name: str

    def __post_init__(self) -> None:
        if _FORMAT.match(self.name) is None:
            raise ValueError(f"unknown audio format {self.name!r}")

    @property
    def encoding(self) -> str:
        return self.name.split("_")[0]

    @property
    def rate_hz(self) -> int:
        return int(self.name.split("_")[1])

    @property
    def bytes_per_ms(self) -> float:
        width = 2 if self.encoding == "pcm" else 1
        return width * self.rate_hz / 1000

    def decode(self, data: bytes) -> npt.NDArray[np.int16]:
        if self.encoding == "ulaw":
            return ulaw_decode(data)
        if self.encoding == "alaw":
            return alaw_decode(data)
        usable = len(data) - len(data) % 2
        return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if self.encoding == "ulaw":
            return ulaw_encode(pcm)
        if self.encoding == "alaw":
            return alaw_encode(pcm)
        return pcm.astype("<i2").tobytes()


# --- records -----------------------------------------------------------------------------------


@dataclass
class UserTurn:
    speech_started_at: float
    """Monotonic time the energy VAD found the caller's speech (during input processing)."""
    transcript: str | None = None
    transcript_at: float | None = None
    interrupted_reply: int | None = None
    """Index into ``replies`` of the reply this turn interrupted."""
    interruption_event_id: int | None = None
    interruption_sent_at: float | None = None
    """Monotonic time the ``interruption`` was written to the socket."""


@dataclass
class ReplyRecord:
    trigger: str
    """``first_message``, ``turn``, ``user_message`` or ``tool_result``."""
    text: str
    tone_hz: float
    duration_ms: int
    created_at: float
    first_audio_at: float | None = None
    event_ids: list[int] = field(default_factory=list)
    audio_ms_sent: float = 0.0
    status: str = "in_progress"
    """``in_progress``, ``completed`` or ``interrupted``."""
    corrected_text: str | None = None


@dataclass
class PingRecord:
    event_id: int
    sent_at: float
    pong_at: float | None = None
    late: bool = False


@dataclass
class ToolCallRecord:
    call_id: str
    name: str
    parameters: dict[str, Any]
    at: float


@dataclass
class ToolResultRecord:
    call_id: str
    result: str
    is_error: bool
    at: float


@dataclass
class ConnectionRecord:
    """Everything one websocket connection of the mock saw and did."""

    number: int
    path: str
    agent_id: str | None
    token: str | None
    headers: dict[str, str]
    opened_at: float
    received: list[EventRecord] = field(default_factory=list)
    sent: list[EventRecord] = field(default_factory=list)
    initiation: dict[str, Any] | None = None
    """The ``conversation_initiation_client_data`` message."""
    audio_in: bytearray = field(default_factory=bytearray)
    """Decoded ``user_audio_chunk`` audio, in the agent's input format."""
    user_turns: list[UserTurn] = field(default_factory=list)
    replies: list[ReplyRecord] = field(default_factory=list)
    pings: list[PingRecord] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    tool_results: list[ToolResultRecord] = field(default_factory=list)
    injects: list[InjectRecord] = field(default_factory=list)
    """``contextual_update`` (role ``system``) and ``user_message`` (role ``user``)."""
    bad_frames: int = 0
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None

    def received_of(self, event_type: str) -> list[dict[str, Any]]:
        return [r.event for r in self.received if r.type == event_type]

    def sent_of(self, event_type: str) -> list[dict[str, Any]]:
        return [r.event for r in self.sent if r.type == event_type]

    @property
    def overrides(self) -> dict[str, Any]:
        """The ``conversation_config_override`` sent (empty if none)."""
        if self.initiation is None:
            return {}
        value = self.initiation.get("conversation_config_override")
        return value if isinstance(value, dict) else {}

    @property
    def late_pongs(self) -> list[PingRecord]:
        return [p for p in self.pings if p.late]

    @property
    def missing_pongs(self) -> list[PingRecord]:
        return [p for p in self.pings if p.pong_at is None]
