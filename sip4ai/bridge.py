"""The per-call audio bridge: caller audio to the provider, provider audio paced to the caller.

Two tasks per call. The *pacer* ticks every 20 ms on absolute deadlines: it reads the caller's
frames from the SIP media stream and queues them for the provider (never awaiting the network),
then tops up the SIP send queue from the playout buffer. The *listener* consumes provider events:
audio into the playout buffer, barge-in, transcripts, tool calls, the end of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence

from sip4ai.audio.chunker import FrameChunker
from sip4ai.audio.formats import FRAME_MS, AudioFormat, Encoding
from sip4ai.audio.playout import PlayoutBuffer
from sip4ai.audio.transcode import Transcoder
from sip4ai.failover import FAILED_REASON, ClipPlayer, LastResort, ProviderOption, failed
from sip4ai.functions import FunctionRunner
from sip4ai.holdaudio import HoldAudio, HoldPlayer, run_with_hold
from sip4ai.manager import CallHandle
from sip4ai.metrics import AudioMetrics
from sip4ai.providers.base import (
    AudioOut,
    Closed,
    ProviderSession,
    Ready,
    ReplyDone,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    Transcript,
)
from sip4ai.sip.interface import MediaStream


logger = logging.getLogger(__name__)

TICK_S = FRAME_MS / 1000
SEND_AHEAD_MS = 40
"""Audio kept queued in the SIP library: enough to ride out a late tick, little enough that a
barge-in flush drops almost nothing already on its way."""
MAX_FRAMES_PER_TICK = 3
"""Never more per tick: a stream whose send queue does not fill (not sending yet, or its
clock stalled) must not drain the playout buffer into it in one go."""
GOODBYE_TIMEOUT_S = 6.0
GOODBYE_INSTRUCTIONS = "The call is ending now. Say a brief, polite goodbye in one short sentence."


class AIConversation:
    """A Conversation (see manager.py) backed by a ProviderSession.

    The session starts in ``prepare()`` (before an inbound call is answered) or in ``run()``.
    Provider audio that arrives before the call's media is up (the greeting) is kept and played
    as soon as it is. When the session fails (see failover.py) the call moves to the next of
    ``fallbacks`` (after one fresh session of the same provider, if it had been serving the
    call), and when none is left to ``last_resort``.
    """

    def __init__(
        self,
        handle: CallHandle,
        session_factory: Callable[[], ProviderSession],
        *,
        functions: FunctionRunner | None = None,
        hold_audio: HoldAudio | None = None,
        metrics: AudioMetrics | None = None,
        fallbacks: Sequence[ProviderOption] = (),
        last_resort: LastResort | None = None,
        resume: Callable[[str], ProviderOption] | None = None,
    ) -> None:
        self._handle = handle
        self._factory = session_factory
        self._fallbacks = list(fallbacks)
        self._resume = resume
        """A new session of the same provider, told what was said: tried once per provider
        when a session that was serving the call drops (the protocol could not resume it)."""
        self._resumed: set[str] = set()
        self._provider = handle.record.provider
        self._last_resort = last_resort
        self._clip: ClipPlayer | None = None
        self._playing_last_resort = False
        self._ending = False
        """Set once the call is being closed: a session closing now is not a failure."""
        self._serving = asyncio.Event()
        """Set when something can talk to the caller: a ready session or the last resort."""
        self._functions = functions
        self._hold_audio = hold_audio
        self._hold: HoldPlayer | None = None
        self._metrics = metrics
        self._pacing = False
        self._started_at: float | None = None
        self._speech_stopped_at: float | None = None
        """Set when the caller stops speaking; cleared when the reply's first frame is sent."""
        self._spoken_replies = 0
        """Replies with audio that finished; finish_speaking waits for the next one."""
        self._session: ProviderSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._reply_finished = asyncio.Event()
        self._drained = asyncio.Event()
        """Set by the pacer whenever everything buffered has been sent."""
        self._early_audio: list[AudioOut] = []
        self._media: MediaStream | None = None
        self._playout: PlayoutBuffer | None = None
        self._from_provider: Transcoder | None = None
        self._to_provider: Transcoder | None = None
        self._chunker: FrameChunker | None = None
        self._current_item: str | None = None
        self._end_reason: str | None = None
        self.barge_ins = 0

    @property
    def session(self) -> ProviderSession | None:
        return self._session

    def _start(self) -> ProviderSession:
        if self._session is None:
            self._handle.switch_provider(self._handle.record.provider, None)
            self._session = self._launch(self._factory)
            self._tasks.append(
                asyncio.create_task(self._listen(self._session), name=self._task_name("ai"))
            )
        return self._session

    def _task_name(self, part: str) -> str:
        return f"call-{self._handle.record.id}:{part}"

    def _launch(self, factory: Callable[[], ProviderSession]) -> ProviderSession:
        self._started_at = asyncio.get_running_loop().time()
        session = factory()
        self._tasks.append(asyncio.create_task(session.run(), name=self._task_name("provider")))
        return session

    async def prepare(self) -> None:
        self._start()
        serving = asyncio.create_task(self._serving.wait())
        closed = asyncio.create_task(self._closed.wait())
        try:
            await asyncio.wait({serving, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            serving.cancel()
            closed.cancel()

    async def run(self, media: MediaStream) -> str | None:
        session = self._start()
        media_format = AudioFormat(Encoding.PCM16, media.rate_hz)
        self._media = media
        self._playout = PlayoutBuffer(media_format)
        self._chunker = FrameChunker.for_format(media_format)
        self._use_formats(session)
        if self._playing_last_resort and self._last_resort is not None and self._clip is None:
            self._clip = ClipPlayer(self._last_resort, media.rate_hz)  # began before the answer
        early, self._early_audio = self._early_audio, []
        for event in early:
            self._play(event)
        pacer = asyncio.create_task(self._pace(media), name="pacer")
        self._pacing = True
        try:
            await self._closed.wait()
        finally:
            pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pacer
        return self._end_reason

    def _use_formats(self, session: ProviderSession) -> None:
        """Transcoders for the session's formats (read again when it is Ready: some providers
        only learn their formats during setup, and a failover brings other formats)."""
        if self._media is None:
            return
        media_format = AudioFormat(Encoding.PCM16, self._media.rate_hz)
        caps = session.capabilities
        self._from_provider = Transcoder(caps.output_format, media_format)
        self._to_provider = Transcoder(media_format, caps.input_format)

    async def _pace(self, media: MediaStream) -> None:
        loop = asyncio.get_running_loop()
        playout = self._playout
        assert playout is not None
        deadline = loop.time()
        while True:
            frames = media.read()
            session, to_provider = self._session, self._to_provider
            if frames and self._ready.is_set() and session is not None and to_provider is not None:
                # Normally one frame; after a late tick several, sent as one message: under
                # load that is fewer websocket sends, and no frame waits longer than it must.
                session.send_audio(to_provider.convert(b"".join(frames)))
            if self._metrics is not None:
                self._metrics.tick_late(max(0.0, loop.time() - deadline))
            self._feed(media, playout, loop.time())
            deadline += TICK_S
            delay = deadline - loop.time()
            if delay < -TICK_S:  # the loop stalled: re-anchor instead of bursting to catch up
                deadline = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    def _feed(self, media: MediaStream, playout: PlayoutBuffer, now: float) -> None:
        """Top up the SIP send queue from the playout buffer (or hold audio), bounded."""
        for _ in range(MAX_FRAMES_PER_TICK):
            if media.queued_ms() >= SEND_AHEAD_MS:
                break
            if len(playout):
                media.write(playout.pop())
                if self._speech_stopped_at is not None and self._metrics is not None:
                    self._metrics.turn_latency(now - self._speech_stopped_at)
                    self._speech_stopped_at = None
            elif (held := self._hold_frame()) is not None:
                media.write(held)
            elif self._clip is not None and (recorded := self._clip.next_frame()) is not None:
                media.write(recorded)
            else:
                break
        if not len(playout) and media.queued_ms() == 0:
            self._drained.set()
            if self._clip is not None and self._clip.finished:
                self._end_reason = self._end_reason or FAILED_REASON
                self._closed.set()

    def _hold_frame(self) -> bytes | None:
        hold = self._hold
        if hold is None:
            return None
        if hold.stopped:
            self._hold = None
            if self._media is not None:
                self._media.flush()  # cut the hold at once, not after what is queued
            return None
        return hold.next_frame()

    def _play(self, event: AudioOut) -> None:
        playout, chunker, transcoder = self._playout, self._chunker, self._from_provider
        if playout is None or chunker is None or transcoder is None:
            self._early_audio.append(event)
            return
        if event.item_id != self._current_item:
            self._current_item = event.item_id
            playout.mark_start_of_reply(event.item_id)
        for frame in chunker.push(transcoder.convert(event.audio)):
            playout.push(frame)
        if self._media is not None and self._pacing:
            # Write through at once when the send queue has room: waiting for the next tick
            # would add up to 20 ms to every reply's start (and to echo round trips).
            self._feed(self._media, playout, asyncio.get_running_loop().time())

    def _reply_done(self) -> None:
        if self._current_item is not None:
            self._spoken_replies += 1
        self._reply_finished.set()
        self._current_item = None
        playout, chunker, transcoder = self._playout, self._chunker, self._from_provider
        if playout is not None and chunker is not None and transcoder is not None:
            for frame in chunker.push(transcoder.flush()) + chunker.flush():
                playout.push(frame)
            playout.mark_end_of_reply()

    async def _listen(self, session: ProviderSession) -> None:
        while True:
            closed = await self._consume(session)
            if self._ending or closed is None or not failed(closed, was_ready=self._ready.is_set()):
                break
            following = self._fail_over(closed, was_ready=self._ready.is_set())
            if following is None:
                if self._start_last_resort(closed):
                    return  # the pacer ends the call when the recording has been played
                break
            session = following
        if not self._ending:
            self._end_reason = self._end_reason or "provider_closed"
        self._reply_finished.set()
        self._closed.set()

    def _next_option(self, was_ready: bool) -> ProviderOption | None:
        name = self._provider
        if was_ready and self._resume is not None and name not in self._resumed:
            self._resumed.add(name)
            return self._resume(name)
        return self._fallbacks.pop(0) if self._fallbacks else None

    def _fail_over(self, closed: Closed, *, was_ready: bool) -> ProviderSession | None:
        """Start the next provider for this call, or None when there is none."""
        option = self._next_option(was_ready)
        if option is None:
            return None
        logger.warning(
            "! call %s: provider %s failed (%s); the call continues on %s%s",
            self._handle.record.id,
            self._provider,
            closed.reason,
            "a new session of " if option.name == self._provider else "",
            option.name,
        )
        self._provider = option.name
        self._handle.switch_provider(option.name, closed.reason)
        if self._metrics is not None:
            self._metrics.failover(option.name)
        self._ready.clear()
        self._current_item = None
        self._reply_finished.set()
        self._session = self._launch(option.start)
        return self._session

    def _start_last_resort(self, closed: Closed) -> bool:
        resort = self._last_resort
        if resort is None:
            return False
        logger.warning(
            "! call %s: no AI provider is left (%s); playing the %s",
            self._handle.record.id,
            closed.reason,
            resort.name,
        )
        self._handle.switch_provider(resort.name, closed.reason)
        if self._metrics is not None:
            self._metrics.failover(resort.name)
        if resort.text:
            self._handle.add_transcript("ai", resort.text)
        self._playing_last_resort = True
        self._ready.clear()
        self._reply_finished.set()
        if self._media is not None:
            self._clip = ClipPlayer(resort, self._media.rate_hz)
        self._serving.set()
        return True

    async def _consume(self, session: ProviderSession) -> Closed | None:
        """Handle one session's events until it closes; returns how it closed."""
        async for event in session.events():
            if isinstance(event, AudioOut):
                self._reply_finished.clear()
                self._play(event)
            elif isinstance(event, SpeechStarted):
                self._speech_stopped_at = None
                self._barge_in(session)
            elif isinstance(event, SpeechStopped):
                self._speech_stopped_at = asyncio.get_running_loop().time()
            elif isinstance(event, ReplyDone):
                self._reply_done()
            elif isinstance(event, Transcript):
                self._handle.add_transcript(event.speaker, event.text)
            elif isinstance(event, ToolCall):
                self._tool_call(session, event)
            elif isinstance(event, Ready):
                if self._ready.is_set():
                    continue
                self._use_formats(session)
                self._ready.set()
                self._serving.set()
                if self._metrics is not None and self._started_at is not None:
                    loop_time = asyncio.get_running_loop().time()
                    self._metrics.provider_ready(loop_time - self._started_at)
            elif isinstance(event, Closed):
                logger.info("= call %s: provider closed: %s", self._handle.record.id, event.reason)
                return event
        return None

    def _barge_in(self, session: ProviderSession) -> None:
        self.barge_ins += 1
        self._early_audio.clear()
        playout, media = self._playout, self._media
        if playout is None or media is None or self._chunker is None:
            return
        item = playout.playing_reply_id
        played_ms = max(0, playout.reply_played_ms - media.queued_ms())
        buffered = playout.clear()
        media.flush()
        self._chunker.clear()
        if self._from_provider is not None:
            self._from_provider.reset()
        self._current_item = None
        if item is not None and session.capabilities.truncation:
            session.truncate(item, played_ms)
        logger.debug("= barge-in: dropped %d ms, %d ms were heard", buffered, played_ms)

    def _tool_call(self, session: ProviderSession, call: ToolCall) -> None:
        name = f"call-{self._handle.record.id}:tool-{call.name}"
        self._tasks.append(asyncio.create_task(self._run_tool(session, call), name=name))

    async def _run_tool(self, session: ProviderSession, call: ToolCall) -> None:
        runner = self._functions
        if runner is None:
            error = {"ok": False, "error": {"type": "unknown_function", "message": call.name}}
            session.tool_result(call.call_id, json.dumps(error))
            return
        hold_audio, media = self._hold_audio, self._media
        if hold_audio is not None and media is not None and runner.holds(call.name):
            url, rate_hz = runner.hold_audio_url(call.name), media.rate_hz

            def play(player: HoldPlayer) -> None:
                self._hold = player

            outcome = await run_with_hold(
                runner.run(call), clip=lambda: hold_audio.clip(url, rate_hz), play=play
            )
        else:
            outcome = await runner.run(call)
        session.tool_result(outcome.call_id, outcome.output)
        self._handle.record_function_call(outcome.record)

    def inject(self, message: str, role: str) -> None:
        if self._session is not None:
            self._session.inject(message, role)

    def dtmf(self, digit: str) -> None:
        if self._session is not None:
            self._session.inject(f"The caller pressed the key {digit}.", "system")

    async def goodbye(self) -> None:
        """Ask for a goodbye, then wait until it has been played out (bounded by the caller)."""
        self._ending = True  # a provider failing now does not move the call on
        if self._session is None or not self._ready.is_set():
            return
        self._reply_finished.clear()
        self._session.say(GOODBYE_INSTRUCTIONS)
        await self._reply_finished.wait()
        if self._playout is None:
            return
        self._drained.clear()
        await self._drained.wait()

    async def finish_speaking(self) -> None:
        """Wait for the next reply with audio to finish, then for it to be played out."""
        start = self._spoken_replies
        while self._spoken_replies == start and not self._closed.is_set():
            self._reply_finished.clear()
            await self._reply_finished.wait()
        if self._playout is not None:
            self._drained.clear()
            await self._drained.wait()

    async def aclose(self) -> None:
        self._ending = True
        if self._metrics is not None and self._playout is not None:
            self._metrics.underruns(self._playout.underruns)
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.aclose()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
