"""Cartesia pipeline session: Deepgram streaming STT -> OpenAI Chat Completions -> Cartesia TTS.

One ``ProviderSession`` built from three services. Caller audio (mu-law 8 kHz) goes to
Deepgram as-is; each caller utterance becomes a user message and starts an LLM turn whose
streamed text is spoken sentence by sentence through one Cartesia context per reply (mu-law
8 kHz back, no transcoding). Barge-in is detected here, from Deepgram's ``SpeechStarted`` or a
non-empty interim: the TTS context is cancelled, the LLM stream aborted, stale audio dropped,
and the chat history cut to what the caller heard. Reference: providers.md section 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import websockets

from sip4ai.config import Config, Secret
from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import (
    cartesia_wire as tts_wire,
    chat_completions_wire as chat_wire,
    deepgram_stt_wire as stt_wire,
)
from sip4ai.providers.base import (
    AudioOut,
    Capabilities,
    Closed,
    ProviderEvent,
    Ready,
    ReplyDone,
    SessionSettings,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    Transcript,
)
from sip4ai.providers.cartesia_dialog import Dialog, ReplyState
from sip4ai.providers.cartesia_links import Message, WsLink, connect_failure
from sip4ai.providers.chat_completions import ChatError, stream_chat


logger = logging.getLogger(__name__)

TTS_REOPEN_CODES = (1000, 1001)
"""Close codes of an idle or restarting TTS server: reconnect instead of ending the call."""
TTS_REOPEN_MIN_INTERVAL_S = 30.0
"""A TTS socket that closes again sooner than this is not reconnected (the call ends)."""

CAPABILITIES = Capabilities(
    input_format=tts_wire.PCMU_8K,
    output_format=tts_wire.PCMU_8K,
    server_vad=True,
    truncation=True,
)


class CartesiaPipelineSession:
    def __init__(self, config: Config, settings: SessionSettings) -> None:
        self._config = config
        self._settings = settings
        self._cartesia = config.cartesia
        self._voice_id = config.cartesia.voice_id or tts_wire.DEFAULT_VOICE_ID
        self._events: asyncio.Queue[ProviderEvent | None] = asyncio.Queue()
        self._dialog = Dialog(settings.instructions)
        self._assembler = stt_wire.UtteranceAssembler()
        self._stt = WsLink(
            "deepgram-stt",
            stt_wire.listen_url(config.deepgram.stt_base_url, config.deepgram.listen_model),
            stt_wire.auth_headers(_reveal(config.deepgram.api_key)),
            keepalive=stt_wire.keepalive(),
            keepalive_interval_s=stt_wire.KEEPALIVE_INTERVAL_S,
            goodbye=stt_wire.close_stream(),
        )
        self._tts = WsLink(
            "cartesia-tts",
            config.cartesia.base_url,
            tts_wire.auth_headers(_reveal(config.cartesia.api_key)),
        )
        self._http: aiohttp.ClientSession | None = None
        self._reply: ReplyState | None = None
        """The reply being generated or spoken (``None`` when the AI is silent)."""
        self._llm_task: asyncio.Task[None] | None = None
        self._queued: deque[str | None] = deque()
        """Replies asked for while another was active: their instructions (or ``None``)."""
        self._stop: asyncio.Future[Closed] | None = None
        self._tts_reopened_at = float("-inf")
        self._ready = False
        self._closing = False
        self._prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        self.stale_chunks = 0
        """Audio chunks dropped because their reply had been cancelled."""

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    @property
    def dropped_frames(self) -> int:
        return self._stt.dropped

    # ---- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            reason = await self._serve()
        except asyncio.CancelledError:
            self._end_events(Closed("cancelled"))
            raise
        except Exception as exc:  # a bug here must still end the call cleanly
            logger.exception("! cartesia session failed")
            reason = Closed(f"cartesia: internal error: {exc!r}", retryable=True)
        logger.info("x cartesia session closed: %s", reason.reason)
        self._end_events(reason)

    def _end_events(self, reason: Closed) -> None:
        self._events.put_nowait(reason)
        self._events.put_nowait(None)

    def _missing_keys(self) -> list[str]:
        keys = {
            "cartesia": self._config.cartesia.api_key,
            "deepgram": self._config.deepgram.api_key,
            "openai": self._config.openai.api_key,
        }
        return [name for name, key in keys.items() if key is None or not key.reveal()]

    async def _serve(self) -> Closed:
        missing = self._missing_keys()
        if missing:
            return Closed(f"cartesia: missing API key for {', '.join(missing)}", retryable=False)
        if self._closing:
            return Closed("cartesia: closed before start")
        self._stop = asyncio.get_running_loop().create_future()
        async with aiohttp.ClientSession() as http:
            self._http = http
            try:
                failure = await self._open_links()
                if failure is not None:
                    return failure
                return await self._serve_links()
            finally:
                self._ready = False
                await self._abort_reply()
                await self._stt.aclose()
                await self._tts.aclose()

    async def _open_links(self) -> Closed | None:
        opening = {
            link.name: asyncio.create_task(link.open(), name=f"{link.name}-open")
            for link in (self._stt, self._tts)
        }
        try:
            for name, task in opening.items():
                try:
                    await task
                except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                    return connect_failure(name, exc)
        finally:
            await _cancel_and_wait(opening.values())
        return None

    async def _serve_links(self) -> Closed:
        assert self._stop is not None
        self._ready = True
        self._emit(Ready())
        self._greet()
        self._start_queued()
        stt = asyncio.create_task(self._stt.run(self._on_stt_frame), name="deepgram-stt")
        tts = asyncio.create_task(self._tts.run(self._on_tts_frame), name="cartesia-tts")
        try:
            while True:
                await asyncio.wait({stt, tts, self._stop}, return_when=asyncio.FIRST_COMPLETED)
                if self._stop.done():
                    return self._stop.result()
                if stt.done():
                    return stt.result()
                lost = tts.result()
                if not self._may_reopen_tts(lost):
                    return lost
                reopened = await self._reopen_tts(lost)
                if reopened is not None:
                    return reopened
                tts = asyncio.create_task(self._tts.run(self._on_tts_frame), name="cartesia-tts")
        finally:
            await _cancel_and_wait([stt, tts])

    def _may_reopen_tts(self, lost: Closed) -> bool:
        """Cartesia closes idle TTS sockets (~5 min): reconnect, but not in a loop."""
        if lost.details.get("code") not in TTS_REOPEN_CODES or self._closing:
            return False
        now = asyncio.get_running_loop().time()
        if now - self._tts_reopened_at < TTS_REOPEN_MIN_INTERVAL_S:
            return False
        self._tts_reopened_at = now
        return True

    async def _reopen_tts(self, lost: Closed) -> Closed | None:
        logger.info("= cartesia: %s; reconnecting", lost.reason)
        if self._reply is not None:
            self._interrupt(self._reply, status="failed")  # its context died with the socket
        try:
            await self._tts.open()
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            return connect_failure(self._tts.name, exc)
        return None

    def _fail(self, reason: Closed) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(reason)

    def events(self) -> AsyncIterator[ProviderEvent]:
        return self._iter_events()

    async def _iter_events(self) -> AsyncIterator[ProviderEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    def _emit(self, event: ProviderEvent) -> None:
        self._events.put_nowait(event)

    # ---- caller side (Deepgram) -------------------------------------------------------------

    def _on_stt_frame(self, raw: Message) -> None:
        event = stt_wire.decode(raw)
        if event is None:
            return
        for turn in self._assembler.feed(event):
            if isinstance(turn, stt_wire.CallerSpeaking):
                self._emit(SpeechStarted())
                if self._reply is not None:
                    self._interrupt(self._reply)
            else:
                self._on_utterance(turn.text)

    def _on_utterance(self, text: str) -> None:
        self._emit(Transcript("user", text))
        self._emit(SpeechStopped())
        self._dialog.add_user(text)
        if self._reply is not None:
            self._interrupt(self._reply)
        self._queued.append(None)
        self._start_queued()

    # ---- replies (LLM -> TTS) ---------------------------------------------------------------

    def _new_reply(self) -> ReplyState:
        reply = ReplyState(f"{self._prefix}-r{next(self._ids)}")
        self._dialog.track(reply)
        self._reply = reply
        return reply

    def _greet(self) -> None:
        if not self._settings.greeting:
            return
        literal = self._cartesia.greeting
        if not literal:
            self._queued.append(self._settings.greeting)
            return
        reply = self._new_reply()
        self._speak(reply, literal)
        self._dialog.add_assistant(reply.item_id, literal)
        self._end_text(reply, status="completed")

    def _request_reply(self, instruction: str | None) -> None:
        self._queued.append(instruction)
        self._start_queued()

    def _start_queued(self) -> None:
        if not self._ready or self._reply is not None or not self._queued or self._closing:
            return
        instructions = "\n".join(i for i in self._queued if i)
        self._queued.clear()
        reply = self._new_reply()
        body = chat_wire.request_body(
            self._cartesia.llm_model,
            self._dialog.messages(instructions or None),
            self._settings.tools,
        )
        self._llm_task = asyncio.create_task(self._llm(reply, body), name=reply.item_id)

    async def _llm(self, reply: ReplyState, body: dict[str, object]) -> None:
        assert self._http is not None
        splitter = tts_wire.SentenceSplitter()
        key = _reveal(self._config.openai.api_key)
        calls: tuple[chat_wire.ToolCallRequest, ...] = ()
        status = "completed"
        try:
            async for event in stream_chat(self._http, self._cartesia.llm_base_url, key, body):
                if isinstance(event, chat_wire.TextDelta):
                    for sentence in splitter.push(event.text):
                        self._speak(reply, sentence)
                else:
                    calls = event.tool_calls
        except ChatError as exc:
            logger.warning("! %s", exc)
            if exc.fatal:
                self._fail(Closed(str(exc), retryable=False))
                return
            status = "failed"
        except ProviderProtocolError as exc:
            logger.warning("! %s", exc)
            status = "failed"
        if reply.cancelled:
            return
        rest = splitter.flush()
        if rest.strip():
            self._speak(reply, rest)
        reply.llm_done = True
        reply.tool_calls = calls
        self._dialog.add_assistant(reply.item_id, reply.text, calls)
        for call in calls:
            self._emit(ToolCall(call.call_id, call.name, call.arguments))
        self._end_text(reply, status)

    def _speak(self, reply: ReplyState, text: str) -> None:
        if reply.cancelled or reply.tts_ended:
            return
        reply.sent.append(text)
        self._tts.send(
            tts_wire.generation_request(reply.item_id, text, voice_id=self._voice_id, more=True)
        )

    def _end_text(self, reply: ReplyState, status: str) -> None:
        """No more text for this reply: close its TTS context (or finish at once if unused)."""
        reply.llm_done = True
        if reply.tts_ended:
            return
        reply.tts_ended = True
        if reply.sent:
            self._tts.send(
                tts_wire.generation_request(reply.item_id, "", voice_id=self._voice_id, more=False)
            )
        else:
            self._finish(reply, status, "")

    def _finish(self, reply: ReplyState, status: str, text: str) -> None:
        if reply.finished:
            return
        reply.finished = True
        if text:
            self._emit(Transcript("ai", text))
        self._emit(ReplyDone(status, reply.item_id if reply.sent else None))
        if self._reply is reply:
            self._reply = None
            self._llm_task = None
        if not self._assembler.pending_text:
            self._start_queued()

    def _interrupt(self, reply: ReplyState, status: str = "cancelled") -> None:
        """Barge-in or cancel: stop generating and speaking ``reply``, keep what was said."""
        if reply.finished or reply.cancelled:
            return
        reply.cancelled = True
        if self._llm_task is not None:
            self._llm_task.cancel()
            self._llm_task = None
        if reply.sent and not reply.tts_done:
            self._tts.send(tts_wire.cancel(reply.item_id))
        said = reply.received_text()
        self._dialog.interrupted(reply.item_id, said)
        self._finish(reply, status, said)

    async def _abort_reply(self) -> None:
        """Stop a running LLM request and wait for it (before the HTTP session closes)."""
        task, self._llm_task = self._llm_task, None
        if task is not None:
            await _cancel_and_wait([task])

    # ---- TTS side (Cartesia) ----------------------------------------------------------------

    def _on_tts_frame(self, raw: Message) -> None:
        event = tts_wire.decode(raw)
        if event is None:
            return
        if isinstance(event, tts_wire.TtsAudio):
            reply = self._reply
            if reply is None or reply.item_id != event.context_id or reply.cancelled:
                self.stale_chunks += 1
                return
            reply.audio_bytes += len(event.audio)
            self._emit(AudioOut(event.audio, reply.item_id))
            return
        if isinstance(event, tts_wire.TtsError):
            self._tts_error(event)
            return
        found = self._dialog.reply(event.context_id)
        if found is None or found.cancelled:
            return
        if isinstance(event, tts_wire.TtsWords):
            found.words += list(zip(event.words, event.ends_s, strict=True))
        elif isinstance(event, tts_wire.TtsDone):
            found.tts_done = True
            self._finish(found, "completed", found.text)

    def _tts_error(self, error: tts_wire.TtsError) -> None:
        logger.warning("! cartesia error %d: %s", error.status_code, error.message)
        if tts_wire.fatal_error(error):
            reason = f"cartesia: error {error.status_code}: {error.message}"
            self._fail(Closed(reason, retryable=error.status_code >= 500))
            return
        reply = self._dialog.reply(error.context_id or "")
        if reply is not None and not reply.cancelled:
            reply.tts_done = True
            self._finish(reply, "failed", reply.text)

    # ---- commands (never block, never raise) ------------------------------------------------

    def send_audio(self, audio: bytes) -> None:
        if not self._closing:
            self._stt.send(audio)

    def truncate(self, item_id: str, played_ms: int) -> None:
        if self._dialog.truncate(item_id, played_ms):
            logger.debug("= cartesia: reply %s cut to %d ms heard", item_id, played_ms)

    def cancel_reply(self) -> None:
        if self._reply is not None:
            self._interrupt(self._reply)

    def inject(self, message: str, role: str) -> None:
        if role == "user":
            self._dialog.add_user(message)
        else:
            self._dialog.add_system(message)
        self._request_reply(None)

    def say(self, instructions: str) -> None:
        self._request_reply(instructions)

    def tool_result(self, call_id: str, output: str) -> None:
        if not self._dialog.knows_call(call_id):
            logger.warning("! cartesia: result for unknown tool call %s", call_id)
            return
        self._dialog.set_tool_output(call_id, output)
        if not self._dialog.waiting_for_tools():
            self._request_reply(None)

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._fail(Closed("cartesia: closed", retryable=False))
        with contextlib.suppress(Exception):
            await self._stt.aclose()
            await self._tts.aclose()


def _reveal(secret: Secret | None) -> str:
    return secret.reveal() if secret is not None else ""


async def _cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them; re-raise only if the caller itself is cancelled."""
    tasks = list(tasks)
    for task in tasks:
        if task.done() and not task.cancelled():
            _ = task.exception()  # mark it retrieved (the caller has seen what it needs)
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    for task in pending:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:  # its outcome no longer matters; it must just be gone
            logger.debug("- %s ended with an error while cancelled", task.get_name())
