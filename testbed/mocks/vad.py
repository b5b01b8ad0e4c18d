"""A toy energy VAD for the mock servers: pure, synchronous, clocked by audio position only.

It imitates the timing contract of OpenAI's ``server_vad`` (providers.md section 1):
``speech_started.audio_start_ms`` is the onset minus ``prefix_padding_ms`` and
``speech_stopped.audio_end_ms`` is where ``silence_duration_ms`` of silence was complete, both
counted in milliseconds of all audio appended during the session. Wall time never matters, so
tests may push audio faster than real time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    """0..1 like OpenAI's; mapped linearly to an RMS level of -70 dBFS (0) .. -10 dBFS (1)."""
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    min_speech_ms: int = 20
    """Voiced audio needed before speech counts as started (mock-only knob)."""
    frame_ms: int = 10

    @property
    def threshold_rms(self) -> float:
        dbfs = -70.0 + 60.0 * self.threshold
        return float(32768.0 * 10.0 ** (dbfs / 20.0))


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int
    """Onset minus the prefix padding (not below 0)."""
    detected_ms: int
    """Audio position at which the start was detected."""


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int


VadEvent = SpeechStarted | SpeechStopped


class EnergyVad:
    """Frame-wise RMS detector with hangover; feed int16 samples, get start/stop events."""

    def __init__(self, config: VadConfig, rate_hz: int, offset_ms: int = 0) -> None:
        self.config = config
        self.rate_hz = rate_hz
        self._frame_len = rate_hz * config.frame_ms // 1000
        self._pending: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._position_ms = offset_ms
        self._in_speech = False
        self._voiced_ms = 0
        self._onset_ms = 0
        self._silence_ms = 0

    @property
    def position_ms(self) -> int:
        """Milliseconds of audio analysed so far (including ``offset_ms``)."""
        return self._position_ms

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def reset(self) -> None:
        """Forget any speech in progress (keeps the audio position)."""
        self._in_speech = False
        self._voiced_ms = 0
        self._silence_ms = 0

    def push(self, samples: npt.NDArray[np.int16]) -> list[VadEvent]:
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        n_frames = buf.size // self._frame_len
        used = n_frames * self._frame_len
        self._pending = buf[used:].copy()
        if n_frames == 0:
            return []
        frames = buf[:used].astype(np.float64).reshape(n_frames, self._frame_len)
        voiced = np.sqrt(np.mean(frames * frames, axis=1)) >= self.config.threshold_rms
        events: list[VadEvent] = []
        for is_voiced in voiced.tolist():
            event = self._step(bool(is_voiced))
            if event is not None:
                events.append(event)
        return events

    def _step(self, voiced: bool) -> VadEvent | None:
        cfg = self.config
        start_ms = self._position_ms
        self._position_ms += cfg.frame_ms
        if not self._in_speech:
            if not voiced:
                self._voiced_ms = 0
                return None
            if self._voiced_ms == 0:
                self._onset_ms = start_ms
            self._voiced_ms += cfg.frame_ms
            if self._voiced_ms < cfg.min_speech_ms:
                return None
            self._in_speech = True
            self._silence_ms = 0
            return SpeechStarted(
                audio_start_ms=max(0, self._onset_ms - cfg.prefix_padding_ms),
                detected_ms=self._position_ms,
            )
        if voiced:
            self._silence_ms = 0
            return None
        self._silence_ms += cfg.frame_ms
        if self._silence_ms < cfg.silence_duration_ms:
            return None
        self.reset()
        return SpeechStopped(audio_end_ms=self._position_ms)
