"""BaresipMediaStream over a fake port: framing, the AudioRestarted-at-hang-up rule, counters."""

from __future__ import annotations

import pytest

from sip4ai.sip.baresip_facade import AudioCounters, AudioFormat, MediaInactive, MediaRestarted
from sip4ai.sip.baresip_media import BaresipMediaStream


pytestmark = pytest.mark.unit

FRAME = 320


class FakePort:
    def __init__(self) -> None:
        self.rx = b""
        self.tx: list[bytes] = []
        self.capacity = 32000
        self.raise_on_read: Exception | None = None
        self.raise_on_info: Exception | None = None
        self.counters_value = AudioCounters(0, 0, 0, 0, 0)
        self.flushed = 0

    def info(self) -> AudioFormat:
        if self.raise_on_info is not None:
            raise self.raise_on_info
        buffered = sum(len(b) for b in self.tx)
        return AudioFormat(True, True, 8000, 20, buffered, self.capacity)

    def read(self, max_bytes: int) -> bytes:
        if self.raise_on_read is not None:
            exc, self.raise_on_read = self.raise_on_read, None
            raise exc
        data, self.rx = self.rx[:max_bytes], self.rx[max_bytes:]
        return data

    def write(self, pcm: bytes) -> int:
        room = self.capacity - sum(len(b) for b in self.tx)
        taken = pcm[: max(0, room)]
        if taken:
            self.tx.append(taken)
        return len(taken)

    def flush(self) -> None:
        self.flushed += 1
        self.tx.clear()

    def counters(self) -> AudioCounters:
        return self.counters_value


def stream(port: FakePort) -> BaresipMediaStream:
    return BaresipMediaStream(port, 8000, leg_id="leg-1")


def test_frames_are_whole_and_partial_bytes_carry_over() -> None:
    port = FakePort()
    media = stream(port)
    assert media.rate_hz == 8000 and media.frame_bytes == FRAME
    port.rx = bytes(range(256)) * 3  # 768 bytes: two frames and 128 bytes
    frames = media.read()
    assert [len(f) for f in frames] == [FRAME, FRAME]
    port.rx = b"\1" * 192
    assert media.read() == [(bytes(range(256)) * 3)[640:] + b"\1" * 192]
    assert media.read() == []


def test_reads_drain_more_than_one_chunk() -> None:
    port = FakePort()
    port.rx = b"\0" * FRAME * 60  # more than one 25-frame read
    assert len(stream(port).read()) == 60


@pytest.mark.parametrize("exc", [MediaRestarted(), MediaInactive()])
def test_read_never_raises(exc: Exception) -> None:
    """The library raises AudioRestarted at hang-up (its bug 4): a read returns nothing."""
    port = FakePort()
    media = stream(port)
    port.rx = b"\0" * 100  # a partial frame that the restart discards
    assert media.read() == []
    port.raise_on_read = exc
    assert media.read() == []
    port.rx = b"\0" * FRAME
    assert len(media.read()) == 1
    # a restart dropped the 100-byte partial frame (old streams); inactivity kept it
    port.rx = b"\0" * 220
    assert len(media.read()) == (0 if isinstance(exc, MediaRestarted) else 1)


def test_write_counts_and_full_ring() -> None:
    port = FakePort()
    port.capacity = FRAME * 2
    media = stream(port)
    for _ in range(3):
        media.write(b"\0" * FRAME)
    assert media.stats().frames_out == 2
    assert media.queued_ms() == 40
    media.flush()
    assert port.flushed == 1 and media.queued_ms() == 0
    port.raise_on_info = MediaInactive()
    assert media.queued_ms() == 0


def test_counters_survive_a_stream_swap() -> None:
    port = FakePort()
    media = stream(port)
    port.counters_value = AudioCounters(10, 1, 0, FRAME * 3, FRAME)
    assert media.stats().frames_lost == 4
    assert media.stats().tx_underruns == 11
    # renegotiation: new streams, counters restart from zero
    port.counters_value = AudioCounters(2, 0, 0, FRAME, 0)
    stats = media.stats()
    assert stats.frames_lost == 5 and stats.tx_underruns == 13
    media.close()
    port.rx = b"\0" * FRAME
    assert media.read() == []
    media.write(b"\0" * FRAME)
    assert port.tx == []
