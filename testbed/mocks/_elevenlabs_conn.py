"""One websocket connection of the ElevenLabs Agents mock (providers.md sections 2 and 6).

``conversation_initiation_client_data`` must come first; its overrides are checked against the
agent's allowed ones (close 1008 otherwise). Then: metadata with the agent's formats, the first
message, periodic pings (pongs timed), an energy VAD on the caller's audio that interrupts the
agent (``interruption``, a few stale chunks, ``agent_response_correction``) and ends turns with
``user_transcript`` and the next reply or ``client_tool_call``.

A reply counts as speaking until its audio would have finished playing in real time (the server
streams faster than real time but still interrupts what the caller is hearing).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from websockets.asyncio.server import ServerConnection

from testbed.mocks._elevenlabs_script import (
    AgentSettings,
    ConnectionRecord,
    PingRecord,
    ReplyRecord,
    ToolCallRecord,
    ToolResultRecord,
    UserTurn,
    WireFormat,
)
from testbed.mocks._openai_script import (
    FunctionCallSpec,
    FunctionOutputRecord,
    InjectRecord,
    ReplyPlanner,
    Script,
)
from testbed.mocks._ws_common import CloseFrame, EventLog, JsonWsConnection, tone
from testbed.mocks.vad import EnergyVad, SpeechStarted, VadConfig


_INITIATION: Final = "conversation_initiation_client_data"


def leaf_paths(value: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the non-object values in a nested JSON object."""
    if not isinstance(value, dict):
        return [prefix] if prefix else []
    paths: list[str] = []
    for key, child in value.items():
        paths.extend(leaf_paths(child, f"{prefix}.{key}" if prefix else str(key)))
    return paths


def error_event(error_type: str, message: str, code: int = 1008) -> dict[str, Any]:
    return {
        "type": "error",
        "error_event": {"code": code, "error_type": error_type, "message": message},
    }


@dataclass
class _Active:
    record: ReplyRecord
    audio: bytes
    task: asyncio.Task[None] | None = None
    offset: int = 0
    """Bytes of ``audio`` sent so far."""
    responded: bool = False
    """``agent_response`` was sent."""


CONTEXT_SHAPES_REPLY_S = 0.1
"""A contextual_update this close before a user_message is taken as part of it."""


