"""One websocket connection of the OpenAI Realtime mock: typed dispatch of client events,
server VAD turns, scripted responses streamed faster than real time, barge-in, function calls
and echo mode.

Handlers are synchronous; they put events into the outbox of ``JsonWsConnection``, drained by
one writer task, so the order on the wire is the order of ``emit`` calls and a cancelled
response task can never leave half an event behind.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from websockets.asyncio.server import ServerConnection

from testbed.mocks import _openai_events as ev
from testbed.mocks._openai_conversation import Conversation, CreatedMessage, CreatedOutput, Item
from testbed.mocks._openai_script import (
    ConnectionRecord,
    FunctionCallRecord,
    FunctionCallSpec,
    FunctionOutputRecord,
    InjectRecord,
    ReplyPlanner,
    ResponseRecord,
    Script,
    TruncateRecord,
    UserTurn,
)
from testbed.mocks._openai_session import (
    AudioFormat,
    SessionConfig,
    WireError,
    apply_session_update,
    invalid_type,
    invalid_value,
    missing_parameter,
)
from testbed.mocks._ws_common import CloseFrame, EventLog, JsonWsConnection, tone
from testbed.mocks.vad import EnergyVad, SpeechStarted, VadConfig, VadEvent


_AUDIO_DELTA: Final = "response.output_audio.delta"
_AUDIO_EVENTS: Final = (_AUDIO_DELTA, "input_audio_buffer.append")


@dataclass
class _Active:
    """The response being produced; ``item`` appears when its output item is announced."""

    record: ResponseRecord
    call: FunctionCallSpec | None
    output_format: AudioFormat
    task: asyncio.Task[None] | None = None
    item: dict[str, Any] | None = None
    transcript: str = ""


@dataclass
class _Echo:
    response_id: str = field(default_factory=lambda: ev.new_id("resp"))
    item_id: str = field(default_factory=lambda: ev.new_id("item"))


class OpenAIConnection(JsonWsConnection):
    def __init__(
        self,
        ws: ServerConnection,
        script: Script,
        record: ConnectionRecord,
        notify: Callable[[], None],
        event_log: EventLog,
        session: SessionConfig,
        refusal: tuple[WireError, int, str] | None,
    ) -> None:
        super().__init__(
            ws,
            name=f"openai-mock-{record.number}",
            number=record.number,
            faults=script.faults,
            notify=notify,
            event_log=event_log,
            received=record.received,
            sent=record.sent,
        )
        self._script = script
        self._record = record
        self._session = session
        self._refusal = refusal
        self._conversation = Conversation(legacy_item_created=script.legacy_item_created)
        self._planner = ReplyPlanner(script)
        self._vad: EnergyVad | None = None
        self._speech: UserTurn | None = None
        self._buffer_ms = 0.0
        """Input audio appended since the last commit or clear."""
        self._audio_ms = 0.0
        """Input audio appended during the session (the clock of ``audio_start_ms``)."""
        self._active: _Active | None = None
        self._voice_locked = False
        self._echo: _Echo | None = None
        self._rebuild_vad(0)

    # --- lifecycle and wire ---------------------------------------------------------------------

    def on_open(self) -> None:
        if self._refusal is not None:
            error, code, reason = self._refusal
            self.emit(ev.error_event(error, None))
            self.put(CloseFrame(code, reason))
            return
        if self._script.session_max_s is not None:
            self.start_timer(self._script.session_max_s, self._expire, "expiry")
        self.emit({"type": "session.created", "session": self._session_wire()})

    def on_close(self) -> None:
        self._active = None

    def _expire(self) -> None:
        error = ev.session_expired_error(self._script.session_limit_minutes)
        self.emit(ev.error_event(error, None))
        self.put(CloseFrame(1001, error.message))

    def emit(self, event: dict[str, Any], on_sent: Callable[[float], None] | None = None) -> None:
        super().emit({"event_id": ev.new_id("event"), **event}, on_sent)

    def redact(self, event: dict[str, Any]) -> dict[str, Any]:
        for key in ("audio", "delta"):
            if event.get("type") in _AUDIO_EVENTS and isinstance(event.get(key), str):
                return {**event, key: f"<{len(event[key])} b64 chars>"}
        return event

    def on_bad_frame(self, message: str | bytes) -> None:
        error = WireError("We could not parse the JSON body of your request.", code="invalid_json")
        self.emit(ev.error_event(error, None))

    def on_event(self, event: dict[str, Any]) -> None:
        if self._refusal is not None:
            return
        kind = event.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        try:
            if not isinstance(kind, str):
                raise missing_parameter("type")
            if handler is None:
                raise invalid_value(kind, ev.CLIENT_EVENT_TYPES, "type")
            handler(self, event)
        except WireError as error:
            self.emit(ev.error_event(error, event.get("event_id")))

    def _session_wire(self) -> dict[str, Any]:
        wire = self._session.to_wire()
        self._record.session = wire
        return wire

    @property
    def _committed_turns(self) -> int:
        return sum(1 for t in self._record.user_turns if t.committed)

    # --- session and input audio -----------------------------------------------------------------

    def _on_session_update(self, event: dict[str, Any]) -> None:
        old = self._session
        new = apply_session_update(old, event.get("session"), voice_locked=self._voice_locked)
        self._session = new
        if (old.turn_detection, old.input_format) != (new.turn_detection, new.input_format):
            self._rebuild_vad(int(self._audio_ms))
        self.emit({"type": "session.updated", "session": self._session_wire()})

    def _rebuild_vad(self, position_ms: int) -> None:
        td = self._session.turn_detection
        if td is None:
            self._vad = None
            return
        config = VadConfig(
            threshold=td.threshold,
            prefix_padding_ms=td.prefix_padding_ms,
            silence_duration_ms=td.silence_duration_ms,
            min_speech_ms=self._script.vad_min_speech_ms,
        )
        self._vad = EnergyVad(config, self._session.input_format.rate_hz, offset_ms=position_ms)

    def _on_append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise missing_parameter("audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except binascii.Error:
            raise WireError(
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                code="invalid_value",
                param="audio",
            ) from None
        self._record.audio_in += data
        if self._script.mode == "echo":
            self._echo_back(data)
            return
        fmt = self._session.input_format
        self._buffer_ms += len(data) / fmt.bytes_per_ms
        self._audio_ms += len(data) / fmt.bytes_per_ms
        if self._vad is not None:
            for vad_event in self._vad.push(fmt.decode(data)):
                self._on_vad(vad_event)

    def _on_vad(self, vad_event: VadEvent) -> None:
        td = self._session.turn_detection
        assert td is not None
        if isinstance(vad_event, SpeechStarted):
            turn = UserTurn(item_id=ev.new_id("item"), audio_start_ms=vad_event.audio_start_ms)
            self._speech = turn
            self._record.user_turns.append(turn)

            def stamp(at: float) -> None:
                turn.speech_started_at = at

            started = {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": turn.audio_start_ms,
                "item_id": turn.item_id,
            }
            self.emit(started, stamp)
            if td.interrupt_response and self._active is not None:
                turn.interrupted_response_id = self._active.record.response_id
                self._finish_active("cancelled", "turn_detected")
            return
        turn = self._speech or UserTurn(item_id=ev.new_id("item"), audio_start_ms=0)
        self._speech = None
        turn.audio_end_ms = vad_event.audio_end_ms
        stopped = {
            "type": "input_audio_buffer.speech_stopped",
            "audio_end_ms": turn.audio_end_ms,
            "item_id": turn.item_id,
        }
        self.emit(stopped)
        self._commit_turn(turn)
        if td.create_response and self._active is None:
            self._start_response("turn", None, turn)

    def _commit_turn(self, turn: UserTurn) -> None:
        index = self._committed_turns
        transcripts = self._script.transcripts
        transcript = (
            transcripts[index] if index < len(transcripts) else self._script.default_transcript
        )
        turn.transcript, turn.committed = transcript, True
        self._buffer_ms = 0.0
        previous = self._conversation.tail
        committed = {
            "type": "input_audio_buffer.committed",
            "previous_item_id": previous,
            "item_id": turn.item_id,
        }
        self.emit(committed)
        self.emit_all(self._conversation.add(ev.user_audio_message(turn.item_id), done=True))
        if self._session.transcription is None:
            return
        base = {"item_id": turn.item_id, "content_index": 0}
        for delta in ev.word_chunks(transcript):
            kind = "conversation.item.input_audio_transcription.delta"
            self.emit({"type": kind, **base, "delta": delta})
        words = len(transcript.split())
        usage = {
            "type": "tokens",
            "total_tokens": words + 10,
            "input_tokens": 10,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 10},
            "output_tokens": words,
        }
        kind = "conversation.item.input_audio_transcription.completed"
        self.emit({"type": kind, **base, "transcript": transcript, "usage": usage})

    def _on_commit(self, event: dict[str, Any]) -> None:
        if self._buffer_ms < 100:
            raise WireError(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                f"of audio, but buffer only has {self._buffer_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        turn = self._speech
        if turn is None:
            start_ms = max(0, int(self._audio_ms - self._buffer_ms))
            turn = UserTurn(item_id=ev.new_id("item"), audio_start_ms=start_ms)
            self._record.user_turns.append(turn)
        self._speech = None
        if self._vad is not None:
            self._vad.reset()
        self._commit_turn(turn)

    def _on_clear(self, event: dict[str, Any]) -> None:
        self._buffer_ms = 0.0
        self._speech = None
        if self._vad is not None:
            self._vad.reset()
        self.emit({"type": "input_audio_buffer.cleared"})

    def _echo_back(self, data: bytes) -> None:
        """Echo mode: the heard audio goes straight back as output deltas (no VAD)."""
        data = self._session.input_format.transcode(data, self._session.output_format)
        if self._echo is None:
            echo = self._echo = _Echo()
            response = self._response_obj(echo.response_id, "in_progress", None, [], None)
            self.emit({"type": "response.created", "response": response})
            item = ev.assistant_message(echo.item_id, "in_progress", None)
            self._announce_item(echo.response_id, item)
            self.emit(self._part_event("added", echo.response_id, echo.item_id, ""))
        self._record.echo_out += data
        self.emit(
            {
                "type": _AUDIO_DELTA,
                **self._content_base(self._echo.response_id, self._echo.item_id),
                "delta": base64.b64encode(data).decode(),
            }
        )

    # --- conversation items ---------------------------------------------------------------------

    def _on_item_create(self, event: dict[str, Any]) -> None:
        events, created = self._conversation.create(event)
        self.emit_all(events)
        at = time.monotonic()
        if isinstance(created, CreatedMessage) and created.role != "assistant":
            inject = InjectRecord(created.item_id, created.role, created.text, at)
            self._record.injects.append(inject)
            self._planner.pending_injects.append(inject)
        elif isinstance(created, CreatedOutput):
            output = FunctionOutputRecord(created.call_id, created.output, at)
            self._record.function_outputs.append(output)
            self._planner.pending_outputs.append(output)

    def _on_item_delete(self, event: dict[str, Any]) -> None:
        self.emit_all(self._conversation.delete(event))

    def _on_item_retrieve(self, event: dict[str, Any]) -> None:
        self.emit_all(self._conversation.retrieve(event))

    def _on_truncate(self, event: dict[str, Any]) -> None:
        def as_int(value: object) -> int:
            return value if isinstance(value, int) and not isinstance(value, bool) else -1

        record = TruncateRecord(
            item_id=str(event.get("item_id")),
            content_index=as_int(event.get("content_index")),
            audio_end_ms=as_int(event.get("audio_end_ms")),
            audio_sent_ms=None,
            accepted=False,
            at=time.monotonic(),
        )
        self._record.truncates.append(record)
        clamp = self._script.truncate_clamp_after_error
        result = self._conversation.truncate(event, clamp_after_error=clamp)
        record.audio_sent_ms, record.accepted = result.audio_sent_ms, result.accepted
        self.emit_all(result.events)

    # --- responses ------------------------------------------------------------------------------

    def _on_response_create(self, event: dict[str, Any]) -> None:
        if self._script.mode == "echo":
            return
        if self._active is not None:
            raise WireError(
                "Conversation already has an active response in progress: "
                f"{self._active.record.response_id}. Wait until the response is finished before "
                "creating a new one.",
                code="conversation_already_has_active_response",
            )
        params = event.get("response", {})
        if not isinstance(params, dict):
            raise invalid_type("response", "an object")
        instructions = params.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise invalid_type("response.instructions", "a string")
        self._start_response("client", instructions, None)

    def _on_response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        active = self._active
        if active is None or (wanted is not None and wanted != active.record.response_id):
            raise WireError(
                "Cancellation failed: no active response found", code="response_cancel_not_active"
            )
        self._finish_active("cancelled", "client_cancelled")

    def _start_response(
        self, trigger: Literal["turn", "client"], instructions: str | None, turn: UserTurn | None
    ) -> None:
        transcript = turn.transcript if turn else None
        turns = self._committed_turns
        call = self._planner.function_call_due(turns, transcript) if trigger == "turn" else None
        record = ResponseRecord(
            response_id=ev.new_id("resp"),
            trigger=trigger,
            kind="audio" if call is None else "function_call",
            created_at=time.monotonic(),
            instructions=instructions,
        )
        if call is None:
            names = {c.call_id: c.name for c in self._record.function_calls}
            reply = self._planner.choose(
                trigger=trigger,
                instructions=instructions,
                transcript=transcript,
                user_turns=turns,
                call_names=names,
            )
            record.text = reply.text
            record.tone_hz, record.duration_ms = self._planner.resolve(reply)
        else:
            record.text = call.name
        self._record.responses.append(record)
        active = _Active(record, call, self._session.output_format)
        self._active = active
        response = self._response_obj(record.response_id, "in_progress", None, [], None)
        self.emit({"type": "response.created", "response": response})
        active.task = self.spawn(self._stream(active), f"stream-{record.response_id}")

    def _announce_item(self, response_id: str, item: dict[str, Any]) -> Item:
        added = {
            "type": "response.output_item.added",
            "response_id": response_id,
            "output_index": 0,
            "item": item,
        }
        self.emit(added)
        self.emit_all(self._conversation.add(item, done=False))
        return self._conversation.items[item["id"]]

    async def _stream(self, active: _Active) -> None:
        """Task body: think, then stream the output item; ends via ``_finish_active``."""
        await asyncio.sleep(self._script.think_ms / 1000)
        rid = active.record.response_id
        if active.call is not None:
            self._stream_function_call(active, active.call)
        else:
            item_id = ev.new_id("item")
            active.record.item_id = item_id
            active.item = ev.assistant_message(item_id, "in_progress", None)
            stored = self._announce_item(rid, active.item)
            stored.audio_ms = 0
            self.emit(self._part_event("added", rid, item_id, ""))
            await self._stream_audio(active, stored)
        self._finish_active("completed", None)

    async def _stream_audio(self, active: _Active, stored: Item) -> None:
        script, record, fmt = self._script, active.record, active.output_format
        data = fmt.encode(tone(record.tone_hz, record.duration_ms, fmt.rate_hz, script.amplitude))
        chunk_bytes = max(1, fmt.bytes_per_ms * script.chunk_ms)
        n_chunks = max(1, math.ceil(len(data) / chunk_bytes))
        words = ev.word_chunks(record.text)
        words_sent = 0
        base = self._content_base(record.response_id, stored.wire["id"])
        start = time.monotonic()

        def stamp(at: float) -> None:
            record.first_audio_at = at

        for k in range(n_chunks):
            if k and script.burst:
                await asyncio.sleep(0)
            elif k:
                deadline = start + k * script.chunk_ms / 1000 / script.speed
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            while words_sent < math.ceil((k + 1) * len(words) / n_chunks):
                active.transcript += words[words_sent]
                delta = {"type": "response.output_audio_transcript.delta", **base}
                self.emit({**delta, "delta": words[words_sent]})
                words_sent += 1
            piece = data[k * chunk_bytes : (k + 1) * chunk_bytes]
            audio = {"type": _AUDIO_DELTA, **base, "delta": base64.b64encode(piece).decode()}
            self.emit(audio, stamp if k == 0 else None)
            self._voice_locked = True
            record.audio_bytes_sent += len(piece)
            record.audio_ms_sent = record.audio_bytes_sent // fmt.bytes_per_ms
            stored.audio_ms = record.audio_ms_sent
            self.notify()

    def _stream_function_call(self, active: _Active, spec: FunctionCallSpec) -> None:
        rid = active.record.response_id
        call_id = spec.call_id or ev.new_id("call")
        item_id = ev.new_id("item")
        arguments = json.dumps(dict(spec.arguments))
        active.record.item_id = item_id
        self._announce_item(
            rid, ev.function_call_item(item_id, call_id, spec.name, "", "in_progress")
        )
        base = {"response_id": rid, "item_id": item_id, "output_index": 0, "call_id": call_id}
        for i in range(0, len(arguments), 16):
            delta = {"type": "response.function_call_arguments.delta", **base}
            self.emit({**delta, "delta": arguments[i : i + 16]})
        done = {"type": "response.function_call_arguments.done", **base}
        self.emit({**done, "name": spec.name, "arguments": arguments})
        active.item = ev.function_call_item(item_id, call_id, spec.name, arguments, "in_progress")
        self._conversation.call_ids.add(call_id)
        call = FunctionCallRecord(call_id, spec.name, arguments, item_id, rid, time.monotonic())
        self._record.function_calls.append(call)

    def _finish_active(self, status: str, reason: str | None) -> None:
        """End the active response: stop its task and send the closing events in GA order."""
        active = self._active
        if active is None:
            return
        self._active = None
        if active.task is not None and active.task is not asyncio.current_task():
            active.task.cancel()
        record = active.record
        record.status, record.reason, record.done_at = status, reason, time.monotonic()
        rid = record.response_id
        item_status = "completed" if status == "completed" else "incomplete"
        output: list[dict[str, Any]] = []
        if active.item is not None and active.call is None:
            item_id = active.item["id"]
            base = self._content_base(rid, item_id)
            self.emit({"type": "response.output_audio.done", **base})
            transcript_done = {"type": "response.output_audio_transcript.done", **base}
            self.emit({**transcript_done, "transcript": active.transcript})
            self.emit(self._part_event("done", rid, item_id, active.transcript))
            output.append(ev.assistant_message(item_id, item_status, active.transcript))
        elif active.item is not None:
            output.append({**active.item, "status": item_status})
        for item in output:
            done = {"type": "response.output_item.done", "response_id": rid, "output_index": 0}
            self.emit({**done, "item": item})
            self.emit(self._conversation.done_event(item))
        usage = ev.usage(
            input_text=len(self._session.instructions) // 4,
            input_audio_ms=int(self._audio_ms),
            output_text=len(active.transcript.split()),
            output_audio_ms=record.audio_ms_sent,
        )
        response = self._response_obj(rid, status, reason, output, usage)
        self.emit({"type": "response.done", "response": response})

    def _response_obj(
        self,
        rid: str,
        status: str,
        reason: str | None,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
    ) -> dict[str, Any]:
        return ev.response_object(
            response_id=rid,
            conversation_id=self._conversation.id,
            status=status,
            reason=reason,
            output=output,
            output_format=self._session.output_format,
            voice=self._session.voice,
            usage_obj=usage,
        )

    @staticmethod
    def _content_base(rid: str, item_id: str) -> dict[str, Any]:
        return {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}

    @classmethod
    def _part_event(cls, stage: str, rid: str, item_id: str, transcript: str) -> dict[str, Any]:
        return {
            "type": f"response.content_part.{stage}",
            **cls._content_base(rid, item_id),
            "part": {"type": "audio", "transcript": transcript},
        }


_Handler = Callable[[OpenAIConnection, dict[str, Any]], None]

_HANDLERS: Final[dict[str, _Handler]] = {
    "session.update": OpenAIConnection._on_session_update,
    "input_audio_buffer.append": OpenAIConnection._on_append,
    "input_audio_buffer.commit": OpenAIConnection._on_commit,
    "input_audio_buffer.clear": OpenAIConnection._on_clear,
    "conversation.item.create": OpenAIConnection._on_item_create,
    "conversation.item.delete": OpenAIConnection._on_item_delete,
    "conversation.item.retrieve": OpenAIConnection._on_item_retrieve,
    "conversation.item.truncate": OpenAIConnection._on_truncate,
    "response.create": OpenAIConnection._on_response_create,
    "response.cancel": OpenAIConnection._on_response_cancel,
}
