"""What the OpenAI mock says (``Script``) and what it saw (``ConnectionRecord``).

A ``Script`` is frozen data, loadable from JSON for process mode; ``reply_hook`` is the one
Python-only field. Records are plain dataclasses the connection fills in as events happen;
tests read them after waiting on ``OpenAIMock.wait_for``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from testbed.mocks._ws_common import EventRecord, Faults


Mode = Literal["scripted", "echo"]


@dataclass(frozen=True)
class Reply:
    """One assistant reply: a transcript and a tone standing in for the voice."""

    text: str
    tone_hz: float | None = None
    """Tone of the audio; ``None``: ``Script.tone_for(n)`` for the n-th audio reply (0-based)."""
    duration_ms: int | None = None
    """Audio length; ``None``: derived from the text (``ms_per_char``, ``min_reply_ms``)."""


@dataclass(frozen=True)
class FunctionCallSpec:
    """A function call the mock makes instead of a reply when its trigger fires (once)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    after_user_turns: int | None = None
    """Fire on the response to the N-th user turn (1-based)."""
    transcript_contains: str | None = None
    """Fire on the response to a user turn whose scripted transcript contains this text."""
    call_id: str | None = None


@dataclass(frozen=True)
class ReplyContext:
    """What ``Script.reply_hook`` gets to choose a reply."""

    trigger: Literal["turn", "client"]
    audio_reply_index: int
    user_turns: int
    transcript: str | None
    instructions: str | None
    injected: tuple[InjectRecord, ...]
    function_outputs: tuple[FunctionOutputRecord, ...]


ReplyHook = Callable[[ReplyContext], Reply | None]