class ElevenLabsConnection(JsonWsConnection):
    def __init__(
        self,
        ws: ServerConnection,
        script: Script,
        agent: AgentSettings,
        record: ConnectionRecord,
        notify: Callable[[], None],
        event_log: EventLog,
    ) -> None:
        super().__init__(
            ws,
            name=f"elevenlabs-mock-{record.number}",
            number=record.number,
            faults=script.faults,
            notify=notify,
            event_log=event_log,
            received=record.received,
            sent=record.sent,
        )
        self._script = script
        self._agent = agent
        self._record = record
        self._planner = ReplyPlanner(script)
        self._context: InjectRecord | None = None
        """The last contextual_update, until a user_message follows it."""
        self._input = WireFormat(agent.input_format)
        self._output = WireFormat(agent.output_format)
        vad = VadConfig(
            threshold=agent.vad_threshold,
            prefix_padding_ms=0,
            silence_duration_ms=agent.vad_silence_ms,
            min_speech_ms=script.vad_min_speech_ms,
        )
        self._vad = EnergyVad(vad, self._input.rate_hz)
        self._turn: UserTurn | None = None
        self._active: _Active | None = None
        self._initiated = False
        self._event_id = 0
        self._rtt_ms: int | None = None
        self._pending_pings: dict[int, PingRecord] = {}

    # --- lifecycle and wire ---------------------------------------------------------------------

    def on_open(self) -> None:
        """The client speaks first (``conversation_initiation_client_data``)."""

    def on_close(self) -> None:
        self._active = None

    def next_id(self) -> int:
        self._event_id += 1
        return self._event_id

    def redact(self, event: dict[str, Any]) -> dict[str, Any]:
        if isinstance(event.get("user_audio_chunk"), str):
            return {"type": "user_audio_chunk", "user_audio_chunk": "<audio>"}
        body = event.get("audio_event")
        if isinstance(body, dict) and "audio_base_64" in body:
            return {**event, "audio_event": {**body, "audio_base_64": "<audio>"}}
        return event

    def refuse(self, error_type: str, message: str, code: int = 1008) -> None:
        self.emit(error_event(error_type, message, code))
        self.put(CloseFrame(code, message[:120]))

    def on_bad_frame(self, message: str | bytes) -> None:
        self._record.bad_frames += 1
        self.refuse("invalid_message", "Invalid message received")

    def on_event(self, event: dict[str, Any]) -> None:
        if "user_audio_chunk" in event and "type" not in event:
            if self._initiated:
                self._on_audio(event["user_audio_chunk"])
                return
        kind = event.get("type")
        if not self._initiated:
            if kind == _INITIATION:
                self._on_initiation(event)
            else:
                self.refuse("invalid_message", f"Expected {_INITIATION} as the first message")
            return
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self.emit(error_event("invalid_message", f"Unknown message type {kind!r}"))
            return
        handler(self, event)

    # --- setup, keepalive -----------------------------------------------------------------------

    def _on_initiation(self, event: dict[str, Any]) -> None:
        self._record.initiation = event
        override = event.get("conversation_config_override") or {}
        refused = [p for p in leaf_paths(override) if p not in self._agent.allowed_overrides]
        if refused:
            self.refuse("override_error", f"Override for field '{refused[0]}' is not allowed")
            return
        self._initiated = True
        metadata = {
            "conversation_id": f"conv_mock{self._record.number:04d}",
            "agent_output_audio_format": self._output.name,
            "user_input_audio_format": self._input.name,
        }
        self.emit(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": metadata,
            }
        )
        if self._agent.ping_interval_s > 0:
            _ = self.spawn(self._ping_loop(), "pings")
        agent = override.get("agent") if isinstance(override, dict) else None
        first = agent.get("first_message") if isinstance(agent, dict) else None
        if first == "":  # an empty first message: the agent waits for the caller
            return
        if self._agent.greets or first:
            self._start_reply("first_message", text=first if isinstance(first, str) else None)

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self._agent.ping_interval_s)
            ping = PingRecord(self.next_id(), time.monotonic())
            self._record.pings.append(ping)
            self._pending_pings[ping.event_id] = ping

            def stamp(at: float, ping: PingRecord = ping) -> None:
                ping.sent_at = at

            body = {"event_id": ping.event_id, "ping_ms": self._rtt_ms}
            self.emit({"type": "ping", "ping_event": body}, stamp)

    def _on_pong(self, event: dict[str, Any]) -> None:
        ping = self._pending_pings.pop(event.get("event_id", -1), None)
        if ping is None:
            return
        ping.pong_at = time.monotonic()
        rtt_ms = (ping.pong_at - ping.sent_at) * 1000
        ping.late = rtt_ms > self._agent.pong_late_ms
        self._rtt_ms = round(rtt_ms)

    # --- caller audio and turns -----------------------------------------------------------------

    def _on_audio(self, chunk: object) -> None:
        try:
            data = base64.b64decode(str(chunk), validate=True)
        except binascii.Error:
            self.emit(error_event("invalid_message", "user_audio_chunk is not base64"))
            return
        self._record.audio_in += data
        for vad_event in self._vad.push(self._input.decode(data)):
            if isinstance(vad_event, SpeechStarted):
                self._speech_started()
            else:
                self._speech_stopped()

    def _speech_started(self) -> None:
        turn = UserTurn(speech_started_at=time.monotonic())
        self._turn = turn
        self._record.user_turns.append(turn)
        if self._active is not None and self._agent.interruptions:
            turn.interrupted_reply = len(self._record.replies) - 1
            turn.interruption_event_id = self._interrupt(turn)

    def _speech_stopped(self) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        index = sum(1 for t in self._record.user_turns if t.transcript is not None)
        transcripts = self._script.transcripts
        text = transcripts[index] if index < len(transcripts) else self._script.default_transcript
        turn.transcript, turn.transcript_at = text, time.monotonic()
        body = {"user_transcript": text, "event_id": self.next_id()}
        self.emit({"type": "user_transcript", "user_transcription_event": body})
        call = self._planner.function_call_due(index + 1, text)
        if call is not None:
            self._tool_call(call)
        else:
            self._start_reply("turn", transcript=text)

    # --- replies --------------------------------------------------------------------------------

    def _start_reply(
        self,
        trigger: str,
        *,
        text: str | None = None,
        instructions: str | None = None,
        transcript: str | None = None,
    ) -> None:
        if self._active is not None:
            self._interrupt()
        names = {c.call_id: c.name for c in self._record.tool_calls}
        reply = self._planner.choose(
            trigger="turn" if trigger == "turn" else "client",
            instructions=instructions,
            transcript=transcript,
            user_turns=sum(1 for t in self._record.user_turns if t.transcript is not None),
            call_names=names,
        )
        tone_hz, duration_ms = self._planner.resolve(reply)
        record = ReplyRecord(trigger, text or reply.text, tone_hz, duration_ms, time.monotonic())
        self._record.replies.append(record)
        pcm = tone(tone_hz, duration_ms, self._output.rate_hz, self._script.amplitude)
        active = _Active(record, self._output.encode(pcm))
        self._active = active
        active.task = self.spawn(self._stream(active), f"reply-{len(self._record.replies)}")

    def _chunk_bytes(self) -> int:
        size = max(1, int(self._output.bytes_per_ms * self._script.chunk_ms))
        return size + size % 2 if self._output.encoding == "pcm" else size

    def _send_chunk(self, active: _Active, piece: bytes, event_id: int) -> None:
        record = active.record

        def stamp(at: float) -> None:
            if record.first_audio_at is None:
                record.first_audio_at = at

        body = {"audio_base_64": base64.b64encode(piece).decode(), "event_id": event_id}
        self.emit({"type": "audio", "audio_event": body}, stamp)
        record.event_ids.append(event_id)
        record.audio_ms_sent += len(piece) / self._output.bytes_per_ms

    async def _stream(self, active: _Active) -> None:
        """Think, announce the text, stream the tone, then stay 'speaking' until played out."""
        script, record = self._script, active.record
        await asyncio.sleep(script.think_ms / 1000)
        body = {"agent_response": record.text, "event_id": self.next_id()}
        self.emit({"type": "agent_response", "agent_response_event": body})
        active.responded = True
        size = self._chunk_bytes()
        n_chunks = max(1, math.ceil(len(active.audio) / size))
        start = time.monotonic()
        for k in range(n_chunks):
            if k and script.burst:
                await asyncio.sleep(0)
            elif k:
                deadline = start + k * script.chunk_ms / 1000 / script.speed
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            piece = active.audio[k * size : (k + 1) * size]
            active.offset += len(piece)
            self._send_chunk(active, piece, self.next_id())
            self.notify()
        await asyncio.sleep(max(0.0, start + record.duration_ms / 1000 - time.monotonic()))
        record.status = "completed"
        if self._active is active:
            self._active = None
        self.notify()

    def _interrupt(self, turn: UserTurn | None = None) -> int:
        """Interrupt the active reply; returns the interruption's ``event_id``."""
        active = self._active
        assert active is not None
        self._active = None
        if active.task is not None and active.task is not asyncio.current_task():
            active.task.cancel()
        record = active.record
        record.status = "interrupted"
        size = self._chunk_bytes()
        stale: list[tuple[bytes, int]] = []
        for _ in range(self._agent.stale_chunks if active.responded else 0):
            piece = active.audio[active.offset : active.offset + size]
            if not piece:
                break
            active.offset += len(piece)
            stale.append((piece, self.next_id()))
        interruption_id = self._event_id

        def stamp(at: float) -> None:
            if turn is not None:
                turn.interruption_sent_at = at

        interruption = {"type": "interruption", "interruption_event": {"event_id": interruption_id}}
        self.emit(interruption, stamp)
        for piece, event_id in stale:
            self._send_chunk(active, piece, event_id)
        if active.responded:
            words = record.text.split()
            heard = active.offset / max(1, len(active.audio))
            kept = " ".join(words[: max(1, int(len(words) * heard))])
            record.corrected_text = f"{kept}..."
            body = {
                "original_agent_response": record.text,
                "corrected_agent_response": record.corrected_text,
                "event_id": interruption_id,
            }
            self.emit(
                {"type": "agent_response_correction", "agent_response_correction_event": body}
            )
        return interruption_id

    # --- tools and injected context -------------------------------------------------------------

    def _tool_call(self, spec: FunctionCallSpec) -> None:
        call_id = spec.call_id or f"toolu_mock{len(self._record.tool_calls) + 1:04d}"
        parameters = dict(spec.arguments)
        self._record.tool_calls.append(
            ToolCallRecord(call_id, spec.name, parameters, time.monotonic())
        )
        body = {
            "tool_name": spec.name,
            "tool_call_id": call_id,
            "parameters": parameters,
            "event_id": self.next_id(),
        }
        self.emit({"type": "client_tool_call", "client_tool_call": body})

    def _on_tool_result(self, event: dict[str, Any]) -> None:
        call_id = str(event.get("tool_call_id"))
        result = event.get("result")
        text = result if isinstance(result, str) else str(result)
        at = time.monotonic()
        record = ToolResultRecord(call_id, text, bool(event.get("is_error", False)), at)
        self._record.tool_results.append(record)
        if all(c.call_id != call_id for c in self._record.tool_calls):
            self.emit(error_event("invalid_message", f"Unknown tool_call_id {call_id!r}"))
            return
        self._planner.pending_outputs.append(FunctionOutputRecord(call_id, text, at))
        self._start_reply("tool_result")

    def _on_contextual_update(self, event: dict[str, Any]) -> None:
        self._context = self._inject(event, "system")

    def _on_user_message(self, event: dict[str, Any]) -> None:
        inject = self._inject(event, "user")
        if inject is None:
            return
        context, self._context = self._context, None
        if context is not None and inject.at - context.at < CONTEXT_SHAPES_REPLY_S:
            # Background context alone changes no reply; right before a user message it
            # scripts that reply (inject_reply), like OpenAI's system item + response.create.
            self._planner.pending_injects.append(context)
        self._start_reply("user_message", instructions=inject.text)

    def _inject(self, event: dict[str, Any], role: str) -> InjectRecord | None:
        text = event.get("text")
        if not isinstance(text, str):
            self.emit(error_event("invalid_message", f"{event.get('type')} needs 'text'"))
            return None
        inject = InjectRecord(f"msg_{len(self._record.injects) + 1}", role, text, time.monotonic())
        self._record.injects.append(inject)
        return inject

    def _ignore(self, event: dict[str, Any]) -> None:
        """Accepted and recorded, no effect on the mock (user_activity, feedback, ...)."""


_Handler = Callable[[ElevenLabsConnection, dict[str, Any]], None]

_HANDLERS: Final[dict[str, _Handler]] = {
    "pong": ElevenLabsConnection._on_pong,
    "client_tool_result": ElevenLabsConnection._on_tool_result,
    "contextual_update": ElevenLabsConnection._on_contextual_update,
    "user_message": ElevenLabsConnection._on_user_message,
    "user_activity": ElevenLabsConnection._ignore,
    "feedback": ElevenLabsConnection._ignore,
}
