"""MediaStream over baresip-python's aumem rings (one per call and direction, 2 s each).

Reads and writes are non-blocking C calls: the library's audio threads never wait on Python and
Python never waits on them. The library raises ``AudioRestarted`` both after a mid-call
renegotiation (hold/resume re-INVITE) and during the teardown at hang-up (its stream destructor
bumps the epoch before CALL_CLOSED arrives), so it is treated like "no audio right now": the
read returns nothing and the next call binds to whatever streams exist.
"""

from __future__ import annotations

import logging
from typing import Protocol

from sip4ai.sip.baresip_facade import AudioCounters, AudioFormat, MediaInactive, MediaRestarted
from sip4ai.sip.interface import FRAME_MS, MediaStats


__all__ = ["BaresipMediaStream", "PcmPort"]

logger = logging.getLogger(__name__)

_ZERO = AudioCounters(0, 0, 0, 0, 0)
# Refresh the counter snapshot this often (in reads) so a stream swap loses little of them.
_SNAPSHOT_EVERY_READS = 25


class PcmPort(Protocol):
    """What the stream needs from ``baresip_facade.AudioPort`` (a fake in unit tests)."""

    def info(self) -> AudioFormat: ...

    def read(self, max_bytes: int) -> bytes: ...

    def write(self, pcm: bytes) -> int: ...

    def flush(self) -> None: ...

    def counters(self) -> AudioCounters: ...


class BaresipMediaStream:
    """One leg's audio: PCM16 mono native-endian at ``rate_hz``, 20 ms frames."""

    def __init__(self, port: PcmPort, rate_hz: int, *, leg_id: str) -> None:
        self._port = port
        self._rate_hz = rate_hz
        self._frame_bytes = rate_hz * 2 * FRAME_MS // 1000
        self._read_size = self._frame_bytes * 25
        self._leg_id = leg_id
        self._partial = b""
        self._frames_in = 0
        self._frames_out = 0
        self._tx_refused_frames = 0
        self._restarts = 0
        self._reads = 0
        self._base = _ZERO
        self._last = _ZERO
        self._closed = False

    @property
    def rate_hz(self) -> int:
        return self._rate_hz

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    def read(self) -> list[bytes]:
        if self._closed:
            return []
        chunks: list[bytes] = []
        try:
            while True:
                data = self._port.read(self._read_size)
                if data:
                    chunks.append(data)
                if len(data) < self._read_size:
                    break
        except MediaRestarted:
            self._on_restart()
            return []
        except MediaInactive:
            return []
        self._reads += 1
        if self._reads % _SNAPSHOT_EVERY_READS == 0:
            self._snapshot()
        if not chunks:
            return []
        data = self._partial + b"".join(chunks)
        whole = len(data) - len(data) % self._frame_bytes
        self._partial = data[whole:]
        size = self._frame_bytes
        frames = [data[i : i + size] for i in range(0, whole, size)]
        self._frames_in += len(frames)
        return frames

    def write(self, frame: bytes) -> None:
        if self._closed or not frame:
            return
        try:
            accepted = self._port.write(frame)
        except MediaRestarted:
            self._on_restart()
            return
        except MediaInactive:
            return
        if accepted == len(frame):
            self._frames_out += 1
            return
        self._tx_refused_frames += 1
        if self._tx_refused_frames == 1 and self._ring_full():
            logger.warning(
                "! leg %s: transmit ring full, audio dropped (writer ahead of the clock)",
                self._leg_id,
            )

    def _ring_full(self) -> bool:
        """Refusals also happen while the streams are torn down; only a full ring is a fault."""
        try:
            info = self._port.info()
        except MediaInactive:
            return False
        if not info.tx_ready or info.tx_capacity_bytes == 0:
            return False  # the transmit side is being torn down
        return info.tx_buffered_bytes + self._frame_bytes > info.tx_capacity_bytes

    def queued_ms(self) -> int:
        try:
            buffered = self._port.info().tx_buffered_bytes
        except MediaInactive:
            return 0
        return buffered * 1000 // (self._rate_hz * 2)

    def flush(self) -> None:
        try:
            self._port.flush()
        except MediaRestarted:
            self._on_restart()
        except MediaInactive:
            pass

    def stats(self) -> MediaStats:
        self._snapshot()
        total = _add(self._base, self._last)
        return MediaStats(
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            frames_lost=(total.rx_dropped_bytes + total.rx_discarded_bytes) // self._frame_bytes,
            tx_underruns=total.tx_silence_frames + total.tx_starved_frames,
        )

    def close(self) -> None:
        """The leg ended: final counter snapshot, then reads return nothing."""
        if not self._closed:
            self._snapshot()
            self._closed = True

    def _snapshot(self) -> None:
        if self._closed:
            return
        try:
            current = self._port.counters()
        except MediaInactive:
            return
        if _older(current, self._last):
            # The streams were replaced since the last look: keep what the old ones counted.
            self._base = _add(self._base, self._last)
        self._last = current

    def _on_restart(self) -> None:
        self._restarts += 1
        self._partial = b""
        self._base = _add(self._base, self._last)
        self._last = _ZERO
        logger.debug("= leg %s: audio streams replaced (%d)", self._leg_id, self._restarts)


def _add(a: AudioCounters, b: AudioCounters) -> AudioCounters:
    return AudioCounters(
        tx_silence_frames=a.tx_silence_frames + b.tx_silence_frames,
        tx_starved_frames=a.tx_starved_frames + b.tx_starved_frames,
        tx_rejected_bytes=a.tx_rejected_bytes + b.tx_rejected_bytes,
        rx_dropped_bytes=a.rx_dropped_bytes + b.rx_dropped_bytes,
        rx_discarded_bytes=a.rx_discarded_bytes + b.rx_discarded_bytes,
    )


def _older(current: AudioCounters, last: AudioCounters) -> bool:
    """Counters only grow within one set of streams; a decrease means new streams."""
    return (
        current.tx_silence_frames < last.tx_silence_frames
        or current.rx_dropped_bytes < last.rx_dropped_bytes
        or current.rx_discarded_bytes < last.rx_discarded_bytes
    )
