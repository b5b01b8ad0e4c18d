"""Streaming sample-rate conversion for one direction of one call (libsoxr via python-soxr).

Measured with soxr 1.1.0 (libsoxr 0.1.3), 20 ms input chunks, float32 processing. "Hold" is the
output the resampler still owes for input already given (``held_out_samples``:
``in_total * out_rate / in_rate - out_total``). It is the latency the resampler adds; apart from
it the output is time-aligned with the input (VR: within 0.25 ms).

============  ==================================  ==================================  =========
quality       8k->16k / 8k->24k hold              24k->8k / 16k->8k hold              3.4 kHz
============  ==================================  ==================================  =========
VR (default)  480 / 720 out samples (30 / 30 ms)  200 / 120 out samples (25 / 15 ms)  0 dB
LQ            3.8-61 / 5-40 ms, mean 32 / 23      5-40 / 3.8-61 ms, mean 23 / 32      -7.8 dB
HQ            12-115 / 12-73 ms, mean 64 / 43     12-73 / 12-115 ms, mean 43 / 64     0 dB
============  ==================================  ==================================  =========

VR holds are constant: after the first one or two chunks every 20 ms in gives exactly 20 ms
out. The fixed-rate recipes (LQ/MQ/HQ; MQ measures like HQ) filter in large FFT blocks, so
with 20 ms input they emit nothing for several chunks and then a burst. VR is libsoxr's
variable-rate engine (python-soxr ``vr=True``, labelled experimental there; the ratio is never
changed here): it filters continuously, aliases 5-7 kHz tones into 8 kHz output at < -100 dB,
and costs about 3-5x the CPU of HQ (10-30 us per 20 ms frame, see ``bench/audio_hotpath.py``).
QQ (cubic, no anti-alias filter) passes a 5 kHz tone unattenuated into 8 kHz output and is not
offered.
"""

from typing import Final, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import soxr


Quality: TypeAlias = Literal["VR", "LQ", "MQ", "HQ"]

_INT16_MIN: Final = np.float32(-32768.0)
_INT16_MAX: Final = np.float32(32767.0)
_EMPTY_F32: Final = np.zeros(0, dtype=np.float32)


class StreamResampler:
    """Stateful mono int16 resampler; one instance per direction per call.

    Keeps filter history across ``process`` calls, so chunk boundaries are inaudible and the
    output does not depend on how the input was chunked. When the rates are equal it is a
    pass-through that returns its input array unchanged.

    Processing is in float32 and the output is rounded and clipped to int16 here, so digital
    silence stays digital silence (soxr's own int16 path adds TPDF dither).
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int, *, quality: Quality = "VR") -> None:
        if in_rate_hz <= 0 or out_rate_hz <= 0:
            raise ValueError(f"rates must be positive, got {in_rate_hz} -> {out_rate_hz}")
        self.in_rate_hz: Final = in_rate_hz
        self.out_rate_hz: Final = out_rate_hz
        self.quality: Final = quality
        self._stream: soxr.ResampleStream | None = None
        if in_rate_hz != out_rate_hz:
            variable_rate = quality == "VR"
            self._stream = soxr.ResampleStream(
                in_rate_hz,
                out_rate_hz,
                1,
                dtype="float32",
                quality="HQ" if variable_rate else quality,
                vr=variable_rate,
            )
        self._in_samples = 0
        self._out_samples = 0

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    @property
    def held_out_samples(self) -> float:
        """Output samples owed for input already processed (the added latency, in samples)."""
        return self._in_samples * self.out_rate_hz / self.in_rate_hz - self._out_samples

    def process(self, pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """Resample the next chunk of the stream; any length, the output may be empty."""
        if pcm.dtype != np.int16:
            raise TypeError(f"PCM array must be int16, got {pcm.dtype}")
        if pcm.ndim != 1:
            raise ValueError(f"PCM array must be 1-D (mono), got shape {pcm.shape}")
        if self._stream is None:
            return pcm
        out = self._stream.resample_chunk(pcm.astype(np.float32))
        self._in_samples += pcm.size
        self._out_samples += out.size
        return _to_int16(out)

    def flush(self) -> npt.NDArray[np.int16]:
        """End of stream: return the held tail, then start afresh as after ``reset()``.

        Call at the end of a contiguous stretch of audio (e.g. a provider reply has been fully
        received) so its last ~25 ms are not left inside the filter.
        """
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out = self._stream.resample_chunk(_EMPTY_F32, last=True)
        self.reset()
        return _to_int16(out)

    def reset(self) -> None:
        """Drop all history and held output (barge-in, provider reconnect). Costs < 1 us for VR.

        Never call this on a timer: a reset mid-stream makes an audible discontinuity.
        """
        if self._stream is not None:
            self._stream.clear()
        self._in_samples = 0
        self._out_samples = 0


def _to_int16(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    rounded = np.rint(samples)
    np.minimum(rounded, _INT16_MAX, out=rounded)
    np.maximum(rounded, _INT16_MIN, out=rounded)
    return rounded.astype(np.int16)
