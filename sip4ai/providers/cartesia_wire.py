"""Cartesia Sonic TTS websocket wire codec and sentence splitting: pure, no I/O.

One context per reply: text goes out sentence by sentence with ``continue: true`` and the
context ends with ``continue: false``; a barge-in sends ``cancel``. Server messages are decoded
into ``TtsAudio``/``TtsWords``/``TtsDone``/``TtsError``. Reference: providers.md section 5a.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sip4ai.audio.formats import AudioFormat, Encoding
from sip4ai.errors import ProviderProtocolError


CARTESIA_VERSION = "2026-03-01"
"""The API version Pipecat pins for the TTS websocket (providers.md 5a)."""
MODEL_ID = "sonic-3"
PCMU_8K = AudioFormat(Encoding.PCMU, 8000)
OUTPUT_FORMAT: Mapping[str, Any] = {
    "container": "raw",
    "encoding": "pcm_mulaw",
    "sample_rate": 8000,
}
DEFAULT_VOICE_ID = "a0e99841-438c-4a64-b679-ae501e7d6091"
"""Used when ``cartesia.voice_id`` is not configured (a stock English voice)."""


def auth_headers(key: str, version: str = CARTESIA_VERSION) -> dict[str, str]:
    return {"Cartesia-Version": version, "X-API-Key": key}


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def generation_request(
    context_id: str,
    transcript: str,
    *,
    voice_id: str,
    more: bool,
    model_id: str = MODEL_ID,
    language: str = "en",
) -> str:
    """One text piece of a context; ``more=False`` ends the context (the server sends done)."""
    return _dumps(
        {
            "context_id": context_id,
            "model_id": model_id,
            "transcript": transcript,
            "voice": {"mode": "id", "id": voice_id},
            "output_format": dict(OUTPUT_FORMAT),
            "language": language,
            "continue": more,
            "add_timestamps": True,
            "max_buffer_delay_ms": 0,
        }
    )


def cancel(context_id: str) -> str:
    return _dumps({"context_id": context_id, "cancel": True})


# ---- server messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TtsAudio:
    context_id: str
    audio: bytes


@dataclass(frozen=True, slots=True)
class TtsWords:
    """Word timestamps, seconds from the start of the context's audio."""

    context_id: str
    words: tuple[str, ...]
    ends_s: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class TtsDone:
    context_id: str


@dataclass(frozen=True, slots=True)
class TtsError:
    context_id: str | None
    status_code: int
    message: str


TtsEvent = TtsAudio | TtsWords | TtsDone | TtsError


def decode(raw: str | bytes) -> TtsEvent | None:
    """One server frame -> an event (``None`` for ``flush_done`` and unknown types)."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProviderProtocolError("cartesia: a server message is not JSON") from None
    if not isinstance(message, Mapping):
        raise ProviderProtocolError("cartesia: a server message is not an object")
    kind = message.get("type")
    try:
        return _decode(kind, message)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise ProviderProtocolError("cartesia: malformed message", event_type=str(kind)) from None


def _decode(kind: object, message: Mapping[str, Any]) -> TtsEvent | None:
    context_id = message.get("context_id")
    if kind == "chunk":
        return TtsAudio(str(context_id), base64.b64decode(message["data"], validate=True))
    if kind == "timestamps":
        stamps = message["word_timestamps"]
        words = tuple(str(w) for w in stamps["words"])
        ends = tuple(float(e) for e in stamps["end"])
        if len(words) != len(ends):
            raise ValueError("words and end times differ in length")
        return TtsWords(str(context_id), words, ends)
    if kind == "done":
        return TtsDone(str(context_id))
    if kind == "error" or (kind is None and "error" in message):
        text = message.get("message") or message.get("title") or message.get("error") or ""
        return TtsError(
            str(context_id) if context_id is not None else None,
            int(message.get("status_code", 500)),
            str(text),
        )
    return None


def fatal_error(error: TtsError) -> bool:
    """Errors that make the TTS link useless (bad key, bad voice or model, no quota)."""
    return error.context_id is None or error.status_code in (401, 402, 403)


# ---- sentences --------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?;:…](?:[\"')\]]*)\s+")
MIN_SENTENCE_CHARS = 12
"""Shorter pieces ("Hi." "Dr.") wait for more text: very short TTS requests sound choppy."""


class SentenceSplitter:
    """Streamed LLM text in, whole sentences out (so speech starts before the LLM finishes)."""

    def __init__(self, min_chars: int = MIN_SENTENCE_CHARS) -> None:
        self._buffer = ""
        self._min_chars = min_chars

    def push(self, text: str) -> list[str]:
        self._buffer += text
        out: list[str] = []
        start = 0
        for match in _SENTENCE_END.finditer(self._buffer):
            if match.end() - start < self._min_chars:
                continue
            out.append(self._buffer[start : match.end()])
            start = match.end()
        self._buffer = self._buffer[start:]
        return out

    def flush(self) -> str:
        """What is left at the end of the reply (may be empty)."""
        rest, self._buffer = self._buffer, ""
        return rest
