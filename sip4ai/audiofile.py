"""AUDIO_FILE mode: play a WAV file to the caller instead of an AI (the docs' fallback)."""

from __future__ import annotations

import asyncio
import logging
import wave
from pathlib import Path

import numpy as np

from sip4ai.audio.formats import FRAME_MS, AudioFormat, Encoding
from sip4ai.audio.transcode import Transcoder
from sip4ai.errors import ConfigError
from sip4ai.sip.interface import MediaStream


logger = logging.getLogger(__name__)

TICK_S = FRAME_MS / 1000
SEND_AHEAD_MS = 100
"""Playing a file needs no low latency: queue more, so a busy loop never starves the stream."""
MAX_FRAMES_PER_TICK = 3
"""Never more per tick: a stream that is not sending yet must not spin the loop."""


def read_wav(path: Path, field: str = "audio_file") -> tuple[bytes, int]:
    """Mono PCM16 samples of a WAV file (8/16-bit, any rate, channels mixed down) and its rate."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise ConfigError(field, str(path), f"not a readable WAV file: {exc}") from None
    if width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.int32)
    elif width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.int32) - 128) << 8
    else:
        raise ConfigError(field, str(path), f"{width * 8}-bit WAV is not supported")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int32)
    if samples.size == 0:
        raise ConfigError(field, str(path), "the WAV file has no audio")
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes(), rate


class AudioClip:
    """The file's audio, cut into 20 ms frames once per call rate (not once per call)."""

    def __init__(self, pcm: bytes, rate_hz: int) -> None:
        self._pcm = pcm
        self._rate_hz = rate_hz
        self._frames: dict[int, list[bytes]] = {}

    def frames(self, rate_hz: int) -> list[bytes]:
        frames = self._frames.get(rate_hz)
        if frames is None:
            source = AudioFormat(Encoding.PCM16, self._rate_hz)
            target = AudioFormat(Encoding.PCM16, rate_hz)
            transcoder = Transcoder(source, target)
            audio = transcoder.convert(self._pcm) + transcoder.flush()
            size = rate_hz * FRAME_MS // 1000 * 2
            audio += b"\0" * (-len(audio) % size)
            frames = [audio[i : i + size] for i in range(0, len(audio), size)]
            self._frames[rate_hz] = frames
        return frames


class AudioFileConversation:
    """Plays the file from the start of the call; loops, or ends the call when it is done."""

    def __init__(self, clip: AudioClip, *, loop: bool) -> None:
        self._clip = clip
        self._loop = loop
        self.injected: list[tuple[str, str]] = []

    async def prepare(self) -> None:
        return None

    async def run(self, media: MediaStream) -> str | None:
        frames = self._clip.frames(media.rate_hz)
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        index = 0
        while True:
            media.read()  # the caller's audio is not used; drain it so nothing piles up
            for _ in range(MAX_FRAMES_PER_TICK):
                if media.queued_ms() >= SEND_AHEAD_MS:
                    break
                if index == len(frames):
                    if not self._loop:
                        return await self._drain(media)
                    index = 0
                media.write(frames[index])
                index += 1
            deadline += TICK_S
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def _drain(self, media: MediaStream) -> str:
        while media.queued_ms() > 0:
            media.read()
            await asyncio.sleep(TICK_S)
        return "audio_file_finished"

    def inject(self, message: str, role: str) -> None:
        self.injected.append((role, message))

    def dtmf(self, digit: str) -> None:
        return None

    async def goodbye(self) -> None:
        return None

    async def finish_speaking(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
