from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from sip4ai.audiofile import read_wav
from sip4ai.errors import ConfigError


pytestmark = pytest.mark.unit


def write_wav(
    path: Path, samples: np.ndarray, rate_hz: int, channels: int = 1, width: int = 2
) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate_hz)
        wav.writeframes(samples.tobytes())


def test_reads_16_bit_mono(tmp_path: Path) -> None:
    samples = (np.arange(1600) % 100 * 100).astype("<i2")
    write_wav(tmp_path / "a.wav", samples, 16000)
    pcm, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000
    assert np.array_equal(np.frombuffer(pcm, dtype="<i2"), samples)


def test_mixes_stereo_down(tmp_path: Path) -> None:
    stereo = np.array([[1000, 3000]] * 10, dtype="<i2")
    write_wav(tmp_path / "s.wav", stereo, 8000, channels=2)
    pcm, _ = read_wav(tmp_path / "s.wav")
    assert set(np.frombuffer(pcm, dtype="<i2").tolist()) == {2000}


def test_reads_8_bit(tmp_path: Path) -> None:
    write_wav(tmp_path / "b.wav", np.array([128, 255, 0], dtype=np.uint8), 8000, width=1)
    pcm, _ = read_wav(tmp_path / "b.wav")
    assert np.frombuffer(pcm, dtype="<i2").tolist() == [0, 127 << 8, -128 << 8]


@pytest.mark.parametrize("content", [b"", b"RIFF....WAVEjunk", b"not a wav at all"])
def test_bad_files_name_the_field(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_wav(path)
    assert info.value.field == "audio_file"


def test_clip_is_framed_once_per_rate() -> None:
    from sip4ai.audiofile import AudioClip

    pcm = (np.sin(np.arange(16000) * 2 * np.pi * 500 / 16000) * 8000).astype("<i2").tobytes()
    clip = AudioClip(pcm, 16000)
    frames = clip.frames(8000)
    assert clip.frames(8000) is frames
    assert all(len(f) == 320 for f in frames)
    assert len(frames) == 50  # one second at 20 ms per frame
