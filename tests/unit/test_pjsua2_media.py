"""PjMediaStream (the queues between pjmedia's clock thread and the loop) and VectorAccess (the
ByteVector copies that avoid SWIG's element-by-element path)."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import pytest

from sip4ai.sip.interface import MediaStats
from sip4ai.sip.pjsua2_media import RX_QUEUE_FRAMES, TX_QUEUE_FRAMES, PjMediaStream, VectorAccess


pytestmark = pytest.mark.unit

FRAME = 320


def frame(n: int, size: int = FRAME) -> bytes:
    return bytes([n % 256]) * size


def test_frame_size_follows_the_rate() -> None:
    assert PjMediaStream(8000, leg_id="l").frame_bytes == 320
    assert PjMediaStream(16000, leg_id="l").frame_bytes == 640


def test_caller_frames_are_read_in_order_and_counted() -> None:
    stream = PjMediaStream(8000, leg_id="l")
    for n in range(3):
        stream.deliver(frame(n))
    stream.deliver(b"\x01" * 100)  # not a whole frame: ignored
    assert stream.read() == [frame(0), frame(1), frame(2)]
    assert stream.read() == []
    assert stream.stats() == MediaStats(frames_in=3, frames_out=0, frames_lost=0, tx_underruns=0)


def test_slow_reader_loses_the_oldest_frames_and_they_are_counted() -> None:
    stream = PjMediaStream(8000, leg_id="l")
    for n in range(RX_QUEUE_FRAMES + 5):
        stream.deliver(frame(n))
    frames = stream.read()
    assert len(frames) == RX_QUEUE_FRAMES and frames[0] == frame(5)
    assert stream.stats().frames_lost == 5


def test_written_frames_go_out_in_order_then_silence_counts_as_underrun() -> None:
    stream = PjMediaStream(8000, leg_id="l")
    stream.write(frame(1))
    stream.write(frame(2))
    assert stream.queued_ms() == 40
    assert stream.take() == frame(1)
    assert stream.take() == frame(2)
    assert stream.take() == bytes(FRAME)
    assert stream.stats().tx_underruns == 1 and stream.stats().frames_out == 2


def test_odd_sized_writes_are_padded_or_cut_to_one_frame() -> None:
    stream = PjMediaStream(8000, leg_id="l")
    stream.write(b"\x07" * 10)
    stream.write(b"\x08" * 1000)
    short, long = stream.take(), stream.take()
    assert short == b"\x07" * 10 + bytes(FRAME - 10)
    assert long == b"\x08" * FRAME


def test_flush_drops_queued_audio() -> None:
    stream = PjMediaStream(8000, leg_id="l")
    for n in range(5):
        stream.write(frame(n))
    stream.flush()
    assert stream.queued_ms() == 0
    assert stream.take() == bytes(FRAME)


def test_writer_ahead_of_the_clock_loses_oldest_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    stream = PjMediaStream(8000, leg_id="leg-9")
    for n in range(TX_QUEUE_FRAMES + 3):
        stream.write(frame(n))
    assert stream.queued_ms() == TX_QUEUE_FRAMES * 20
    assert stream.take() == frame(3)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "leg-9" in warnings[0]


def test_after_close_writes_are_ignored_but_received_audio_can_still_be_read() -> None:
    stream = PjMediaStream(8000, leg_id="l")
    stream.deliver(frame(1))
    stream.write(frame(2))
    stream.close()
    stream.write(frame(3))
    stream.deliver(frame(4))
    assert stream.closed and stream.queued_ms() == 0
    assert stream.read() == [frame(1)]
    assert stream.take() == bytes(FRAME) and stream.stats().tx_underruns == 0


class _Opaque:
    """A vector stand-in without SWIG's ``this`` pointer: forces the slow path."""

    def __init__(self, data: Any) -> None:
        self.data = bytes(data)

    def __iter__(self) -> Any:
        return iter(self.data)


def test_vector_access_falls_back_when_the_layout_check_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    access = VectorAccess(_Opaque)
    assert not access.fast
    assert "layout check failed" in caplog.text
    assert access.to_bytes(_Opaque(b"abc")) == b"abc"
    assert access.fill(access.new_vector(3), b"xyz").data == b"xyz"


@pytest.mark.skipif(importlib.util.find_spec("pjsua2") is None, reason="pjsua2 not installed")
def test_vector_access_on_the_real_byte_vector() -> None:
    import pjsua2 as pj  # type: ignore[import-untyped]

    access = VectorAccess(pj.ByteVector)
    assert access.fast
    data = bytes(range(256)) + b"end"
    assert access.to_bytes(pj.ByteVector(data)) == data
    assert access.to_bytes(pj.ByteVector(b"")) == b""
    vector = access.new_vector(len(data))
    assert bytes(access.fill(vector, data)) == data
    assert access.fill(vector, data) is vector  # reused: no new vector per frame
    assert bytes(access.fill(vector, b"short")) == b"short"  # other sizes: a new vector
