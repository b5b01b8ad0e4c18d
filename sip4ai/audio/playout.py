"""Playout buffer between a bursty provider and the 20 ms SIP clock.

Pure and clock-free: the bridge pushes frames as they arrive (providers stream replies several
times faster than real time) and pops exactly one frame per 20 ms tick of the SIP media clock.
"""

from collections import deque
from dataclasses import dataclass
from typing import Final

from sip4ai.audio.formats import FRAME_MS, AudioFormat


DEFAULT_CAPACITY_MS: Final = 120_000
"""Room for a whole long reply: OpenAI may deliver a minute of speech within seconds, and the
buffer must hold all of it (about 1 MB of mu-law plus object overhead at 120 s)."""


@dataclass(frozen=True, slots=True)
class _ReplyStart:
    reply_id: str | None


class _ReplyEnd:
    __slots__ = ()


_REPLY_END: Final = _ReplyEnd()


@dataclass(frozen=True, slots=True)
class PlayoutStats:
    """Lifetime counters of one buffer; all counts are frames of ``frame_ms`` each."""

    frames_played: int
    """Real frames returned by ``pop`` (silence fill not included)."""
    underruns: int
    """Silence frames returned while a reply was in progress: audible gaps inside a reply."""
    overflows: int
    """Frames rejected by ``push`` because the buffer was full."""
    frames_cleared: int
    """Frames dropped by ``clear``."""


class PlayoutBuffer:
    """FIFO of equal-size frames that yields silence when empty.

    Replies: ``mark_start_of_reply(reply_id)`` and ``mark_end_of_reply()`` queue boundaries in
    line with the frames, so they take effect when playout reaches them, not when they are
    called. That gives the bridge two things:

    * ``underruns`` counts only gaps *inside* a reply: a pop on an empty buffer after a frame was
      pushed and before the end of that reply was marked. Silence between replies is normal.
    * ``reply_played_ms`` / ``playing_reply_id`` say how much of the reply now at the head was
      heard, which is what OpenAI's ``conversation.item.truncate`` needs as ``audio_end_ms``
      (read them before ``clear()``). The value is kept after the reply has played out and
      restarts at 0 when the first frame of the next reply is played.

    Overflow policy: reject the newest frame and count it. Dropping the oldest would make the
    caller hear a jump inside a sentence and would break ``reply_played_ms`` as a position in
    the reply (the truncate offset). Rejecting keeps what is played a contiguous prefix of the
    reply, so the offset stays exact and only the tail of an over-long reply is lost. The
    buffer is not a latency bound (barge-in ``clear()`` is), so the capacity is sized for the
    longest reply, and an overflow means something upstream is wrong.
    """

    def __init__(
        self,
        fmt: AudioFormat,
        *,
        capacity_ms: int = DEFAULT_CAPACITY_MS,
        frame_ms: int = FRAME_MS,
    ) -> None:
        if capacity_ms < frame_ms:
            raise ValueError(f"capacity_ms {capacity_ms} is less than one {frame_ms} ms frame")
        self.fmt: Final = fmt
        self.frame_ms: Final = frame_ms
        self.frame_bytes: Final = fmt.bytes_per_frame(frame_ms)
        self.capacity_frames: Final = capacity_ms // frame_ms
        self.silence: Final = fmt.silence(frame_ms)
        """The frame returned on underrun or when idle (the same object every time)."""
        self._queue: deque[bytes | _ReplyStart | _ReplyEnd] = deque()
        self._frames = 0
        # Producer side: a frame was pushed and the reply is not marked finished yet.
        self._reply_open = False
        # Consumer side: the reply at the head of playout.
        self._playing_reply_id: str | None = None
        self._reply_played_frames = 0
        self._reply_done = False
        self._frames_played = 0
        self._underruns = 0
        self._overflows = 0
        self._frames_cleared = 0

    def __len__(self) -> int:
        """Frames buffered."""
        return self._frames

    @property
    def buffered_ms(self) -> int:
        return self._frames * self.frame_ms

    @property
    def playing_reply_id(self) -> str | None:
        """``reply_id`` of the reply playing (or last played); None after ``clear()``."""
        return self._playing_reply_id

    @property
    def reply_played_ms(self) -> int:
        """Milliseconds of the current reply played so far (see the class docstring)."""
        return self._reply_played_frames * self.frame_ms

    @property
    def frames_played(self) -> int:
        return self._frames_played

    @property
    def underruns(self) -> int:
        return self._underruns

    @property
    def overflows(self) -> int:
        return self._overflows

    def stats(self) -> PlayoutStats:
        return PlayoutStats(
            frames_played=self._frames_played,
            underruns=self._underruns,
            overflows=self._overflows,
            frames_cleared=self._frames_cleared,
        )

    def push(self, frame: bytes) -> bool:
        """Queue one frame of exactly ``frame_bytes``; False if rejected because full."""
        if len(frame) != self.frame_bytes:
            raise ValueError(f"frame must be {self.frame_bytes} bytes, got {len(frame)}")
        self._reply_open = True
        if self._frames >= self.capacity_frames:
            self._overflows += 1
            return False
        self._queue.append(frame)
        self._frames += 1
        return True

    def mark_start_of_reply(self, reply_id: str | None = None) -> None:
        """Frames pushed from now on belong to a new reply (ends any open one)."""
        self._reply_open = False
        self._queue.append(_ReplyStart(reply_id))

    def mark_end_of_reply(self) -> None:
        """No more frames will come for the current reply: a drained buffer is not an underrun."""
        self._reply_open = False
        if not self._queue or self._queue[-1] is not _REPLY_END:
            self._queue.append(_REPLY_END)

    def pop(self) -> bytes:
        """The next frame to play, or ``silence`` if none is buffered. Call once per frame tick."""
        queue = self._queue
        while queue:
            item = queue.popleft()
            if isinstance(item, _ReplyEnd):
                self._reply_done = True
                continue
            if isinstance(item, _ReplyStart):
                self._playing_reply_id = item.reply_id
                self._reply_played_frames = 0
                self._reply_done = False
                continue
            if self._reply_done:
                self._reply_done = False
                self._playing_reply_id = None
                self._reply_played_frames = 0
            self._frames -= 1
            self._frames_played += 1
            self._reply_played_frames += 1
            return item
        if self._reply_open:
            self._underruns += 1
        return self.silence

    def clear(self) -> int:
        """Drop everything at once (barge-in); returns the milliseconds of audio dropped.

        Also forgets the reply in progress: ``reply_played_ms`` is 0 and ``playing_reply_id``
        None afterwards, and nothing counts as an underrun until the next ``push``.
        """
        dropped = self._frames
        self._queue.clear()
        self._frames = 0
        self._frames_cleared += dropped
        self._reply_open = False
        self._playing_reply_id = None
        self._reply_played_frames = 0
        self._reply_done = False
        return dropped * self.frame_ms
