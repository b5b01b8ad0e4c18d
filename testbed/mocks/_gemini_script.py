"""What the Gemini Live mock says (``GeminiScript``) and what it saw (``GeminiConnectionRecord``).

A ``GeminiScript`` is the OpenAI mock's ``Script`` (replies, transcripts, function calls,
pacing, faults: the same JSON shape) plus the Gemini-only knobs below. In JSON both live in one
object; ``GeminiScript.from_json`` splits them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from testbed.mocks._gemini_wire import BAD_KEY
from testbed.mocks._openai_script import (
    FunctionOutputRecord,
    InjectRecord,
    ReplyPlanner,
    ResponseRecord,
    Script,
    UserTurn,
)
from testbed.mocks._ws_common import EventRecord


@dataclass(frozen=True)
class GeminiScript:
    """Behaviour of one Gemini mock server (every connection it accepts)."""

    base: Script = Script()
    """Replies, transcripts, function calls, pacing, ``api_key`` and ``faults``."""
    binary_frames: bool = True
    """Send server messages as binary frames holding UTF-8 JSON (as the real server does)."""
    auth_close_code: int = 1007
    auth_close_reason: str = BAD_KEY
    known_models: tuple[str, ...] | None = None
    """``None`` accepts any ``models/...``; otherwise others get close 1008 "not found"."""
    connection_lifetime_s: float | None = None
    """Close each connection (1001) this long after it opened; ``goAway`` comes first."""
    go_away_notice_s: float = 1.0
    resumption_updates: bool = True
    """Send ``sessionResumptionUpdate`` handles (after setup and after every turn)."""
    reject_resumption: bool = False
    """Answer every resumption attempt with close 1008 (handle not found)."""
    close_after_setup: int | None = None
    """Close with this code right after ``setupComplete`` (e.g. 1007, 1008, 1011)."""
    close_after_tool_response: int | None = None
    """Close with this code when a ``toolResponse`` arrives (the 1011 flakiness of previews)."""
    bundled: bool = False
    """Gemini 3.x style: transcription and ``turnComplete`` ride on the audio messages."""
    hold_turn_for_playback: bool = True
    """Send ``turnComplete`` only once the reply could have been played in real time (the
    server assumes real-time playback); until then caller speech interrupts it."""
    stale_chunks_after_interrupt: int = 0
    """Audio chunks of the interrupted reply still sent between ``interrupted`` and its
    ``turnComplete`` (in flight when the server stopped); clients must drop them."""
    input_transcription_finished: bool = True
    """Mark the last ``inputTranscription`` piece ``finished`` (else only turnComplete ends it)."""

    @property
    def api_key(self) -> str | None:
        return self.base.api_key

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> GeminiScript:
        own = {f.name for f in fields(cls)} - {"base"}
        mine = {k: v for k, v in raw.items() if k in own}
        if "known_models" in mine and mine["known_models"] is not None:
            mine["known_models"] = tuple(str(m) for m in mine["known_models"])
        base = Script.from_json({k: v for k, v in raw.items() if k not in own})
        return cls(base=base, **mine)

    @classmethod
    def load(cls, path: Path) -> GeminiScript:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_json(raw)

    def with_base(self, **changes: Any) -> GeminiScript:
        return dataclasses.replace(self, base=dataclasses.replace(self.base, **changes))


@dataclass
class GeminiFunctionCall:
    call_id: str
    name: str
    arguments: str
    """The ``args`` object as JSON text."""
    at: float
    cancelled: bool = False


@dataclass
class Conversation:
    """State that survives a resumed connection (looked up by resumption handle)."""

    planner: ReplyPlanner
    user_turns: int = 0
    call_names: dict[str, str] = field(default_factory=dict)
    handles: list[str] = field(default_factory=list)


@dataclass
class GeminiConnectionRecord:
    """Everything one websocket connection of the mock saw and did."""

    number: int
    path: str
    headers: dict[str, str]
    key_source: str | None
    """``query`` (``?key=``), ``header`` (``x-goog-api-key``) or None."""
    opened_at: float
    received: list[EventRecord] = field(default_factory=list)
    sent: list[EventRecord] = field(default_factory=list)
    setup: dict[str, Any] | None = None
    """The normalised ``setup`` (or ``config``) message body."""
    setup_spelling: str | None = None
    """The member name the client used: ``setup`` or ``config``."""
    resumed_from: str | None = None
    """The resumption handle this connection continued, if any."""
    audio_in: bytearray = field(default_factory=bytearray)
    """PCM16 of every ``realtimeInput`` audio chunk, at ``input_rate_hz``."""
    input_rate_hz: int | None = None
    echo_out: bytearray = field(default_factory=bytearray)
    user_turns: list[UserTurn] = field(default_factory=list)
    responses: list[ResponseRecord] = field(default_factory=list)
    text_inputs: list[str] = field(default_factory=list)
    """``realtimeInput.text`` messages (greetings, goodbyes)."""
    injects: list[InjectRecord] = field(default_factory=list)
    """``clientContent`` turns (role and text)."""
    function_calls: list[GeminiFunctionCall] = field(default_factory=list)
    function_outputs: list[FunctionOutputRecord] = field(default_factory=list)
    handles_sent: list[str] = field(default_factory=list)
    go_away_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None

    def received_of(self, kind: str) -> list[dict[str, Any]]:
        return [r.event for r in self.received if r.type == kind]

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [r.event for r in self.sent if r.type == kind]
