"""What the Cartesia pipeline mock says (``PipelineScript``) and what it saw (records).

``PipelineScript`` wraps the OpenAI mock's ``Script`` (same JSON shape: replies, transcripts,
function_calls, think_ms, speed, faults ...) and adds the few pipeline-only knobs; JSON keys
of both live in one flat object. Records are plain dataclasses filled in as things happen.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from testbed.mocks._openai_script import Reply, Script
from testbed.mocks._ws_common import EventRecord


LINKS = ("tts", "stt")


@dataclass(frozen=True)
class PipelineScript:
    """Behaviour of the three mocked services (applies to every connection and request)."""

    script: Script = Script()
    """Replies, transcripts, function calls, pacing, key (``api_key``) and faults."""
    deepgram_api_key: str | None = None
    """Key Deepgram accepts; ``None``: the same as ``script.api_key``."""
    openai_api_key: str | None = None
    """Key the chat endpoint accepts; ``None``: the same as ``script.api_key``."""
    stt_idle_timeout_s: float = 10.0
    """Deepgram NET-0001: close 1011 after this long without audio or a text message."""
    interim_every_ms: int = 200
    """Interim ``Results`` cadence during caller speech, in audio time."""
    chat_word_ms: int = 20
    """Delay between streamed words of a chat answer (divided by ``speed``)."""
    tts_latency_ms: int = 40
    """Delay before the first audio of each TTS text piece (divided by ``speed``)."""
    max_piece_ms: int = 20000
    """Upper bound of the audio made for one text piece."""
    fault_links: tuple[str, ...] = LINKS
    """Which websockets the ``script.faults`` apply to: ``tts`` and/or ``stt``."""
    faulty_connections: int = 0
    """Only the first N connections of each link get the faults (0: all of them)."""

    @property
    def tts_key(self) -> str | None:
        return self.script.api_key

    @property
    def stt_key(self) -> str | None:
        return self.deepgram_api_key or self.script.api_key

    @property
    def chat_key(self) -> str | None:
        return self.openai_api_key or self.script.api_key

    def with_any_key(self) -> PipelineScript:
        return dataclasses.replace(
            self,
            script=dataclasses.replace(self.script, api_key=None),
            deepgram_api_key=None,
            openai_api_key=None,
        )

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PipelineScript:
        own = {f.name for f in fields(cls)} - {"script"}
        values = {k: v for k, v in raw.items() if k in own}
        if "fault_links" in values:
            values["fault_links"] = tuple(values["fault_links"])
            bad = set(values["fault_links"]) - set(LINKS)
            if bad:
                raise ValueError(f"script.fault_links: unknown links {sorted(bad)}")
        rest = {k: v for k, v in raw.items() if k not in own}
        return cls(script=Script.from_json(rest), **values)

    @classmethod
    def load(cls, path: Path) -> PipelineScript:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_json(raw)


# --- records -----------------------------------------------------------------------------------


@dataclass
class ContextRecord:
    """One Cartesia TTS context (one reply of the session)."""

    context_id: str
    created_at: float
    pieces: list[str] = field(default_factory=list)
    """Transcript text of every generation request, in order."""
    continues: list[bool] = field(default_factory=list)
    tone_hz: float = 0.0
    first_audio_at: float | None = None
    audio_ms_sent: int = 0
    cancelled_at: float | None = None
    done_at: float | None = None
    flush_ids: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces).strip()


@dataclass
class TtsConnectionRecord:
    number: int
    path: str
    headers: dict[str, str]
    opened_at: float
    received: list[EventRecord] = field(default_factory=list)
    sent: list[EventRecord] = field(default_factory=list)
    contexts: list[ContextRecord] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    closed_at: float | None = None
    close_code: int | None = None

    def context(self, context_id: str) -> ContextRecord | None:
        return next((c for c in self.contexts if c.context_id == context_id), None)


@dataclass
class SttTurn:
    """One caller utterance as the mock's VAD heard it."""

    transcript: str
    audio_start_ms: int
    speech_started_at: float | None = None
    """Monotonic time ``SpeechStarted`` was written to the socket."""
    audio_end_ms: int | None = None
    final_at: float | None = None


@dataclass
class SttConnectionRecord:
    number: int
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    opened_at: float
    audio_in: bytearray = field(default_factory=bytearray)
    """Every binary frame received (mu-law as sent)."""
    received: list[EventRecord] = field(default_factory=list)
    sent: list[EventRecord] = field(default_factory=list)
    user_turns: list[SttTurn] = field(default_factory=list)
    keepalives: int = 0
    closed_at: float | None = None
    close_code: int | None = None

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [r.event for r in self.sent if r.type == kind]


@dataclass
class ChatRequestRecord:
    number: int
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    kind: str = "text"
    """``text`` (an answer), ``function_call``, or ``error``."""
    trigger: str = ""
    """What the answer responds to: ``turn``, ``instructions``, ``inject``, ``tool``."""
    reply: Reply | None = None
    call_ids: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    finished_at: float | None = None
    aborted: bool = False
    """The client closed the stream before ``[DONE]`` (barge-in)."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages")
        return list(messages) if isinstance(messages, list) else []
