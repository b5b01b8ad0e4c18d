"""MediaStream for the pjsua2 backend, and fast copies in and out of ``pj.ByteVector``.

The audio port's callbacks run on pjmedia's clock thread every 20 ms; they only move ``bytes``
between the frame and two deques, never wait and never call back into the library. The asyncio
side reads and writes the same deques (``deque.append``/``popleft`` are atomic).

``bytes(frame.buf)`` walks a ``std::vector<unsigned char>`` through SWIG one element at a time
(about 166 us per 320-byte frame). ``VectorAccess`` reads the vector's begin/end pointers with
ctypes instead (about 1 us) and copies into a preallocated vector with ``memmove``. That relies
on libstdc++'s vector layout (three pointers: begin, end, end of storage), so it is checked
against the real vector type once at start; if the check fails the slow path is used and a
warning says so.
"""

from __future__ import annotations

import collections
import ctypes
import logging
from collections.abc import Callable
from typing import Any

from sip4ai.sip.interface import FRAME_MS, MediaStats


__all__ = ["PjMediaStream", "VectorAccess"]

logger = logging.getLogger(__name__)

RX_QUEUE_FRAMES = 100
"""Caller audio kept for a reader that falls behind (2 s); older frames are dropped."""
TX_QUEUE_FRAMES = 100
"""Audio queued for sending (2 s); a writer further ahead loses its oldest frames."""
_POINTER = ctypes.sizeof(ctypes.c_void_p)


class VectorAccess:
    """bytes <-> ``std::vector<unsigned char>`` (SWIG ``ByteVector``) without per-element copies.

    ``factory`` builds a vector from bytes (``pj.ByteVector``); it is only used for the one-off
    layout check and on the slow path.
    """

    def __init__(self, factory: Callable[[Any], Any]) -> None:
        self._factory = factory
        self.fast = self._layout_ok()
        if not self.fast:
            logger.warning(
                "! pjsua2: ByteVector layout check failed, audio frames are copied through "
                "SWIG element by element (slow: about 0.2 ms per frame)"
            )

    def to_bytes(self, vector: Any) -> bytes:
        if not self.fast:
            return bytes(vector)
        address = int(vector.this)
        begin = ctypes.c_void_p.from_address(address).value
        end = ctypes.c_void_p.from_address(address + _POINTER).value
        if not begin or not end or end <= begin:
            return b""
        return ctypes.string_at(begin, end - begin)

    def new_vector(self, size: int) -> Any:
        """A vector of ``size`` zero bytes, to be refilled with ``fill``."""
        return self._factory(bytes(size))

    def fill(self, vector: Any, data: bytes) -> Any:
        """Copy ``data`` into ``vector`` (same length) and return the vector to assign."""
        if not self.fast:
            return self._factory(data)
        address = int(vector.this)
        begin = ctypes.c_void_p.from_address(address).value
        end = ctypes.c_void_p.from_address(address + _POINTER).value
        if not begin or end is None or end - begin != len(data):
            return self._factory(data)
        ctypes.memmove(begin, data, len(data))
        return vector

    def _layout_ok(self) -> bool:
        probe = bytes(range(256)) * 2 + b"sip4ai"
        try:
            vector = self._factory(probe)
            self.fast = True
            read_back = self.to_bytes(vector)
            target = self._factory(bytes(len(probe)))
            written = bytes(self.fill(target, probe[::-1]))
        except Exception as exc:
            logger.debug("ByteVector layout probe failed: %r", exc)
            return False
        finally:
            self.fast = False
        return read_back == probe and written == probe[::-1]


class PjMediaStream:
    """One leg's audio: PCM16 mono native-endian at ``rate_hz``, 20 ms frames.

    ``deliver``/``take`` are called by the audio port on the clock thread; the rest on the loop.
    """

    def __init__(self, rate_hz: int, *, leg_id: str) -> None:
        self._rate_hz = rate_hz
        self._frame_bytes = rate_hz * 2 * FRAME_MS // 1000
        self._leg_id = leg_id
        self._rx: collections.deque[bytes] = collections.deque()
        self._tx: collections.deque[bytes] = collections.deque()
        self._silence = bytes(self._frame_bytes)
        self._closed = False
        self.frames_in = 0
        self.frames_out = 0
        self.rx_dropped = 0
        self.tx_dropped = 0
        self.tx_underruns = 0
        self.sending = False
        """Set by the port once the library pulls audio (diagnostics)."""

    @property
    def rate_hz(self) -> int:
        return self._rate_hz

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- clock-thread side ----------------------------------------------------------------------

    def deliver(self, pcm: bytes) -> None:
        """A frame of caller audio from the library."""
        if self._closed or len(pcm) != self._frame_bytes:
            return
        if len(self._rx) >= RX_QUEUE_FRAMES:
            self._rx.popleft()
            self.rx_dropped += 1
        self._rx.append(pcm)

    def take(self) -> bytes:
        """The next frame to send; silence (counted as an underrun) when none is queued."""
        self.sending = True
        try:
            return self._tx.popleft()
        except IndexError:
            if not self._closed:
                self.tx_underruns += 1
            return self._silence

    # ---- MediaStream (loop side) ----------------------------------------------------------------

    def read(self) -> list[bytes]:
        frames: list[bytes] = []
        rx = self._rx
        while True:
            try:
                frames.append(rx.popleft())
            except IndexError:
                break
        self.frames_in += len(frames)
        return frames

    def write(self, frame: bytes) -> None:
        if self._closed or not frame:
            return
        size = self._frame_bytes
        if len(frame) != size:
            frame = (frame + self._silence)[:size] if len(frame) < size else frame[:size]
        if len(self._tx) >= TX_QUEUE_FRAMES:
            self._tx.popleft()
            self.tx_dropped += 1
            if self.tx_dropped == 1:
                logger.warning(
                    "! leg %s: transmit queue full, audio dropped (writer ahead of the clock)",
                    self._leg_id,
                )
        self._tx.append(frame)
        self.frames_out += 1

    def queued_ms(self) -> int:
        return len(self._tx) * FRAME_MS

    def flush(self) -> None:
        self._tx.clear()

    def stats(self) -> MediaStats:
        return MediaStats(
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            frames_lost=self.rx_dropped,
            tx_underruns=self.tx_underruns,
        )

    def close(self) -> None:
        """The leg ended: queued audio is dropped, reads return what was already received."""
        self._closed = True
        self._tx.clear()
