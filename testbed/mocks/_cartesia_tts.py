"""Mock Cartesia Sonic TTS websocket (``/tts/websocket``), providers.md section 5a.

Per context: text pieces are "spoken" in order as a sine tone (context N with audio at
``Script.tone_for(N)``), ``duration`` proportional to the text (or to the scripted reply's
``duration_ms``), streamed at ``speed`` x real time as ``chunk`` messages, each piece followed
by its ``timestamps``; ``flush: true`` answers ``flush_done``; ``continue: false`` ends the
context with ``done``; ``cancel`` stops it silently. Bad requests get ``error`` messages.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from sip4ai.audio.g711 import alaw_encode, ulaw_encode
from testbed.mocks._cartesia_script import ContextRecord, PipelineScript, TtsConnectionRecord
from testbed.mocks._cartesia_ws import AioJsonConnection
from testbed.mocks._openai_script import Reply
from testbed.mocks._ws_common import tone


ENCODINGS: Final = ("pcm_mulaw", "pcm_alaw", "pcm_s16le", "pcm_f32le")
SAMPLE_RATES: Final = (8000, 16000, 22050, 24000, 44100, 48000)
_WORDS = re.compile(r"\S+")


def encode(samples: np.ndarray[Any, np.dtype[np.int16]], encoding: str) -> bytes:
    if encoding == "pcm_mulaw":
        return ulaw_encode(samples)
    if encoding == "pcm_alaw":
        return alaw_encode(samples)
    if encoding == "pcm_f32le":
        return (samples.astype("<f4") / 32768.0).astype("<f4").tobytes()
    return samples.astype("<i2").tobytes()


def bytes_per_sample(encoding: str) -> int:
    return {"pcm_mulaw": 1, "pcm_alaw": 1, "pcm_s16le": 2, "pcm_f32le": 4}[encoding]


def validate(request: dict[str, Any]) -> str | None:
    """The problem with a generation request, or ``None`` if it is acceptable."""
    if not isinstance(request.get("context_id"), str) or not request["context_id"]:
        return "context_id is required"
    if not isinstance(request.get("model_id"), str) or not request["model_id"]:
        return "model_id is required"
    if not isinstance(request.get("transcript"), str):
        return "transcript must be a string"
    voice = request.get("voice")
    if not isinstance(voice, dict) or voice.get("mode") != "id" or not voice.get("id"):
        return "voice must be {mode: id, id: <voice id>}"
    fmt = request.get("output_format")
    if not isinstance(fmt, dict) or fmt.get("container") != "raw":
        return "output_format.container must be raw"
    if fmt.get("encoding") not in ENCODINGS:
        return f"output_format.encoding must be one of {', '.join(ENCODINGS)}"
    if fmt.get("sample_rate") not in SAMPLE_RATES:
        return "output_format.sample_rate is not supported"
    return None


@dataclass
class _Piece:
    text: str
    more: bool
    flush: bool


@dataclass
class _Context:
    record: ContextRecord
    encoding: str
    rate_hz: int
    pieces: asyncio.Queue[_Piece] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    closed: bool = False
    elapsed_s: float = 0.0
    tone_hz: float | None = None


class TtsConnection(AioJsonConnection):
    def __init__(
        self,
        *args: Any,
        script: PipelineScript,
        record: TtsConnectionRecord,
        planned: Sequence[Reply],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._pipeline = script
        self._script = script.script
        self._record = record
        self._planned = planned
        self._contexts: dict[str, _Context] = {}
        self._audio_contexts = 0

    def redact(self, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("type") == "chunk":
            return {**event, "data": f"<{len(event.get('data', ''))} b64 chars>"}
        return event

    def on_bad_frame(self, text: str) -> None:
        self._error(None, 400, "Invalid JSON", "the message is not a JSON object")

    def _error(self, context_id: str | None, status: int, title: str, message: str) -> None:
        error: dict[str, Any] = {
            "type": "error",
            "done": True,
            "status_code": status,
            "title": title,
            "message": message,
            "error_code": "invalid_request",
            "request_id": f"req-{self._record.number}",
        }
        if context_id is not None:
            error["context_id"] = context_id
        self._record.errors.append(error)
        self.emit(error)

    def on_event(self, event: dict[str, Any]) -> None:
        context_id = event.get("context_id")
        if event.get("cancel") is True:
            ctx = self._contexts.get(str(context_id))
            if ctx is not None and ctx.task is not None:
                ctx.task.cancel()
                ctx.record.cancelled_at = time.monotonic()
            return
        problem = validate(event)
        if problem is not None:
            cid = context_id if isinstance(context_id, str) else None
            self._error(cid, 400, "Invalid request", problem)
            return
        cid = str(context_id)
        ctx = self._contexts.get(cid)
        if ctx is not None and ctx.closed:
            self._error(cid, 400, "Context closed", f"context {cid} has already finished")
            return
        if ctx is None:
            fmt = event["output_format"]
            record = ContextRecord(cid, time.monotonic())
            self._record.contexts.append(record)
            ctx = _Context(record, str(fmt["encoding"]), int(fmt["sample_rate"]))
            self._contexts[cid] = ctx
            ctx.task = self.spawn(self._generate(ctx), f"ctx-{cid}")
        more = bool(event.get("continue", False))
        ctx.record.pieces.append(str(event["transcript"]))
        ctx.record.continues.append(more)
        ctx.closed = not more
        ctx.pieces.put_nowait(_Piece(str(event["transcript"]), more, bool(event.get("flush"))))

    def _matching_reply(self, text: str) -> Reply | None:
        wanted = text.strip()
        for reply in reversed(self._planned):
            if wanted and wanted in reply.text:
                return reply
        return None

    def _piece_ms(self, text: str, reply: Reply | None) -> int:
        chars = len(text.strip())
        if reply is not None and reply.duration_ms:
            ms = round(reply.duration_ms * chars / max(1, len(reply.text.strip())))
        else:
            ms = self._script.ms_per_char * chars
        return max(self._script.chunk_ms, min(ms, self._pipeline.max_piece_ms))

    def _tone(self, ctx: _Context, reply: Reply | None) -> float:
        if ctx.tone_hz is None:
            ctx.tone_hz = (reply.tone_hz if reply else None) or self._script.tone_for(
                self._audio_contexts
            )
            self._audio_contexts += 1
            ctx.record.tone_hz = ctx.tone_hz
        return ctx.tone_hz

    async def _generate(self, ctx: _Context) -> None:
        flush_id = 0
        while True:
            piece = await ctx.pieces.get()
            if piece.text.strip():
                await self._speak(ctx, piece.text, flush_id)
            if piece.flush:
                flush_id += 1
                ctx.record.flush_ids = flush_id
                self.emit(
                    {
                        "type": "flush_done",
                        "context_id": ctx.record.context_id,
                        "done": False,
                        "flush_done": True,
                        "flush_id": flush_id,
                        "status_code": 206,
                    }
                )
            if not piece.more:
                record = ctx.record
                done = {"type": "done", "context_id": record.context_id, "done": True}
                self.emit({**done, "status_code": 200}, self._done_stamp(record))
                return

    async def _speak(self, ctx: _Context, text: str, flush_id: int) -> None:
        script = self._script
        reply = self._matching_reply(text)
        duration_ms = self._piece_ms(text, reply)
        samples = tone(self._tone(ctx, reply), duration_ms, ctx.rate_hz, script.amplitude)
        data = encode(samples, ctx.encoding)
        chunk_bytes = max(1, ctx.rate_hz * script.chunk_ms // 1000) * bytes_per_sample(ctx.encoding)
        speed = 1e9 if script.burst else script.speed
        await asyncio.sleep(self._pipeline.tts_latency_ms / 1000 / speed)
        start = time.monotonic()
        record = ctx.record
        words = _WORDS.findall(text)
        step_s = duration_ms / 1000 / max(1, len(words))
        stamped = 0
        for k, offset in enumerate(range(0, len(data), chunk_bytes)):
            if k:
                deadline = start + k * script.chunk_ms / 1000 / speed
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            piece = data[offset : offset + chunk_bytes]
            self.emit(
                {
                    "type": "chunk",
                    "context_id": record.context_id,
                    "data": base64.b64encode(piece).decode(),
                    "done": False,
                    "status_code": 206,
                    "step_time": 12.5,
                    "flush_id": flush_id,
                },
                self._first_audio(record) if record.first_audio_at is None and k == 0 else None,
            )
            record.audio_ms_sent += script.chunk_ms
            # Word timestamps follow the audio that completes each word (as generated).
            sent_s = (offset + len(piece)) / bytes_per_sample(ctx.encoding) / ctx.rate_hz
            upto = min(len(words), int(sent_s / step_s + 1e-6)) if words else 0
            if upto > stamped:
                self.emit(self._timestamps(ctx, words, stamped, upto, step_s))
                stamped = upto
        if stamped < len(words):
            self.emit(self._timestamps(ctx, words, stamped, len(words), step_s))
        ctx.elapsed_s += duration_ms / 1000

    @staticmethod
    def _done_stamp(record: ContextRecord) -> Callable[[float], None]:
        def stamp(at: float) -> None:
            record.done_at = at

        return stamp

    @staticmethod
    def _first_audio(record: ContextRecord) -> Callable[[float], None]:
        def stamp(at: float) -> None:
            record.first_audio_at = at

        return stamp

    def _timestamps(
        self, ctx: _Context, words: list[str], first: int, end: int, step_s: float
    ) -> dict[str, Any]:
        base = ctx.elapsed_s
        return {
            "type": "timestamps",
            "context_id": ctx.record.context_id,
            "done": False,
            "status_code": 206,
            "word_timestamps": {
                "words": words[first:end],
                "start": [round(base + i * step_s, 3) for i in range(first, end)],
                "end": [round(base + (i + 1) * step_s, 3) for i in range(first, end)],
            },
        }
