"""FrameChunker: exact frames from arbitrary chunks, remainder, silence padding, clear."""

import numpy as np
import pytest

from sip4ai.audio.chunker import FrameChunker
from sip4ai.audio.formats import (
    FRAME_MS,
    PCM16_24K,
    PCMA_8K,
    PCMU_8K,
    SAMPLE_RATE_G711_HZ,
    SAMPLES_PER_FRAME_8K,
    AudioFormat,
    Encoding,
)


pytestmark = pytest.mark.unit


def _stream_bytes(num_bytes: int) -> bytes:
    return (np.arange(num_bytes) % 251).astype(np.uint8).tobytes()


def test_exact_frame_passes_straight_through() -> None:
    chunker = FrameChunker(160, encoding=Encoding.PCMU)
    frame = _stream_bytes(160)
    assert chunker.push(frame) == [frame]
    assert chunker.pending_bytes == 0


def test_small_pushes_accumulate_into_one_frame() -> None:
    chunker = FrameChunker(160, encoding=Encoding.PCMU)
    data = _stream_bytes(160)
    assert chunker.push(data[:100]) == []
    assert chunker.pending_bytes == 100
    assert chunker.push(data[100:159]) == []
    assert chunker.push(data[159:]) == [data]
    assert chunker.pending_bytes == 0


def test_frame_sized_push_after_a_remainder_keeps_byte_order() -> None:
    chunker = FrameChunker(160, encoding=Encoding.PCMU)
    data = _stream_bytes(260)
    assert chunker.push(data[:100]) == []
    assert chunker.push(data[100:]) == [data[:160]]
    assert chunker.pending_bytes == 100


def test_burst_is_split_into_frames_and_remainder_kept() -> None:
    chunker = FrameChunker(160, encoding=Encoding.PCMU)
    data = _stream_bytes(1000)
    frames = chunker.push(data)
    assert [len(f) for f in frames] == [160] * 6
    assert b"".join(frames) == data[:960]
    assert chunker.pending_bytes == 40


def test_random_chunking_preserves_the_stream_byte_for_byte() -> None:
    rng = np.random.default_rng(7)
    data = _stream_bytes(48_000)
    chunker = FrameChunker(960, encoding=Encoding.PCM16)
    frames: list[bytes] = []
    start = 0
    while start < len(data):
        size = int(rng.integers(0, 3000))
        frames += chunker.push(data[start : start + size])
        start += size
    assert all(len(f) == 960 for f in frames)
    assert b"".join(frames) == data[: len(frames) * 960]
    assert len(frames) * 960 + chunker.pending_bytes == len(data)


@pytest.mark.parametrize(
    ("encoding", "pad"),
    [(Encoding.PCM16, b"\x00"), (Encoding.PCMU, b"\xff"), (Encoding.PCMA, b"\xd5")],
)
def test_flush_pads_with_the_encodings_silence(encoding: Encoding, pad: bytes) -> None:
    chunker = FrameChunker(160, encoding=encoding)
    chunker.push(b"\x01\x02\x03\x04")
    assert chunker.flush() == [b"\x01\x02\x03\x04" + pad * 156]
    assert chunker.pending_bytes == 0
    assert chunker.flush() == []


def test_flush_when_empty_returns_nothing() -> None:
    chunker = FrameChunker(160, encoding=Encoding.PCMU)
    chunker.push(_stream_bytes(320))
    assert chunker.flush() == []


def test_clear_drops_the_remainder() -> None:
    chunker = FrameChunker(160, encoding=Encoding.PCMU)
    chunker.push(_stream_bytes(250))
    assert chunker.clear() == 90
    assert chunker.pending_bytes == 0
    fresh = _stream_bytes(160)
    assert chunker.push(fresh) == [fresh]


def test_accepts_bytearray_and_memoryview() -> None:
    chunker = FrameChunker(4, encoding=Encoding.PCM16)
    samples = np.array([1, 2, 3, 4], dtype=np.int16)
    frames = chunker.push(memoryview(samples.tobytes()).cast("h"))  # 8 bytes, len() is 4
    frames += chunker.push(bytearray(b"\x05\x00\x06\x00"))
    assert frames == [samples[:2].tobytes(), samples[2:].tobytes(), b"\x05\x00\x06\x00"]
    assert all(type(f) is bytes for f in frames)


def test_for_format_uses_20ms_frames_and_format_silence() -> None:
    assert FrameChunker.for_format(PCMU_8K).frame_bytes == 160
    assert FrameChunker.for_format(PCM16_24K).frame_bytes == 960
    chunker = FrameChunker.for_format(PCMA_8K)
    chunker.push(b"\xaa")
    assert chunker.flush() == [b"\xaa" + b"\xd5" * 159]


def test_rejects_bad_frame_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        FrameChunker(0)
    with pytest.raises(ValueError, match="even"):
        FrameChunker(161, encoding=Encoding.PCM16)


def test_format_frame_arithmetic() -> None:
    assert (SAMPLE_RATE_G711_HZ, FRAME_MS, SAMPLES_PER_FRAME_8K) == (8000, 20, 160)
    assert PCMU_8K.samples_per_frame() == 160
    assert PCMU_8K.bytes_per_frame() == 160
    assert PCM16_24K.bytes_per_frame() == 960
    assert AudioFormat(Encoding.PCM16, 16000, channels=2).bytes_per_frame(10) == 640
    assert PCMU_8K.duration_ms(8) == 1.0  # OpenAI truncate math: mu-law is 8 bytes/ms
    assert PCM16_24K.duration_ms(48) == 1.0
    assert PCMA_8K.silence() == b"\xd5" * 160
    with pytest.raises(ValueError, match="whole number"):
        AudioFormat(Encoding.PCM16, 11025).samples_per_frame()
    with pytest.raises(ValueError, match="rate_hz"):
        AudioFormat(Encoding.PCMU, 0)
