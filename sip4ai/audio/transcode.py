"""Stateful conversion of one audio stream between two formats (codec and rate). Pure.

One Transcoder per direction per call: the resampler inside keeps history across chunks.
Identical formats pass through untouched; G.711 <-> PCM16 at one rate is a table lookup only.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from sip4ai.audio.formats import AudioFormat, Encoding
from sip4ai.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from sip4ai.audio.resample import StreamResampler


def decode(data: bytes, encoding: Encoding) -> npt.NDArray[np.int16]:
    if encoding is Encoding.PCMU:
        return ulaw_decode(data)
    if encoding is Encoding.PCMA:
        return alaw_decode(data)
    return np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2").astype(np.int16)


def encode(pcm: npt.NDArray[np.int16], encoding: Encoding) -> bytes:
    if encoding is Encoding.PCMU:
        return ulaw_encode(pcm)
    if encoding is Encoding.PCMA:
        return alaw_encode(pcm)
    return pcm.astype("<i2").tobytes()


class Transcoder:
    def __init__(self, source: AudioFormat, target: AudioFormat) -> None:
        if source.channels != 1 or target.channels != 1:
            raise ValueError("only mono audio is supported")
        self.source: Final = source
        self.target: Final = target
        self.identity: Final = source == target
        self._resampler = StreamResampler(source.rate_hz, target.rate_hz)

    def convert(self, data: bytes) -> bytes:
        if self.identity:
            return data
        pcm = decode(data, self.source.encoding)
        if not self._resampler.passthrough:
            pcm = self._resampler.process(pcm)
        return encode(pcm, self.target.encoding)

    def flush(self) -> bytes:
        """The audio still held in the resampler (end of a reply); the stream starts afresh."""
        if self.identity or self._resampler.passthrough:
            return b""
        return encode(self._resampler.flush(), self.target.encoding)

    def reset(self) -> None:
        """Forget resampler history (after barge-in or a provider reconnect)."""
        self._resampler.reset()