@dataclass(frozen=True)
class Script:
    """Behaviour of one mock server (applies to every connection it accepts)."""

    mode: Mode = "scripted"
    api_key: str | None = "test-key"
    """Bearer key to accept; ``None`` accepts any key (a header is still required)."""
    auth_failure: Literal["http", "ws"] = "http"
    """``http``: 401 on the upgrade; ``ws``: accept, send ``error`` and close 3000."""
    reject_beta_header: bool = True
    """``OpenAI-Beta: realtime=v1`` gets ``beta_api_shape_disabled`` and close 4000."""
    replies: tuple[Reply, ...] = ()
    """Used in order, one per plain reply; then ``default_reply`` forever."""
    default_reply: Reply = Reply("Okay.")
    transcripts: tuple[str, ...] = ()
    """Scripted input transcripts, one per user turn; then ``default_transcript``."""
    default_transcript: str = "Hello."
    inject_reply: str = "{text}"
    """Reply text after ``conversation.item.create`` message(s); ``{text}`` is their text."""
    function_reply: str = "{output}"
    """Reply text after a ``function_call_output``; ``{output}`` and ``{name}`` fill in."""
    instructions_reply: str | None = None
    """If set, ``response.create`` with instructions replies this (``{instructions}``)."""
    function_calls: tuple[FunctionCallSpec, ...] = ()
    reply_hook: ReplyHook | None = None
    """Python-only: return a ``Reply`` to override the choice above, or ``None``."""
    speed: float = 4.0
    """Audio is streamed this many times faster than real time; 0 or inf sends it at once."""
    think_ms: int = 200
    """Delay between ``response.created`` and the first audio delta."""
    chunk_ms: int = 40
    """Audio per ``response.output_audio.delta``."""
    ms_per_char: int = 60
    min_reply_ms: int = 300
    base_tone_hz: float = 400.0
    tone_step_hz: float = 200.0
    amplitude: float = 0.3
    vad_min_speech_ms: int = 20
    session_max_s: float | None = None
    """Expire the session after this many seconds (error ``session_expired``, close 1001)."""
    session_limit_minutes: int = 60
    """The limit named in the expiry message (the real limit is 60 minutes)."""
    truncate_clamp_after_error: bool = False
    """After the too-long truncate error, also truncate at the audio's end (reported live)."""
    legacy_item_created: bool = False
    """Also send beta ``conversation.item.created`` next to GA ``conversation.item.added``."""
    faults: Faults = Faults()

    def tone_for(self, audio_reply_index: int) -> float:
        """Default tone of the n-th audio reply: distinct steps inside the 8 kHz band."""
        steps = max(1, int((3400.0 - self.base_tone_hz) // self.tone_step_hz) + 1)
        return self.base_tone_hz + self.tone_step_hz * (audio_reply_index % steps)

    def duration_for(self, text: str) -> int:
        return max(self.min_reply_ms, self.ms_per_char * len(text))

    @property
    def burst(self) -> bool:
        return self.speed <= 0 or math.isinf(self.speed)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Script:
        """Build from a JSON object whose keys are the field names (``reply_hook`` excluded)."""
        known = {f.name for f in fields(cls)} - {"reply_hook"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"script: unknown keys {sorted(unknown)}")
        values: dict[str, Any] = dict(raw)
        if "replies" in values:
            values["replies"] = tuple(
                _reply(r, f"replies[{i}]") for i, r in enumerate(raw["replies"])
            )
        if "default_reply" in values:
            values["default_reply"] = _reply(raw["default_reply"], "default_reply")
        if "transcripts" in values:
            values["transcripts"] = tuple(str(t) for t in raw["transcripts"])
        if "function_calls" in values:
            values["function_calls"] = tuple(
                _function_call(c, f"function_calls[{i}]")
                for i, c in enumerate(raw["function_calls"])
            )
        if "faults" in values:
            values["faults"] = Faults.from_json(raw["faults"])
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> Script:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_json(raw)


def _reply(raw: object, where: str) -> Reply:
    if isinstance(raw, str):
        return Reply(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"script.{where}: expected a string or an object")
    unknown = set(raw) - {"text", "tone_hz", "duration_ms"}
    if unknown or "text" not in raw:
        raise ValueError(f"script.{where}: needs 'text', allows 'tone_hz', 'duration_ms'")
    return Reply(**raw)


def _function_call(raw: object, where: str) -> FunctionCallSpec:
    if not isinstance(raw, dict) or "name" not in raw:
        raise ValueError(f"script.{where}: expected an object with 'name'")
    allowed = {f.name for f in fields(FunctionCallSpec)}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"script.{where}: unknown keys {sorted(unknown)}")
    return FunctionCallSpec(**raw)


class ReplyPlanner:
    """Chooses each response of one connection: a due function call or a reply (pure)."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self._next_reply = 0
        self._fired: set[int] = set()
        self.audio_replies = 0
        """Audio replies resolved so far (the index that picks the default tone)."""
        self.pending_injects: list[InjectRecord] = []
        self.pending_outputs: list[FunctionOutputRecord] = []

    def function_call_due(self, user_turns: int, transcript: str | None) -> FunctionCallSpec | None:
        """The first unfired function call whose trigger matches this user turn, if any."""
        heard = (transcript or "").lower()
        for i, spec in enumerate(self._script.function_calls):
            if i in self._fired:
                continue
            by_count = spec.after_user_turns is not None and spec.after_user_turns == user_turns
            by_text = (
                spec.transcript_contains is not None and spec.transcript_contains.lower() in heard
            )
            if by_count or by_text:
                self._fired.add(i)
                return spec
        return None

    def choose(
        self,
        *,
        trigger: Literal["turn", "client"],
        instructions: str | None,
        transcript: str | None,
        user_turns: int,
        call_names: Mapping[str, str],
    ) -> Reply:
        """Hook, else tool output, else inject, else instructions, else the reply queue."""
        script = self._script
        injected, outputs = tuple(self.pending_injects), tuple(self.pending_outputs)
        self.pending_injects.clear()
        self.pending_outputs.clear()
        if script.reply_hook is not None:
            context = ReplyContext(
                trigger, self.audio_replies, user_turns, transcript, instructions, injected, outputs
            )
            hooked = script.reply_hook(context)
            if hooked is not None:
                return hooked
        if outputs:
            return Reply(
                " ".join(
                    script.function_reply.format(
                        output=o.output, name=call_names.get(o.call_id, "")
                    )
                    for o in outputs
                )
            )
        if injected:
            return Reply(script.inject_reply.format(text=" ".join(i.text for i in injected)))
        if instructions and script.instructions_reply is not None:
            return Reply(script.instructions_reply.format(instructions=instructions))
        if self._next_reply < len(script.replies):
            self._next_reply += 1
            return script.replies[self._next_reply - 1]
        return script.default_reply

    def resolve(self, reply: Reply) -> tuple[float, int]:
        """Tone (Hz) and duration (ms) of ``reply``; counts it as the next audio reply."""
        tone_hz = reply.tone_hz or self._script.tone_for(self.audio_replies)
        duration_ms = reply.duration_ms or self._script.duration_for(reply.text)
        self.audio_replies += 1
        return tone_hz, duration_ms


# --- records -----------------------------------------------------------------------------------


@dataclass
class UserTurn:
    item_id: str
    audio_start_ms: int
    speech_started_at: float | None = None
    """Monotonic time ``input_audio_buffer.speech_started`` was written to the socket."""
    audio_end_ms: int | None = None
    transcript: str | None = None
    committed: bool = False
    interrupted_response_id: str | None = None


@dataclass
class ResponseRecord:
    response_id: str
    trigger: Literal["turn", "client"]
    kind: Literal["audio", "function_call"]
    created_at: float
    text: str = ""
    tone_hz: float = 0.0
    duration_ms: int = 0
    instructions: str | None = None
    item_id: str | None = None
    first_audio_at: float | None = None
    """Monotonic time the first audio delta was written to the socket."""
    audio_bytes_sent: int = 0
    audio_ms_sent: int = 0
    status: str = "in_progress"
    reason: str | None = None
    done_at: float | None = None


@dataclass
class TruncateRecord:
    item_id: str
    content_index: int
    audio_end_ms: int
    audio_sent_ms: int | None
    accepted: bool
    at: float


@dataclass
class InjectRecord:
    item_id: str
    role: str
    text: str
    at: float


@dataclass
class FunctionCallRecord:
    call_id: str
    name: str
    arguments: str
    item_id: str
    response_id: str
    at: float


@dataclass
class FunctionOutputRecord:
    call_id: str
    output: str
    at: float


@dataclass
class ConnectionRecord:
    """Everything one websocket connection of the mock saw and did."""

    number: int
    path: str
    model: str | None
    headers: dict[str, str]
    opened_at: float
    received: list[EventRecord] = field(default_factory=list)
    sent: list[EventRecord] = field(default_factory=list)
    audio_in: bytearray = field(default_factory=bytearray)
    """Decoded base64 of every ``input_audio_buffer.append``, in the session's input format."""
    echo_out: bytearray = field(default_factory=bytearray)
    user_turns: list[UserTurn] = field(default_factory=list)
    responses: list[ResponseRecord] = field(default_factory=list)
    truncates: list[TruncateRecord] = field(default_factory=list)
    injects: list[InjectRecord] = field(default_factory=list)
    function_calls: list[FunctionCallRecord] = field(default_factory=list)
    function_outputs: list[FunctionOutputRecord] = field(default_factory=list)
    session: dict[str, Any] | None = None
    """The GA session object last sent (``session.created``/``session.updated``)."""
    closed_at: float | None = None
    close_code: int | None = None

    def received_of(self, event_type: str) -> list[dict[str, Any]]:
        return [r.event for r in self.received if r.type == event_type]

    def sent_of(self, event_type: str) -> list[dict[str, Any]]:
        return [r.event for r in self.sent if r.type == event_type]

    def errors_sent(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.sent_of("error")]
