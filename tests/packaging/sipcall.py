"""One real call for the packaging tests: SIPp calls a registered sip4ai through Kamailio while
tcpdump records what sip4ai sends back; sip4ai runs in AUDIO_FILE mode with a tone WAV."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from testbed.harness import scenario
from testbed.harness.capture import CaptureFactory
from testbed.harness.ports import free_port
from testbed.harness.rtp import RtpStream
from testbed.harness.sipp import SippFactory, SippOptions, SippResult
from testbed.harness.tones import ToneAnalysis, ToneLibrary, analyse_tone


AUDIO_FILE_HZ = 1000.0
CALLER_HZ = 440.0


def write_tone_wav(path: Path, freq_hz: float = AUDIO_FILE_HZ, duration_s: float = 5.0) -> bytes:
    """A mono 8 kHz 16-bit WAV of one tone (what sip4ai plays in AUDIO_FILE mode)."""
    return scenario.write_tone_wav(path, freq_hz, duration_s, rate_hz=8000).read_bytes()


def metric_value(metrics: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (nan if none)."""
    values = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return sum(values) if values else math.nan


@dataclass(frozen=True)
class CallResult:
    sipp: SippResult
    to_caller: list[RtpStream]
    """RTP streams sip4ai sent to the caller's media port (one expected)."""

    def tone(self) -> ToneAnalysis:
        (stream,) = self.to_caller
        return analyse_tone(stream.pcm())

    def describe(self) -> str:
        return f"{self.sipp.describe()}\nRTP to caller: {[str(s) for s in self.to_caller]}"


def call(run_dir: Path, proxy: str, user: str = "aibot", hold_ms: int = 3000) -> CallResult:
    """SIPp (uac_invite_rtp, 440 Hz) calls ``user`` via ``proxy`` and hangs up after
    ``hold_ms``; returns SIPp's result and the RTP that came back."""
    tones = ToneLibrary(run_dir / "media")
    sipp = SippFactory(run_dir)
    captures = CaptureFactory(run_dir)
    media_port = free_port(tcp=False, span=4)
    try:
        capture = captures.start([media_port], name="caller-media")
        result = sipp.run(
            SippOptions(
                "uac_invite_rtp",
                remote=proxy,
                service=user,
                media_port=media_port,
                call_duration_ms=hold_ms,
                audio=tones.get(CALLER_HZ),
                timeout_s=20.0,
            )
        )
        captured = capture.stop()
    finally:
        sipp.close()
        captures.close()
    streams = [s for s in captured.rtp_streams() if s.key.dst_port == media_port]
    return CallResult(result, streams)


def assert_call_carried_the_audio_file(result: CallResult) -> None:
    assert result.sipp.ok, result.describe()
    assert len(result.to_caller) == 1, result.describe()
    tone = result.tone()
    assert abs(tone.dominant_hz - AUDIO_FILE_HZ) < 5, tone
    assert tone.band_energy_share > 0.9, tone
    assert len(result.to_caller[0].audio_packets()) >= 100, result.describe()  # >= 2 s
