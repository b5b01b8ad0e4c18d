"""One websocket connection of the Deepgram Voice Agent mock.

``Settings`` must come first and match the schema (else ``Error UNPARSABLE_CLIENT_MESSAGE`` and
close); then ``SettingsApplied``, the greeting, and turns driven by an energy VAD on the caller's
binary audio: ``UserStartedSpeaking`` (cutting the reply being spoken), ``ConversationText``
(user, from the script's transcripts), ``AgentThinking``, scripted ``FunctionCallRequest``s or a
reply (``ConversationText`` assistant, ``AgentStartedSpeaking``, binary audio streamed at
``speed`` x real time, ``AgentAudioDone``). Neither audio nor ``KeepAlive`` for
``client_message_timeout_s`` gets ``Error CLIENT_MESSAGE_TIMEOUT`` and a close.

Handlers are synchronous and write to one ordered outbox (JSON and binary frames alike), drained
by a single writer task, so the order on the wire is the order of the calls here.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from testbed.mocks._deepgram_script import (
    ConnectionRecord,
    DeepgramScript,
    FunctionRequestRecord,
    FunctionResponseRecord,
    InjectRecord,
    ReplyRecord,
    ReplyTrigger,
    UserTurn,
)
from testbed.mocks._deepgram_settings import (
    MOCK_CODECS,
    AgentSettings,
    SettingsError,
    WireAudio,
    parse_settings,
)
from testbed.mocks._openai_script import FunctionCallSpec, FunctionOutputRecord, Reply, ReplyPlanner
from testbed.mocks._ws_common import (
    CloseFrame,
    EventLog,
    JsonWsConnection,
    OutboxItem,
    RawFrame,
    cancel_and_wait,
    tone,
)
from testbed.mocks.vad import EnergyVad, SpeechStarted, VadConfig, VadEvent


UNPARSABLE: Final = "UNPARSABLE_CLIENT_MESSAGE"
UNPARSABLE_TEXT: Final = (
    "Text message received from client did not match any of the formats we expect."
)
TIMEOUT: Final = "CLIENT_MESSAGE_TIMEOUT"
TIMEOUT_TEXT: Final = (
    "We waited too long for a websocket message. Please ensure that you're sending binary "
    "messages containing user speech."
)


@dataclass(frozen=True)
class AudioFrame:
    """Outbox entry: one binary frame of agent audio."""

    data: bytes
    on_sent: Callable[[float], None] | None = None


@dataclass
class _Active:
    record: ReplyRecord
    audio: bytes
    task: asyncio.Task[None] | None = None


class DeepgramConnection(JsonWsConnection):
    def __init__(
        self,
        ws: ServerConnection,
        script: DeepgramScript,
        record: ConnectionRecord,
        notify: Callable[[], None],
        event_log: EventLog,
        auth_refused: bool,
    ) -> None:
        super().__init__(
            ws,
            name=f"deepgram-mock-{record.number}",
            number=record.number,
            faults=script.faults,
            notify=notify,
            event_log=event_log,
            received=record.received,
            sent=record.sent,
        )
        self._script = script
        self._record = record
        self._auth_refused = auth_refused
        self._frames: asyncio.Queue[OutboxItem | AudioFrame] = asyncio.Queue()
        self._planner = ReplyPlanner(script)
        self._agent: AgentSettings | None = None
        self._applied = False
        self._failed = False
        self._vad: EnergyVad | None = None
        self._speech: UserTurn | None = None
        self._active: _Active | None = None
        self._after_reply: list[Callable[[], None]] = []
        self._waiting_calls: dict[str, str] = {}
        self._last_client = time.monotonic()
        self._echoing: ReplyRecord | None = None

    # --- plumbing: one writer for JSON and binary frames ------------------------------------------

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

    def put(self, item: OutboxItem) -> None:
        self._frames.put_nowait(item)

    def _send_audio(self, data: bytes, on_sent: Callable[[float], None] | None = None) -> None:
        self._frames.put_nowait(AudioFrame(data, on_sent))

    async def _drain(self) -> None:
        while True:
            item = await self._frames.get()
            try:
                if isinstance(item, CloseFrame):
                    await self._ws.close(item.code, item.reason)
                    return
                if isinstance(item, RawFrame):
                    await self._ws.send(item.text)
                    continue
                at = time.monotonic()
                if isinstance(item, AudioFrame):
                    await self._ws.send(item.data)
                else:
                    await self._ws.send(json.dumps(item.event))
                    self._on_sent(item.event, at)
                if item.on_sent is not None:
                    item.on_sent(at)
            except ConnectionClosed:
                return

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._on_audio(message)
            self.notify()
            return
        super()._on_message(message)

    def _fail(self, code: str, description: str) -> None:
        """Send ``Error`` and close, like the real API; nothing after that is processed."""
        if self._failed:
            return
        self._failed = True
        self._stop_active("interrupted")
        self.emit({"type": "Error", "description": description, "code": code})
        self.put(CloseFrame(self._script.error_close_code, ""))

    # --- lifecycle ------------------------------------------------------------------------------

    def on_open(self) -> None:
        if self._auth_refused:
            self._failed = True
            error = {"type": "Error", "description": "Invalid credentials.", "code": "INVALID_AUTH"}
            self.emit(error)
            self.put(CloseFrame(1008, "INVALID_AUTH"))
            return
        self.emit({"type": "Welcome", "request_id": str(uuid.uuid4())})
        if self._script.client_message_timeout_s is not None:
            _ = self.spawn(self._watchdog(self._script.client_message_timeout_s), "watchdog")

    def on_close(self) -> None:
        self._active = None

    async def _watchdog(self, limit_s: float) -> None:
        while not self._failed:
            remaining = self._last_client + limit_s - time.monotonic()
            if remaining <= 0:
                self._fail(TIMEOUT, TIMEOUT_TEXT)
                return
            await asyncio.sleep(remaining)

    def on_bad_frame(self, message: str | bytes) -> None:
        self._record.settings_error = self._record.settings_error or "a text frame is not JSON"
        self._fail(UNPARSABLE, UNPARSABLE_TEXT)

    def on_event(self, event: dict[str, Any]) -> None:
        if self._failed:
            return
        kind = event.get("type")
        if self._agent is None:
            if kind == "Settings":
                self._on_settings(event)
            else:
                self._unparsable(f"{kind} before Settings")
            return
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._unparsable(f"unknown message type {kind!r}")
            return
        handler(self, event)

    def _unparsable(self, why: str) -> None:
        self._record.settings_error = self._record.settings_error or why
        self._fail(UNPARSABLE, UNPARSABLE_TEXT)

    def _on_settings(self, event: dict[str, Any]) -> None:
        self._record.settings = event
        try:
            agent = parse_settings(event)
        except SettingsError as error:
            self._unparsable(str(error))
            return
        if agent.input.encoding not in MOCK_CODECS or agent.output.encoding not in MOCK_CODECS:
            self._unparsable("the mock only speaks linear16, mulaw and alaw")
            return
        self._agent = agent
        self._record.applied = agent
        self._record.prompt = agent.prompt
        vad = VadConfig(min_speech_ms=self._script.vad_min_speech_ms)
        self._vad = EnergyVad(vad, agent.input.sample_rate)
        delay_s = self._script.settings_delay_ms / 1000
        self.start_timer(delay_s, self._apply, "settings-applied")

    def _apply(self) -> None:
        def applied(at: float) -> None:
            self._applied = True

        self.emit({"type": "SettingsApplied"}, applied)
        agent = self._agent
        if agent is None or not agent.greeting or self._script.mode == "echo":
            return
        planned = self._planner.choose(
            trigger="client", instructions=None, transcript=None, user_turns=0, call_names={}
        )
        self._speak(Reply(agent.greeting, planned.tone_hz, planned.duration_ms), "greeting", 0)

    # --- caller audio and turns -----------------------------------------------------------------

    def _on_audio(self, data: bytes) -> None:
        if self._failed:
            return
        if self._agent is None:
            self._unparsable("binary audio before Settings")
            return
        self._last_client = time.monotonic()
        self._record.audio_in += data
        if not self._applied:
            self._record.audio_before_applied += len(data)
            return
        if self._script.mode == "echo":
            self._echo(data)
            return
        assert self._vad is not None
        for vad_event in self._vad.push(self._agent.input.decode(data)):
            self._on_vad(vad_event)

    def _on_vad(self, vad_event: VadEvent) -> None:
        if isinstance(vad_event, SpeechStarted):
            turn = UserTurn(len(self._record.user_turns) + 1, vad_event.audio_start_ms)
            self._speech = turn
            self._record.user_turns.append(turn)

            def stamp(at: float) -> None:
                turn.speech_started_at = at

            self.emit({"type": "UserStartedSpeaking"}, stamp)
            if self._active is not None:
                turn.interrupted_reply = self._active.record.number
                self._barge_in(self._active)
            return
        turn = self._speech or UserTurn(len(self._record.user_turns) + 1, 0)
        self._speech = None
        turn.audio_end_ms = vad_event.audio_end_ms
        transcripts = self._script.transcripts
        index = turn.number - 1
        turn.transcript = (
            transcripts[index] if index < len(transcripts) else self._script.default_transcript
        )
        self._conversation_text("user", turn.transcript)
        self.emit({"type": "AgentThinking", "content": ""})
        call = self._planner.function_call_due(turn.number, turn.transcript)
        if call is not None:
            _ = self.spawn(self._request_function(call), f"function-{call.name}")
            return
        reply = self._choose("turn", None, turn.transcript)
        self._speak(reply, "turn", self._script.think_ms)

    def _barge_in(self, active: _Active) -> None:
        """Cut the reply being spoken; optionally leak some of its audio (in flight)."""
        record = active.record
        self._stop_active("interrupted")
        stale = int(self._script.stale_audio_ms * self._agent_output.bytes_per_ms)
        if stale > 0:
            piece = active.audio[record.audio_bytes_sent : record.audio_bytes_sent + stale]
            record.stale_bytes_sent = len(piece)
            if piece:
                self._send_audio(piece)
        if self._script.audio_done_after_barge_in:
            self.emit({"type": "AgentAudioDone"})

    def _conversation_text(self, role: str, text: str) -> None:
        self.emit({"type": "ConversationText", "role": role, "content": text})
        if self._agent is not None and self._agent.history:
            self.emit({"type": "History", "role": role, "content": text})

    def _echo(self, data: bytes) -> None:
        """Echo mode: the caller's audio goes straight back (same rate assumed)."""
        agent = self._agent
        assert agent is not None
        if self._echoing is None:
            self._echoing = ReplyRecord(0, "echo", "", 0.0, 0, time.monotonic())
            self._record.replies.append(self._echoing)
            self.emit({"type": "AgentStartedSpeaking", **_latencies(0)})
        self._echoing.audio_bytes_sent += len(data)
        self._send_audio(agent.output.encode(agent.input.decode(data)))

    # --- replies --------------------------------------------------------------------------------

    @property
    def _agent_output(self) -> WireAudio:
        assert self._agent is not None
        return self._agent.output

    def _choose(self, trigger: str, instructions: str | None, transcript: str | None) -> Reply:
        names = {r.id: r.name for r in self._record.function_requests}
        return self._planner.choose(
            trigger="turn" if trigger == "turn" else "client",
            instructions=instructions,
            transcript=transcript,
            user_turns=len(self._record.user_turns),
            call_names=names,
        )

    def _speak(self, reply: Reply, trigger: ReplyTrigger, think_ms: int) -> None:
        """Start a reply now, or after the current one if the agent is speaking."""
        if self._active is not None:
            self._after_reply.append(lambda: self._speak(reply, trigger, think_ms))
            return
        tone_hz, duration_ms = self._planner.resolve(reply)
        number = len(self._record.replies) + 1
        record = ReplyRecord(number, trigger, reply.text, tone_hz, duration_ms, time.monotonic())
        self._record.replies.append(record)
        fmt = self._agent_output
        audio = fmt.encode(tone(tone_hz, duration_ms, fmt.sample_rate, self._script.amplitude))
        active = _Active(record, audio)
        self._active = active
        active.task = self.spawn(self._stream(active, think_ms), f"reply-{number}")

    async def _stream(self, active: _Active, think_ms: int) -> None:
        script, record, fmt = self._script, active.record, self._agent_output
        await asyncio.sleep(think_ms / 1000)
        self._conversation_text("assistant", record.text)

        def started(at: float) -> None:
            record.started_at = at

        def first_audio(at: float) -> None:
            record.first_audio_at = at

        self.emit({"type": "AgentStartedSpeaking", **_latencies(think_ms)}, started)
        chunk = max(1, int(fmt.bytes_per_ms * script.chunk_ms))
        n_chunks = max(1, math.ceil(len(active.audio) / chunk))
        start = time.monotonic()
        for k in range(n_chunks):
            if k and script.burst:
                await asyncio.sleep(0)
            elif k:
                deadline = start + k * script.chunk_ms / 1000 / script.speed
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            piece = active.audio[k * chunk : (k + 1) * chunk]
            self._send_audio(piece, first_audio if k == 0 else None)
            record.audio_bytes_sent += len(piece)
            record.audio_ms_sent = int(record.audio_bytes_sent / fmt.bytes_per_ms)
            self.notify()
        self.emit({"type": "AgentAudioDone"})
        self._stop_active("completed")

    def _stop_active(self, status: str) -> None:
        active, self._active = self._active, None
        if active is None:
            return
        if active.task is not None and active.task is not asyncio.current_task():
            active.task.cancel()
        record = active.record
        record.status = "completed" if status == "completed" else "interrupted"
        record.done_at = time.monotonic()
        self.notify()
        pending, self._after_reply = self._after_reply, []
        if status == "completed" and not self._failed:
            for action in pending:
                action()

    # --- functions ------------------------------------------------------------------------------

    async def _request_function(self, spec: FunctionCallSpec) -> None:
        await asyncio.sleep(self._script.think_ms / 1000)
        call_id = spec.call_id or f"call_{uuid.uuid4().hex[:12]}"
        client_side = spec.name not in self._script.server_side_functions
        arguments = json.dumps(dict(spec.arguments))
        request = {"id": call_id, "name": spec.name, "arguments": arguments}
        self.emit(
            {"type": "FunctionCallRequest", "functions": [{**request, "client_side": client_side}]}
        )
        at = time.monotonic()
        self._record.function_requests.append(
            FunctionRequestRecord(call_id, spec.name, arguments, client_side, at)
        )
        if client_side:
            self._waiting_calls[call_id] = spec.name
            return
        content = json.dumps({"ok": True})
        self.emit(
            {"type": "FunctionCallResponse", "id": call_id, "name": spec.name, "content": content}
        )
        self._speak(self._choose("function", None, None), "function", self._script.think_ms)

    def _on_function_response(self, event: dict[str, Any]) -> None:
        call_id, name, content = event.get("id"), event.get("name"), event.get("content")
        if not isinstance(call_id, str) or not isinstance(content, str):
            self._unparsable("FunctionCallResponse needs 'id' and 'content' strings")
            return
        known = self._waiting_calls.pop(call_id, None) is not None
        at = time.monotonic()
        shown_name = name if isinstance(name, str) else None
        self._record.function_responses.append(
            FunctionResponseRecord(call_id, shown_name, content, known, at)
        )
        if not known:
            return
        self._planner.pending_outputs.append(FunctionOutputRecord(call_id, content, at))
        if not self._waiting_calls:
            self._speak(self._choose("function", None, None), "function", self._script.think_ms)

    # --- injections and updates -----------------------------------------------------------------

    def _on_keepalive(self, event: dict[str, Any]) -> None:
        self._record.keepalives.append(time.monotonic())
        if self._script.keepalive_counts:
            self._last_client = time.monotonic()

    def _on_inject_user(self, event: dict[str, Any]) -> None:
        content = event.get("content")
        if not isinstance(content, str):
            self._unparsable("InjectUserMessage needs 'content'")
            return
        self._record.injects.append(InjectRecord("user", content, time.monotonic()))
        self._conversation_text("user", content)
        self._speak(self._choose("client", content, None), "inject_user", self._script.think_ms)

    def _on_inject_agent(self, event: dict[str, Any]) -> None:
        text = event.get("message", event.get("content"))
        behavior = event.get("behavior", "default")
        if not isinstance(text, str) or behavior not in ("default", "queue", "interrupt"):
            self._unparsable("InjectAgentMessage needs 'message' (or 'content') and a behavior")
            return
        busy = self._active is not None or self._speech is not None
        record = InjectRecord("agent", text, time.monotonic(), behavior, True)
        self._record.injects.append(record)
        if busy and behavior == "default":
            record.accepted = False
            refused = "Agent or user is currently speaking; the message was not injected."
            self.emit({"type": "InjectionRefused", "message": refused})
            return
        if behavior == "interrupt" and self._active is not None:
            self._stop_active("interrupted")
        self._speak(Reply(text), "inject_agent", 0)

    def _on_update_prompt(self, event: dict[str, Any]) -> None:
        prompt = event.get("prompt")
        if not isinstance(prompt, str):
            self._unparsable("UpdatePrompt needs 'prompt'")
            return
        self._record.injects.append(InjectRecord("prompt", prompt, time.monotonic()))
        self._record.prompt = prompt
        self.emit({"type": "PromptUpdated"})

    def _on_update(self, event: dict[str, Any]) -> None:
        answer = {"UpdateSpeak": "SpeakUpdated", "UpdateThink": "ThinkUpdated"}
        self.emit({"type": answer.get(str(event["type"]), "ListenUpdated")})

    def _on_settings_again(self, event: dict[str, Any]) -> None:
        self.emit({"type": "Warning", "description": "Settings already applied.", "code": ""})


def _latencies(think_ms: int) -> dict[str, float]:
    ttt = round(think_ms / 1000, 3)
    return {"total_latency": round(ttt + 0.05, 3), "tts_latency": 0.05, "ttt_latency": ttt}


_Handler = Callable[[DeepgramConnection, dict[str, Any]], None]

_HANDLERS: Final[dict[str, _Handler]] = {
    "KeepAlive": DeepgramConnection._on_keepalive,
    "FunctionCallResponse": DeepgramConnection._on_function_response,
    "InjectUserMessage": DeepgramConnection._on_inject_user,
    "InjectAgentMessage": DeepgramConnection._on_inject_agent,
    "UpdatePrompt": DeepgramConnection._on_update_prompt,
    "UpdateSpeak": DeepgramConnection._on_update,
    "UpdateThink": DeepgramConnection._on_update,
    "UpdateListen": DeepgramConnection._on_update,
    "Settings": DeepgramConnection._on_settings_again,
}
