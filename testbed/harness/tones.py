"""Test tones: generate G.711 tone files for SIPp, and measure which tone a PCM signal carries.

Generation writes raw headerless 8 kHz G.711, the only file format SIPp 3.6.1's ``rtp_stream``
plays (a WAV header would be sent as audio). Analysis works on PCM16 ``np.int16`` arrays such
as :meth:`testbed.harness.rtp.RtpStream.pcm` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from testbed.harness import g711


SAMPLE_RATE_HZ = 8000


def tone_pcm(
    freq_hz: float,
    duration_s: float,
    *,
    rate_hz: int = SAMPLE_RATE_HZ,
    amplitude: float = 0.3,
) -> npt.NDArray[np.int16]:
    """A sine of ``amplitude`` x full scale (0 < amplitude <= 1), starting at phase 0."""
    if not 0 < amplitude <= 1:
        raise ValueError(f"amplitude must be in (0, 1], got {amplitude}")
    n = round(duration_s * rate_hz)
    t = np.arange(n, dtype=np.float64) / rate_hz
    return np.round(amplitude * 32767 * np.sin(2 * math.pi * freq_hz * t)).astype(np.int16)


@dataclass(frozen=True)
class G711File:
    """A raw headerless 8 kHz G.711 file, as SIPp's rtp_stream plays it."""

    path: Path
    law: g711.Law = "ulaw"
    freq_hz: float | None = None
    """The tone's frequency if the file holds a single tone."""

    @property
    def payload_type(self) -> int:
        return g711.PAYLOAD_TYPE_PCMU if self.law == "ulaw" else g711.PAYLOAD_TYPE_PCMA

    def sipp_audio_key(self, loops: int = -1) -> str:
        """Value for ``-key audio``: ``FILE,LOOPS,PT`` (LOOPS -1 = repeat until the call ends)."""
        return f"{self.path},{loops},{self.payload_type}"


class ToneLibrary:
    """Tone files generated on first use into one directory and reused afterwards.

    The files are generated rather than committed: numpy writes 10 s of tone in about a
    millisecond, and any frequency, law or length can be asked for.
    """

    def __init__(self, directory: Path, duration_s: float = 10.0) -> None:
        self.directory = directory
        self.duration_s = duration_s

    def get(self, freq_hz: float, law: g711.Law = "ulaw") -> G711File:
        """The ``freq_hz`` tone in ``law``, ``duration_s`` long (played looped by SIPp)."""
        path = self.directory / f"tone{freq_hz:g}hz_{self.duration_s:g}s.{law}"
        if not path.exists():
            write_tone_file(path, freq_hz, self.duration_s, law)
        return G711File(path, law, freq_hz)


def write_tone_file(
    path: Path, freq_hz: float, duration_s: float, law: g711.Law = "ulaw", amplitude: float = 0.3
) -> Path:
    """Write a raw 8 kHz G.711 tone for SIPp ``rtp_stream`` (PT 0 for ulaw, 8 for alaw).

    Choose ``duration_s`` as a whole number of tone periods and 20 ms packets (e.g. whole
    seconds for 440/1000 Hz) so a looped file stays phase-continuous at the loop point.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(g711.encode(tone_pcm(freq_hz, duration_s, amplitude=amplitude), law))
    return path


def single_bin_power(
    pcm: npt.NDArray[np.int16], freq_hz: float, rate_hz: int = SAMPLE_RATE_HZ
) -> float:
    """Goertzel power of ``freq_hz``: |sum x[n] e^(-j 2 pi f n / rate)|^2, any (non-bin) frequency.

    Computed as one DFT projection in numpy, which gives the same value as the Goertzel recursion.
    """
    x = pcm.astype(np.float64)
    phase = 2 * math.pi * freq_hz / rate_hz * np.arange(len(x))
    re = float(np.dot(x, np.cos(phase)))
    im = float(np.dot(x, np.sin(phase)))
    return re * re + im * im


def tone_shares(
    pcm: npt.NDArray[np.int16], candidates_hz: tuple[float, ...], rate_hz: int = SAMPLE_RATE_HZ
) -> dict[float, float]:
    """Goertzel power of each candidate divided by the candidates' total (sums to 1, or all 0)."""
    powers = {f: single_bin_power(pcm, f, rate_hz) for f in candidates_hz}
    total = sum(powers.values())
    return {f: (p / total if total > 0 else 0.0) for f, p in powers.items()}


@dataclass(frozen=True)
class ToneAnalysis:
    """Spectral summary of a PCM16 signal."""

    dominant_hz: float
    """Frequency of the strongest spectral peak (Hann window, parabolic interpolation)."""
    band_energy_share: float
    """Share (0..1) of the signal energy within +/- band_hz of ``dominant_hz``; a clean G.711
    tone gives > 0.95, speech or noise much less."""
    rms_dbfs: float
    """RMS level in dB relative to full scale (32767); -inf for digital silence."""
    samples: int


def analyse_tone(
    pcm: npt.NDArray[np.int16], rate_hz: int = SAMPLE_RATE_HZ, band_hz: float = 25.0
) -> ToneAnalysis:
    """Find the dominant frequency and how much of the energy sits around it.

    Needs at least 256 samples (32 ms at 8 kHz); frequency resolution is rate_hz / len(pcm)
    before interpolation, so pass about a second of audio for +/- 1 Hz accuracy.
    """
    if len(pcm) < 256:
        raise ValueError(f"need at least 256 samples for tone analysis, got {len(pcm)}")
    x = pcm.astype(np.float64)
    rms = math.sqrt(float(np.mean(x * x)))
    rms_dbfs = 20 * math.log10(rms / 32767) if rms > 0 else -math.inf
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate_hz)
    peak = int(np.argmax(spectrum[1:])) + 1
    dominant_hz = float(freqs[peak])
    if 1 <= peak < len(spectrum) - 1:
        a, b, c = (math.sqrt(float(v)) for v in spectrum[peak - 1 : peak + 2])
        denom = a - 2 * b + c
        if denom != 0:
            dominant_hz += 0.5 * (a - c) / denom * float(freqs[1] - freqs[0])
    total = float(spectrum[1:].sum())
    in_band = float(spectrum[np.abs(freqs - dominant_hz) <= band_hz].sum())
    share = in_band / total if total > 0 else 0.0
    return ToneAnalysis(dominant_hz, share, rms_dbfs, len(pcm))
