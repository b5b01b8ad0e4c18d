"""Deepgram streaming STT (``/v1/listen``) wire codec: pure functions, no I/O.

The Cartesia pipeline hears the caller through Deepgram: raw mu-law 8 kHz goes up as binary
frames, ``Results``/``SpeechStarted``/``UtteranceEnd``/``Metadata`` come back as JSON text.
``UtteranceAssembler`` turns those into caller utterances and barge-in triggers.
Reference: providers.md section 5c.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sip4ai.errors import ProviderProtocolError


ENDPOINTING_MS = 300
"""Silence that ends a caller's sentence (``speech_final``)."""
UTTERANCE_END_MS = 1000
"""Gap after the last word that makes Deepgram send ``UtteranceEnd`` (>= 1000 recommended)."""
KEEPALIVE_INTERVAL_S = 4.0
"""Deepgram closes (NET-0001) after 10 s without audio or a text message; 3-5 s is advised."""


def listen_url(base_url: str, model: str, *, language: str = "en") -> str:
    """The ``/v1/listen`` URL for 8 kHz mu-law with interim results and VAD events."""
    query = {
        "model": model,
        "language": language,
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": "1",
        "interim_results": "true",
        "endpointing": str(ENDPOINTING_MS),
        "utterance_end_ms": str(UTTERANCE_END_MS),
        "vad_events": "true",
        "smart_format": "true",
        "punctuate": "true",
    }
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}{urlencode(query)}"


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}"}


def keepalive() -> str:
    return '{"type":"KeepAlive"}'


def close_stream() -> str:
    return '{"type":"CloseStream"}'


def finalize() -> str:
    return '{"type":"Finalize"}'


# ---- server messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SttSpeechStarted:
    """Deepgram's VAD heard speech start (``vad_events=true``)."""

    timestamp_s: float


@dataclass(frozen=True, slots=True)
class SttResult:
    text: str
    is_final: bool
    speech_final: bool


@dataclass(frozen=True, slots=True)
class SttUtteranceEnd:
    last_word_end_s: float


@dataclass(frozen=True, slots=True)
class SttMetadata:
    request_id: str
    duration_s: float


SttEvent = SttSpeechStarted | SttResult | SttUtteranceEnd | SttMetadata


def decode(raw: str | bytes) -> SttEvent | None:
    """One server text frame -> an event (``None`` for types the pipeline does not use)."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProviderProtocolError("deepgram stt: a server message is not JSON") from None
    if not isinstance(message, Mapping) or not isinstance(message.get("type"), str):
        raise ProviderProtocolError("deepgram stt: a server message has no type")
    kind: str = message["type"]
    try:
        return _decode(kind, message)
    except (KeyError, TypeError, ValueError, IndexError):
        raise ProviderProtocolError("deepgram stt: malformed message", event_type=kind) from None


def _decode(kind: str, message: Mapping[str, Any]) -> SttEvent | None:
    if kind == "Results":
        alternatives = message["channel"]["alternatives"]
        text = str(alternatives[0]["transcript"]) if alternatives else ""
        return SttResult(
            text=text.strip(),
            is_final=bool(message.get("is_final", False)),
            speech_final=bool(message.get("speech_final", False)),
        )
    if kind == "SpeechStarted":
        return SttSpeechStarted(float(message.get("timestamp", 0.0)))
    if kind == "UtteranceEnd":
        return SttUtteranceEnd(float(message.get("last_word_end", 0.0)))
    if kind == "Metadata":
        return SttMetadata(str(message.get("request_id", "")), float(message.get("duration", 0.0)))
    return None


# ---- utterances -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallerSpeaking:
    """The caller started to speak (first sign of a new utterance): barge-in trigger."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """A complete caller utterance: all ``is_final`` spans up to the endpoint."""

    text: str


TurnEvent = CallerSpeaking | Utterance


class UtteranceAssembler:
    """Concatenates ``is_final`` transcripts until ``speech_final`` or ``UtteranceEnd``.

    ``SpeechStarted`` always counts as the caller speaking (Deepgram sends it once per onset);
    a non-empty interim does only once per utterance, so a long sentence is one barge-in.
    """

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._speaking = False

    @property
    def pending_text(self) -> str:
        return " ".join(self._parts)

    def feed(self, event: SttEvent) -> list[TurnEvent]:
        if isinstance(event, SttSpeechStarted):
            self._speaking = True
            return [CallerSpeaking()]
        if isinstance(event, SttUtteranceEnd):
            return self._finish()
        if not isinstance(event, SttResult):
            return []
        out: list[TurnEvent] = []
        if event.text and not self._speaking:
            self._speaking = True
            out.append(CallerSpeaking())
        if event.is_final and event.text:
            self._parts.append(event.text)
        if event.speech_final:
            out += self._finish()
        return out

    def _finish(self) -> list[TurnEvent]:
        self._speaking = False
        if not self._parts:
            return []
        text, self._parts = " ".join(self._parts), []
        return [Utterance(text)]
