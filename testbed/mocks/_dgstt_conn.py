"""Mock Deepgram streaming STT websocket (``/v1/listen``), providers.md section 5c.

An energy VAD on the caller's audio (mu-law or linear16) drives the messages: ``SpeechStarted``
at the onset (``vad_events=true``), interim ``Results`` revealing the scripted transcript word
by word, then ``is_final`` spans with ``speech_final`` after ``endpointing`` ms of silence and
``UtteranceEnd`` once ``utterance_end_ms`` passed without words. ``KeepAlive`` keeps the
socket open; 10 s (configurable) without audio or text closes it with 1011 (NET-0001).
``CloseStream`` flushes, sends ``Metadata`` and closes 1000. All timing is audio time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import numpy as np

from sip4ai.audio.g711 import ulaw_decode
from testbed.mocks._cartesia_script import PipelineScript, SttConnectionRecord, SttTurn
from testbed.mocks._cartesia_ws import AioJsonConnection
from testbed.mocks.vad import EnergyVad, SpeechStarted, SpeechStopped, VadConfig


NET0001_REASON: Final = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)
ENCODINGS: Final = ("mulaw", "linear16")


def listen_params_problem(query: dict[str, str]) -> str | None:
    if query.get("encoding") not in ENCODINGS:
        return "encoding must be mulaw or linear16 for raw audio"
    if not query.get("sample_rate", "").isdigit():
        return "sample_rate is required for raw audio"
    if "utterance_end_ms" in query and query.get("interim_results") != "true":
        return "utterance_end_ms requires interim_results=true"
    return None


class SttConnection(AioJsonConnection):
    def __init__(
        self, *args: Any, script: PipelineScript, record: SttConnectionRecord, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._pipeline = script
        self._script = script.script
        self._record = record
        query = record.query
        self._encoding = query.get("encoding", "mulaw")
        self._rate_hz = int(query.get("sample_rate", "8000"))
        endpointing = query.get("endpointing", "10")
        self._speech_final = endpointing != "false"
        silence_ms = int(endpointing) if endpointing.isdigit() else 10
        self._utterance_end_ms = (
            int(query["utterance_end_ms"]) if query.get("utterance_end_ms", "").isdigit() else None
        )
        self._vad_events = query.get("vad_events") == "true"
        self._interims = query.get("interim_results") == "true"
        self._vad = EnergyVad(
            VadConfig(
                prefix_padding_ms=0,
                silence_duration_ms=max(20, silence_ms),
                min_speech_ms=self._script.vad_min_speech_ms,
            ),
            self._rate_hz,
        )
        self._turn: SttTurn | None = None
        self._revealed = 0
        self._next_interim_ms = 0
        self._utterance_end_at_ms: int | None = None
        self._last_word_end_ms = 0
        self._last_activity = time.monotonic()
        self._request_id = f"mock-dg-{record.number}"

    def on_open(self) -> None:
        _ = self.spawn(self._watch_idle(), "idle")

    async def _watch_idle(self) -> None:
        timeout_s = self._pipeline.stt_idle_timeout_s
        while True:
            idle_s = time.monotonic() - self._last_activity
            if idle_s >= timeout_s:
                self.close(1011, NET0001_REASON)
                return
            await asyncio.sleep(min(0.1, timeout_s - idle_s))

    # ---- input ------------------------------------------------------------------------------

    def on_binary(self, data: bytes) -> None:
        self._last_activity = time.monotonic()
        self._record.audio_in += data
        if self._encoding == "mulaw":
            samples = ulaw_decode(data)
        else:
            samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
        for vad_event in self._vad.push(samples):
            if isinstance(vad_event, SpeechStarted):
                self._speech_started(vad_event.audio_start_ms)
            elif isinstance(vad_event, SpeechStopped):
                self._speech_stopped(vad_event.audio_end_ms)
        position = self._vad.position_ms
        if self._turn is not None and self._interims and position >= self._next_interim_ms:
            self._interim(position)
        if self._utterance_end_at_ms is not None and position >= self._utterance_end_at_ms:
            self._utterance_end_at_ms = None
            self.emit(
                {
                    "type": "UtteranceEnd",
                    "channel": [0, 1],
                    "last_word_end": self._last_word_end_ms / 1000,
                }
            )

    def on_event(self, event: dict[str, Any]) -> None:
        self._last_activity = time.monotonic()
        kind = event.get("type")
        if kind == "KeepAlive":
            self._record.keepalives += 1
        elif kind == "Finalize":
            self._flush(self._vad.position_ms, from_finalize=True)
        elif kind == "CloseStream":
            self._flush(self._vad.position_ms, from_finalize=False)
            self.emit(
                {
                    "type": "Metadata",
                    "transaction_key": "deprecated",
                    "request_id": self._request_id,
                    "sha256": "0" * 64,
                    "created": "2026-01-01T00:00:00.000Z",
                    "duration": self._vad.position_ms / 1000,
                    "channels": 1,
                }
            )
            self.close(1000, "")

    def on_bad_frame(self, text: str) -> None:
        self._last_activity = time.monotonic()

    # ---- turns ------------------------------------------------------------------------------

    def _words(self) -> list[str]:
        return self._turn.transcript.split() if self._turn else []

    def _speech_started(self, start_ms: int) -> None:
        number = len(self._record.user_turns)
        transcripts = self._script.transcripts
        text = transcripts[number] if number < len(transcripts) else self._script.default_transcript
        turn = SttTurn(transcript=text, audio_start_ms=start_ms)
        self._record.user_turns.append(turn)
        self._turn, self._revealed = turn, 0
        self._utterance_end_at_ms = None
        self._next_interim_ms = start_ms + self._pipeline.interim_every_ms
        if self._vad_events:

            def stamp(at: float) -> None:
                turn.speech_started_at = at

            event = {"type": "SpeechStarted", "channel": [0], "timestamp": start_ms / 1000}
            self.emit(event, stamp)

    def _interim(self, position_ms: int) -> None:
        words = self._words()
        self._next_interim_ms = position_ms + self._pipeline.interim_every_ms
        if self._revealed >= len(words) - 1:
            return
        self._revealed += 1
        turn = self._turn
        assert turn is not None
        text = " ".join(words[: self._revealed])
        self.emit(self._results(text, turn.audio_start_ms, position_ms, False, False))

    def _speech_stopped(self, end_ms: int) -> None:
        self._flush(end_ms, from_finalize=False)

    def _flush(self, end_ms: int, *, from_finalize: bool) -> None:
        turn = self._turn
        if turn is None:
            if from_finalize:
                self.emit(self._results("", end_ms, end_ms, True, False, from_finalize=True))
            return
        self._turn = None
        turn.audio_end_ms = end_ms
        words = self._words_of(turn)
        spans = [words[: len(words) // 2], words[len(words) // 2 :]] if len(words) >= 4 else [words]
        start = turn.audio_start_ms
        speech_end = max(start, end_ms - self._vad.config.silence_duration_ms)
        per_word_ms = (speech_end - start) / max(1, len(words))
        done_words = 0
        for i, span in enumerate(spans):
            last = i == len(spans) - 1
            speech_final = last and self._speech_final and not from_finalize
            span_start = start + round(done_words * per_word_ms)
            done_words += len(span)
            span_end = end_ms if last else start + round(done_words * per_word_ms)

            def stamp(at: float, last: bool = last) -> None:
                if last:
                    turn.final_at = at

            text = " ".join(span)
            results = self._results(
                text, span_start, span_end, True, speech_final, from_finalize=from_finalize
            )
            self.emit(results, stamp)
        self._last_word_end_ms = speech_end
        if self._utterance_end_ms is not None:
            self._utterance_end_at_ms = self._last_word_end_ms + self._utterance_end_ms

    @staticmethod
    def _words_of(turn: SttTurn) -> list[str]:
        return turn.transcript.split()

    def _results(
        self,
        text: str,
        start_ms: int,
        end_ms: int,
        is_final: bool,
        speech_final: bool,
        *,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        words = text.split()
        step = (end_ms - start_ms) / 1000 / max(1, len(words))
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": (end_ms - start_ms) / 1000,
            "start": start_ms / 1000,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": text,
                        "confidence": 0.98,
                        "words": [
                            {
                                "word": w.lower().strip(".,!?"),
                                "start": round(start_ms / 1000 + i * step, 3),
                                "end": round(start_ms / 1000 + (i + 1) * step, 3),
                                "confidence": 0.98,
                                "punctuated_word": w,
                            }
                            for i, w in enumerate(words)
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": self._request_id,
                "model_info": {"name": "general-nova-3", "version": "mock", "arch": "nova-3"},
                "model_uuid": "00000000-0000-0000-0000-000000000000",
            },
        }
