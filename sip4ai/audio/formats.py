"""Audio format descriptions shared by the codecs, the framer, the playout buffer and the bridge.

Telephony side: G.711 at 8 kHz in 20 ms frames (RFC 3551 section 4.5.14, default ptime 20 ms).
"""

import enum
from dataclasses import dataclass
from typing import Final


SAMPLE_RATE_G711_HZ: Final = 8000
FRAME_MS: Final = 20
SAMPLES_PER_FRAME_8K: Final = SAMPLE_RATE_G711_HZ * FRAME_MS // 1000  # 160

# Byte that decodes to (near) zero amplitude, used to pad frames and to fill underruns.
# mu-law 0xFF is "positive zero"; A-law has no zero level and 0xD5 (+8/32768) is the
# conventional idle code (ITU-T G.711 table 1, even bits inverted).
SILENCE_BYTE_PCM16: Final = 0x00
SILENCE_BYTE_PCMU: Final = 0xFF
SILENCE_BYTE_PCMA: Final = 0xD5


class Encoding(enum.StrEnum):
    PCM16 = "pcm16"
    """Signed 16-bit little-endian linear PCM."""
    PCMU = "pcmu"
    """G.711 mu-law, one byte per sample."""
    PCMA = "pcma"
    """G.711 A-law, one byte per sample."""


_BYTES_PER_SAMPLE: Final[dict[Encoding, int]] = {
    Encoding.PCM16: 2,
    Encoding.PCMU: 1,
    Encoding.PCMA: 1,
}
_SILENCE_BYTE: Final[dict[Encoding, int]] = {
    Encoding.PCM16: SILENCE_BYTE_PCM16,
    Encoding.PCMU: SILENCE_BYTE_PCMU,
    Encoding.PCMA: SILENCE_BYTE_PCMA,
}


def silence_byte(encoding: Encoding) -> int:
    """The byte value whose repetition is silence in ``encoding``."""
    return _SILENCE_BYTE[encoding]


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """An interleaved raw audio stream format (no container, no header)."""

    encoding: Encoding
    rate_hz: int
    """Sample rate in samples per second per channel."""
    channels: int = 1

    def __post_init__(self) -> None:
        if self.rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {self.rate_hz}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")

    @property
    def bytes_per_sample(self) -> int:
        """Bytes per sample instant, all channels together."""
        return _BYTES_PER_SAMPLE[self.encoding] * self.channels

    @property
    def silence_byte(self) -> int:
        return _SILENCE_BYTE[self.encoding]

    def samples_per_frame(self, frame_ms: int = FRAME_MS) -> int:
        """Samples per channel in one frame; raises ValueError if not a whole number."""
        if frame_ms <= 0:
            raise ValueError(f"frame_ms must be positive, got {frame_ms}")
        samples, rest = divmod(self.rate_hz * frame_ms, 1000)
        if rest:
            raise ValueError(f"{frame_ms} ms at {self.rate_hz} Hz is not a whole number of samples")
        return samples

    def bytes_per_frame(self, frame_ms: int = FRAME_MS) -> int:
        return self.samples_per_frame(frame_ms) * self.bytes_per_sample

    def silence(self, frame_ms: int = FRAME_MS) -> bytes:
        """One frame of silence in this format."""
        return bytes([self.silence_byte]) * self.bytes_per_frame(frame_ms)

    def duration_ms(self, num_bytes: int) -> float:
        """Playing time of ``num_bytes`` of this format, in milliseconds."""
        return num_bytes * 1000 / (self.bytes_per_sample * self.rate_hz)


PCMU_8K: Final = AudioFormat(Encoding.PCMU, SAMPLE_RATE_G711_HZ)
PCMA_8K: Final = AudioFormat(Encoding.PCMA, SAMPLE_RATE_G711_HZ)
PCM16_8K: Final = AudioFormat(Encoding.PCM16, 8000)
PCM16_16K: Final = AudioFormat(Encoding.PCM16, 16000)
PCM16_24K: Final = AudioFormat(Encoding.PCM16, 24000)
