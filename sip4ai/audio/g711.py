"""ITU-T G.711 mu-law and A-law codecs on 16-bit linear PCM, by table lookup.

Tables are derived once at import from the segment/step structure of G.711 (11/88) tables 1
(A-law) and 2 (mu-law). The codec itself is defined on 13-bit (A-law) and 14-bit (mu-law)
linear samples; a 16-bit sample is reduced to that range the way the ITU-T reference code
(G.191 STL ``g711.c``) does it: one's complement for negative values, then an arithmetic shift.
With that convention ``x`` and ``-x - 1`` encode to codes that differ only in the sign bit, and
every input lies in the decision interval (a half-open interval, lower decision value included)
whose decoder output is its midpoint.

All functions are stateless and thread-safe. PCM16 byte input is little-endian.
"""

from typing import Final, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt


BytesLike: TypeAlias = bytes | bytearray | memoryview
PcmInput: TypeAlias = npt.NDArray[np.int16] | BytesLike
_T = TypeVar("_T", bound=np.generic)

_ALL_CODES: Final = np.arange(256, dtype=np.int32)


def _all_pcm16() -> npt.NDArray[np.int32]:
    # Every int16 value in the order of its 16-bit pattern: encode tables are indexed by
    # ``pcm.view(np.uint16)``, so no sign handling is needed at lookup time.
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    # Transmitted bits are inverted (G.711 table 2 note): after inversion bit 7 is the
    # sign (1 = negative), bits 6..4 the segment s, bits 3..0 the step m.
    u = ~_ALL_CODES & 0xFF
    segment = (u >> 4) & 0x7
    step = u & 0xF
    # Decoder output in 14-bit units: ((2m + 33) << s) - 33, i.e. 0, 2, ..., 30 in segment 0,
    # then 33, 37, ... up to 8031. Times 4 for 16-bit.
    magnitude = 4 * (((2 * step + 33) << segment) - 33)
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    x = _all_pcm16()
    negative = x < 0
    magnitude = np.where(negative, ~x, x) >> 2  # 14-bit magnitude, 0..8191
    # Adding the bias 33 makes every segment start at a power of two: segment s holds biased
    # magnitudes [32 << s, 64 << s). 8159 is the overload point; clip to the top code.
    biased: npt.NDArray[np.int32] = np.minimum(magnitude + 33, 0x1FFF)
    segment_starts = np.array([32, 64, 128, 256, 512, 1024, 2048, 4096])
    segment = np.searchsorted(segment_starts, biased, side="right") - 1
    step = (biased >> (segment + 1)) & 0xF
    code = (negative.astype(np.int32) << 7) | (segment << 4) | step
    return (~code & 0xFF).astype(np.uint8)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    # Even bits are inverted on the line (G.711 table 1 note); bit 7 set = positive.
    v = _ALL_CODES ^ 0x55
    segment = (v >> 4) & 0x7
    step = v & 0xF
    # Decoder output in 13-bit units: 2m + 1 in segment 0, (2m + 33) << (s - 1) above.
    # Times 8 for 16-bit (8 ... 32256).
    magnitude = 8 * np.where(
        segment == 0, 2 * step + 1, (2 * step + 33) << np.maximum(segment - 1, 0)
    )
    return np.where(_ALL_CODES & 0x80, magnitude, -magnitude).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    x = _all_pcm16()
    negative = x < 0
    # 13-bit magnitude halved: segments 0 and 1 both have step 2, so one unit here is one
    # step of segment 0. Range 0..2047.
    magnitude = np.where(negative, ~x, x) >> 4
    segment_starts = np.array([0, 16, 32, 64, 128, 256, 512, 1024])
    segment = np.searchsorted(segment_starts, magnitude, side="right") - 1
    step = (magnitude >> np.maximum(segment - 1, 0)) & 0xF
    code = ((~negative).astype(np.int32) << 7) | (segment << 4) | step
    return (code ^ 0x55).astype(np.uint8)


def _read_only(table: npt.NDArray[_T]) -> npt.NDArray[_T]:
    table.flags.writeable = False
    return table


_ULAW_DECODE: Final = _read_only(_build_ulaw_decode())
_ULAW_ENCODE: Final = _read_only(_build_ulaw_encode())
_ALAW_DECODE: Final = _read_only(_build_alaw_decode())
_ALAW_ENCODE: Final = _read_only(_build_alaw_encode())


def _pcm16_bits(pcm: PcmInput) -> npt.NDArray[np.uint16]:
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise TypeError(f"PCM array must be int16, got {pcm.dtype}")
        return pcm.view(np.uint16)
    raw = np.frombuffer(pcm, dtype=np.uint8)
    if raw.size % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {raw.size}")
    return raw.view("<u2")


def ulaw_decode(data: BytesLike) -> npt.NDArray[np.int16]:
    """mu-law bytes -> new int16 array, one sample per byte."""
    return _ULAW_DECODE.take(np.frombuffer(data, dtype=np.uint8))


def ulaw_encode(pcm: PcmInput) -> bytes:
    """int16 samples (array, or little-endian s16 bytes) -> mu-law bytes, one byte per sample."""
    return _ULAW_ENCODE.take(_pcm16_bits(pcm)).tobytes()


def alaw_decode(data: BytesLike) -> npt.NDArray[np.int16]:
    """A-law bytes -> new int16 array, one sample per byte."""
    return _ALAW_DECODE.take(np.frombuffer(data, dtype=np.uint8))


def alaw_encode(pcm: PcmInput) -> bytes:
    """int16 samples (array, or little-endian s16 bytes) -> A-law bytes, one byte per sample."""
    return _ALAW_ENCODE.take(_pcm16_bits(pcm)).tobytes()
