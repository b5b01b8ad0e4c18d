from __future__ import annotations

import numpy as np
import pytest

from sip4ai.audio.formats import AudioFormat, Encoding
from sip4ai.audio.g711 import ulaw_decode, ulaw_encode
from sip4ai.audio.transcode import Transcoder


pytestmark = pytest.mark.unit

PCMU = AudioFormat(Encoding.PCMU, 8000)
PCM8 = AudioFormat(Encoding.PCM16, 8000)
PCM24 = AudioFormat(Encoding.PCM16, 24000)


def sine(rate_hz: int, freq_hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (8000 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def dominant_hz(pcm: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate_hz)[int(np.argmax(spectrum))])


def test_identity_is_passthrough() -> None:
    data = b"\x01\x02" * 160
    assert Transcoder(PCM8, PCM8).convert(data) is data
    assert Transcoder(PCM8, PCM8).flush() == b""


def test_pcm16_to_pcmu_is_a_table_lookup_without_delay() -> None:
    pcm = sine(8000, 440, 0.02)
    out = Transcoder(PCM8, PCMU).convert(pcm.tobytes())
    assert out == ulaw_encode(pcm)
    assert Transcoder(PCMU, PCM8).convert(out) == ulaw_decode(out).tobytes()


def test_24k_reply_to_8k_keeps_tone_and_length() -> None:
    pcm = sine(24000, 1000, 1.0)
    transcoder = Transcoder(PCM24, PCM8)
    out = b"".join(transcoder.convert(pcm[i : i + 480].tobytes()) for i in range(0, pcm.size, 480))
    out += transcoder.flush()
    samples = np.frombuffer(out, dtype=np.int16)
    assert samples.size == 8000
    assert abs(dominant_hz(samples, 8000) - 1000) < 5


def test_flush_returns_held_tail_then_starts_afresh() -> None:
    transcoder = Transcoder(PCM24, PCM8)
    first = transcoder.convert(sine(24000, 500, 0.1).tobytes())
    tail = transcoder.flush()
    assert len(first) + len(tail) == 800 * 2
    assert len(transcoder.convert(sine(24000, 500, 0.1).tobytes())) == len(first)


def test_stereo_is_refused() -> None:
    with pytest.raises(ValueError, match="mono"):
        Transcoder(AudioFormat(Encoding.PCM16, 8000, 2), PCM8)
