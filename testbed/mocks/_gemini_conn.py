"""One websocket connection of the Gemini Live mock: ``setup`` first, server VAD on the
realtime audio, scripted replies streamed as 24 kHz PCM16 ``inlineData`` with output
transcription, barge-in (``interrupted`` then ``turnComplete``), tool calls that block until
``toolResponse``, ``goAway`` before the connection's lifetime ends, and resumption handles.

Handlers are synchronous and talk back through the ordered outbox; the writer sends every
server message as a binary frame of UTF-8 JSON (or text, per the script).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from testbed.mocks import _gemini_wire as gw
from testbed.mocks._gemini_script import (
    Conversation,
    GeminiConnectionRecord,
    GeminiFunctionCall,
    GeminiScript,
)
from testbed.mocks._openai_events import new_id, word_chunks
from testbed.mocks._openai_script import (
    FunctionCallSpec,
    FunctionOutputRecord,
    InjectRecord,
    ReplyPlanner,
    ResponseRecord,
    UserTurn,
)
from testbed.mocks._ws_common import (
    CloseFrame,
    EventLog,
    EventRecord,
    JsonWsConnection,
    RawFrame,
    cancel_and_wait,
    tone,
)
from testbed.mocks.vad import EnergyVad, SpeechStarted, VadConfig


_BYTES_PER_MS: Final = gw.OUTPUT_RATE_HZ * 2 // 1000
_NOT_FOUND: Final = "Requested entity was not found."


@dataclass
class _Active:
    record: ResponseRecord
    task: asyncio.Task[None] | None = None
    words_sent: int = 0


class GeminiConnection(JsonWsConnection):
    def __init__(
        self,
        ws: ServerConnection,
        script: GeminiScript,
        record: GeminiConnectionRecord,
        notify: Callable[[], None],
        event_log: EventLog,
        conversations: dict[str, Conversation],
        refusal: gw.CloseRequest | None,
    ) -> None:
        super().__init__(
            ws,
            name=f"gemini-mock-{record.number}",
            number=record.number,
            faults=script.base.faults,
            notify=notify,
            event_log=event_log,
            received=record.received,
            sent=record.sent,
        )
        self._script = script
        self._base = script.base
        self._record = record
        self._conversations = conversations
        self._refusal = refusal
        self._conv = Conversation(ReplyPlanner(script.base))
        self._setup_done = False
        self._closing = False
        self._vad: EnergyVad | None = None
        self._speech: UserTurn | None = None
        self._active: _Active | None = None
        self._waiting_calls: set[str] = set()

    # --- transport: binary JSON frames, records keyed by the top-level member ------------------

    async def serve(self) -> None:
        _ = self.spawn(self._drain(), "writer")
        try:
            faults = self._faults
            if faults.close_after_s is not None:
                close = CloseFrame(faults.close_code, faults.close_reason)
                self.start_timer(faults.close_after_s, lambda: self.put(close), "fault-close")
            if faults.malformed_after_s is not None:
                raw = RawFrame(faults.malformed_frame)
                self.start_timer(faults.malformed_after_s, lambda: self.put(raw), "fault-frame")
            self.on_open()
            async for message in self._ws:
                self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self.on_close()
            await cancel_and_wait(list(self._tasks))
        if self._failures:
            raise self._failures[0]

    async def _drain(self) -> None:
        binary = self._script.binary_frames
        while True:
            item = await self._outbox.get()
            try:
                if isinstance(item, CloseFrame):
                    await self._ws.close(item.code, item.reason)
                    return
                text = item.text if isinstance(item, RawFrame) else json.dumps(item.event)
                at = time.monotonic()
                await self._ws.send(text.encode() if binary else text)
                if isinstance(item, RawFrame):
                    continue
                self._on_sent(item.event, at)
                if item.on_sent is not None:
                    item.on_sent(at)
            except ConnectionClosed:
                return

    def _on_sent(self, event: dict[str, Any], at: float) -> None:
        kind = gw.kind_of(event)
        self._sent.append(EventRecord(at, kind, gw.redact(event)))
        self._log.write("out", self._number, {"type": kind}, at)
        self.notify()

    def _on_message(self, message: str | bytes) -> None:
        at = time.monotonic()
        try:
            event = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            event = None
        if not isinstance(event, dict):
            self.on_bad_frame(message)
            self.notify()
            return
        event = gw.normalize(event)
        kind = gw.kind_of(event)
        self._received.append(EventRecord(at, kind, gw.redact(event)))
        self._log.write("in", self._number, {"type": kind}, at)
        self.on_event(event)
        self.notify()

    def drop(self, code: int, reason: str) -> None:
        """Close this connection now (tests: a link that fails mid-call)."""
        self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self._stop_active("closed")
            # A close reason is at most 123 bytes (RFC 6455 section 5.5); the server cuts it.
            short = reason.encode()[:123].decode(errors="ignore")
            self.put(CloseFrame(code, short))

    # --- lifecycle ------------------------------------------------------------------------------

    def on_open(self) -> None:
        if self._refusal is not None:
            self._close(self._refusal.code, self._refusal.reason)
            return
        lifetime = self._script.connection_lifetime_s
        if lifetime is not None:
            notice = max(0.0, lifetime - self._script.go_away_notice_s)
            self.start_timer(notice, self._go_away, "go-away")
            self.start_timer(lifetime, lambda: self._close(1001, "going away"), "lifetime")

    def on_close(self) -> None:
        self._active = None

    def _go_away(self) -> None:
        left = self._script.connection_lifetime_s or 0.0
        self.emit(gw.go_away(min(left, self._script.go_away_notice_s)))
        self._record.go_away_at = time.monotonic()

    def on_bad_frame(self, message: str | bytes) -> None:
        self._close(1007, gw.INVALID_ARGUMENT)

    def on_event(self, event: dict[str, Any]) -> None:
        if self._closing:
            return
        try:
            kind = gw.message_kind(event)
            if kind in ("setup", "config"):
                self._on_setup(kind, event[kind])
            elif not self._setup_done:
                raise gw.CloseRequest(1007, gw.INVALID_ARGUMENT)
            elif kind == "realtimeInput":
                self._on_realtime_input(event[kind])
            elif kind == "clientContent":
                self._on_client_content(event[kind])
            else:
                self._on_tool_response(event[kind])
        except gw.CloseRequest as close:
            self._close(close.code, close.reason)

    def _on_setup(self, kind: str, body: object) -> None:
        if self._setup_done:
            raise gw.CloseRequest(1007, gw.INVALID_ARGUMENT)
        setup = gw.parse_setup(body, self._script.known_models)
        if setup.resume_handle is not None:
            conv = self._conversations.get(setup.resume_handle)
            if conv is None or self._script.reject_resumption:
                raise gw.CloseRequest(1008, _NOT_FOUND)
            self._conv = conv
            self._record.resumed_from = setup.resume_handle
        assert isinstance(body, dict)
        self._record.setup, self._record.setup_spelling = body, kind
        self._setup_done = True
        self.emit(gw.setup_complete(new_id("session")))
        self._send_handle()
        if self._script.close_after_setup is not None:
            self._close(self._script.close_after_setup, "mock: close after setup")

    def _send_handle(self) -> None:
        if not self._script.resumption_updates:
            return
        handle = new_id("handle")
        self._conversations[handle] = self._conv
        self._conv.handles.append(handle)
        self._record.handles_sent.append(handle)
        self.emit(gw.resumption_update(handle))

    # --- input ----------------------------------------------------------------------------------

    def _on_realtime_input(self, body: object) -> None:
        if not isinstance(body, Mapping):
            raise gw.CloseRequest(1007, gw.INVALID_ARGUMENT)
        blobs = list(body.get("mediaChunks") or [])
        if isinstance(body.get("audio"), Mapping):
            blobs.append(body["audio"])
        for blob in blobs:
            if not isinstance(blob, Mapping):
                raise gw.CloseRequest(1007, gw.INVALID_ARGUMENT)
            self._on_audio(gw.mime_rate_hz(blob.get("mimeType")), gw.decode_pcm(blob.get("data")))
        text = body.get("text")
        if isinstance(text, str) and text:
            self._record.text_inputs.append(text)
            self._interrupt(None)
            self._start_reply("client", text, None)

    def _on_audio(self, rate_hz: int, pcm: bytes) -> None:
        self._record.audio_in += pcm
        self._record.input_rate_hz = rate_hz
        if self._base.mode == "echo":
            out = gw.resample(gw.samples(pcm), rate_hz, gw.OUTPUT_RATE_HZ).astype("<i2").tobytes()
            self._record.echo_out += out
            self.emit(gw.model_audio(out))
            return
        if self._vad is None or self._vad.rate_hz != rate_hz:
            position = self._vad.position_ms if self._vad else 0
            config = VadConfig(min_speech_ms=self._base.vad_min_speech_ms)
            self._vad = EnergyVad(config, rate_hz, offset_ms=position)
        for vad_event in self._vad.push(gw.samples(pcm)):
            if isinstance(vad_event, SpeechStarted):
                self._on_speech_started(vad_event.audio_start_ms)
            else:
                self._on_speech_stopped(vad_event.audio_end_ms)

    def _on_speech_started(self, audio_start_ms: int) -> None:
        turn = UserTurn(item_id=new_id("turn"), audio_start_ms=audio_start_ms)
        turn.speech_started_at = time.monotonic()
        self._speech = turn
        self._record.user_turns.append(turn)
        self._interrupt(turn)

    def _interrupt(self, turn: UserTurn | None) -> None:
        """Barge-in: stop the reply (``interrupted`` then ``turnComplete``), cancel calls."""
        if self._waiting_calls:
            ids = sorted(self._waiting_calls)
            self._waiting_calls.clear()
            for call in self._record.function_calls:
                call.cancelled = call.cancelled or call.call_id in ids
            self.emit({"toolCallCancellation": {"ids": ids}})
        active = self._active
        if active is None:
            return
        if turn is not None:
            turn.interrupted_response_id = active.record.response_id
        self._stop_active("cancelled")
        self.emit(gw.server_content(interrupted=True))
        record, base = active.record, self._base
        for _ in range(self._script.stale_chunks_after_interrupt):
            stale = tone(record.tone_hz, base.chunk_ms, gw.OUTPUT_RATE_HZ, base.amplitude)
            self.emit(gw.model_audio(stale.astype("<i2").tobytes()))
        self.emit(gw.server_content(turnComplete=True))

    def _on_speech_stopped(self, audio_end_ms: int) -> None:
        turn = self._speech or UserTurn(item_id=new_id("turn"), audio_start_ms=0)
        self._speech = None
        turn.audio_end_ms = audio_end_ms
        conv = self._conv
        transcripts = self._base.transcripts
        index = conv.user_turns
        text = transcripts[index] if index < len(transcripts) else self._base.default_transcript
        conv.user_turns += 1
        turn.transcript, turn.committed = text, True
        setup = self._record.setup or {}
        if "inputAudioTranscription" in setup:
            pieces = word_chunks(text)
            for i, piece in enumerate(pieces):
                heard: dict[str, Any] = {"text": piece}
                if i == len(pieces) - 1 and self._script.input_transcription_finished:
                    heard["finished"] = True
                self.emit(gw.server_content(inputTranscription=heard))
        call = conv.planner.function_call_due(conv.user_turns, text)
        if call is not None:
            self._call_function(call)
        else:
            self._start_reply("turn", None, text)

    def _on_client_content(self, body: object) -> None:
        if not isinstance(body, Mapping):
            raise gw.CloseRequest(1007, gw.INVALID_ARGUMENT)
        at = time.monotonic()
        for turn in body.get("turns") or []:
            if not isinstance(turn, Mapping) or turn.get("role", "user") not in ("user", "model"):
                raise gw.CloseRequest(1007, gw.INVALID_ARGUMENT)
            parts = turn.get("parts") or []
            text = "".join(str(p.get("text", "")) for p in parts if isinstance(p, Mapping))
            inject = InjectRecord(new_id("turn"), str(turn.get("role", "user")), text, at)
            self._record.injects.append(inject)
            self._conv.planner.pending_injects.append(inject)
        if body.get("turnComplete"):
            self._interrupt(None)
            self._start_reply("client", None, None)

    def _on_tool_response(self, body: object) -> None:
        if not isinstance(body, Mapping):
            raise gw.CloseRequest(1007, gw.INVALID_ARGUMENT)
        at = time.monotonic()
        for response in body.get("functionResponses") or []:
            call_id = response.get("id") if isinstance(response, Mapping) else None
            if not isinstance(call_id, str) or not isinstance(response.get("response"), dict):
                raise gw.CloseRequest(1007, gw.INVALID_ARGUMENT)
            output = FunctionOutputRecord(call_id, json.dumps(response["response"]), at)
            self._record.function_outputs.append(output)
            if call_id in self._waiting_calls:
                self._waiting_calls.discard(call_id)
                self._conv.planner.pending_outputs.append(output)
        code = self._script.close_after_tool_response
        if code is not None:
            self._close(code, "Internal error occurred.")
        elif not self._waiting_calls and self._conv.planner.pending_outputs:
            self._start_reply("client", None, None)

    # --- output ---------------------------------------------------------------------------------

    def _call_function(self, spec: FunctionCallSpec) -> None:
        call_id = spec.call_id or new_id("fc")
        arguments = json.dumps(dict(spec.arguments))
        self._conv.call_names[call_id] = spec.name
        self._waiting_calls.add(call_id)
        call = GeminiFunctionCall(call_id, spec.name, arguments, time.monotonic())
        self._record.function_calls.append(call)
        record = ResponseRecord(
            response_id=new_id("resp"),
            trigger="turn",
            kind="function_call",
            created_at=call.at,
            text=spec.name,
            status="completed",
            done_at=call.at,
        )
        self._record.responses.append(record)
        self.emit(gw.tool_call([(call_id, spec.name, spec.arguments)]))

    def _start_reply(
        self, trigger: Literal["turn", "client"], instructions: str | None, heard: str | None
    ) -> None:
        reply = self._conv.planner.choose(
            trigger=trigger,
            instructions=instructions,
            transcript=heard,
            user_turns=self._conv.user_turns,
            call_names=self._conv.call_names,
        )
        record = ResponseRecord(
            response_id=new_id("resp"),
            trigger=trigger,
            kind="audio",
            created_at=time.monotonic(),
            text=reply.text,
            instructions=instructions,
        )
        record.tone_hz, record.duration_ms = self._conv.planner.resolve(reply)
        self._record.responses.append(record)
        active = _Active(record)
        self._active = active
        active.task = self.spawn(self._stream(active), f"reply-{record.response_id}")

    def _stop_active(self, status: str) -> None:
        active, self._active = self._active, None
        if active is None:
            return
        if active.task is not None and active.task is not asyncio.current_task():
            active.task.cancel()
        active.record.status, active.record.done_at = status, time.monotonic()

    async def _stream(self, active: _Active) -> None:
        """Task body: think, stream the tone with transcription, then ``turnComplete``."""
        base, record = self._base, active.record
        await asyncio.sleep(base.think_ms / 1000)
        pcm = tone(record.tone_hz, record.duration_ms, gw.OUTPUT_RATE_HZ, base.amplitude)
        data = pcm.astype("<i2").tobytes()
        chunk_bytes = max(2, _BYTES_PER_MS * base.chunk_ms)
        n_chunks = max(1, math.ceil(len(data) / chunk_bytes))
        words = word_chunks(record.text) if record.text else []
        start = time.monotonic()

        def stamp(at: float) -> None:
            record.first_audio_at = at

        for k in range(n_chunks):
            if k and base.burst:
                await asyncio.sleep(0)
            elif k:
                deadline = start + k * base.chunk_ms / 1000 / base.speed
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            due = math.ceil((k + 1) * len(words) / n_chunks) if self._transcribes_output else 0
            said = "".join(words[active.words_sent : due])
            active.words_sent = max(active.words_sent, due)
            piece = data[k * chunk_bytes : (k + 1) * chunk_bytes]
            last = k == n_chunks - 1
            if last and self._script.bundled:
                await self._hold_for_playback(start, record.duration_ms - base.chunk_ms)
            self._emit_chunk(piece, said, last, stamp if k == 0 else None)
            record.audio_bytes_sent += len(piece)
            record.audio_ms_sent = record.audio_bytes_sent // _BYTES_PER_MS
            self.notify()
        if not self._script.bundled:
            self.emit(gw.server_content(generationComplete=True))
            await self._hold_for_playback(start, record.duration_ms)
            self.emit({**gw.server_content(turnComplete=True), "usageMetadata": self._usage()})
        self._active = None
        record.status, record.done_at = "completed", time.monotonic()
        self._send_handle()

    async def _hold_for_playback(self, start: float, ms: int) -> None:
        """The model assumes real-time playback: the turn (and barge-in on it) lasts until the
        caller could have heard ``ms`` of it, whatever the streaming speed."""
        if self._script.hold_turn_for_playback:
            await asyncio.sleep(max(0.0, start + ms / 1000 - time.monotonic()))

    def _emit_chunk(
        self, piece: bytes, said: str, last: bool, on_sent: Callable[[float], None] | None
    ) -> None:
        if self._script.bundled:
            message = gw.model_audio(piece, said or None)
            if last:
                message["serverContent"].update(generationComplete=True, turnComplete=True)
                message["usageMetadata"] = self._usage()
            self.emit(message, on_sent)
            return
        self.emit(gw.model_audio(piece), on_sent)
        if said:
            self.emit(gw.server_content(outputTranscription={"text": said}))

    @property
    def _transcribes_output(self) -> bool:
        return "outputAudioTranscription" in (self._record.setup or {})

    def _usage(self) -> dict[str, Any]:
        audio_s = len(self._record.audio_in) // 32_000
        return gw.usage(prompt_tokens=25 * audio_s + 10, response_tokens=25)
