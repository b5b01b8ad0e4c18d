"""Per-frame CPU cost of the audio hot path, and the resampler's added latency.

Run: ``.venv/bin/python -m bench.audio_hotpath``. Prints a table and writes
``bench/results/audio_hotpath.json``. One "frame" is 20 ms of audio. Costs are the median
(and minimum) over several timed runs of a tight loop, in microseconds per frame.
"""

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from sip4ai.audio.chunker import FrameChunker
from sip4ai.audio.formats import PCMU_8K, Encoding
from sip4ai.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from sip4ai.audio.playout import PlayoutBuffer
from sip4ai.audio.resample import Quality, StreamResampler


RESULTS_PATH = Path(__file__).resolve().parent / "results" / "audio_hotpath.json"
REPEATS = 7


def _time_us(
    fn: Callable[[], object], iterations: int, frames_per_call: int = 1
) -> dict[str, float]:
    for _ in range(min(iterations, 200)):
        fn()
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            fn()
        runs.append((time.perf_counter_ns() - start) / iterations / frames_per_call / 1000)
    return {"median_us": round(statistics.median(runs), 3), "min_us": round(min(runs), 3)}


def _speech_like(rate_hz: int, num_samples: int) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(1)
    t = np.arange(num_samples) / rate_hz
    tone = 6000 * np.sin(2 * np.pi * 220 * t) + 3000 * np.sin(2 * np.pi * 1700 * t)
    noisy: npt.NDArray[np.float64] = np.clip(tone + rng.normal(0, 800, num_samples), -32768, 32767)
    return noisy.astype(np.int16)


def _resample_case(in_rate_hz: int, out_rate_hz: int, quality: Quality) -> Callable[[], object]:
    resampler = StreamResampler(in_rate_hz, out_rate_hz, quality=quality)
    frame = _speech_like(in_rate_hz, in_rate_hz // 50)
    return lambda: resampler.process(frame)


def _chunker_burst_case() -> Callable[[], object]:
    chunker = FrameChunker(160, encoding=Encoding.PCMU)
    burst = ulaw_encode(_speech_like(8000, 8000))  # one second as a provider delivers it
    return lambda: chunker.push(burst)


def _chunker_frame_case(frame: bytes) -> Callable[[], object]:
    chunker = FrameChunker(len(frame), encoding=Encoding.PCMU)
    return lambda: chunker.push(frame)


def _playout_case() -> Callable[[], object]:
    buffer = PlayoutBuffer(PCMU_8K)
    frames = [bytes([i]) * 160 for i in range(50)]
    push, pop = buffer.push, buffer.pop

    def push_then_pop_50() -> None:
        for frame in frames:
            push(frame)
        for _ in frames:
            pop()

    return push_then_pop_50


def _downlink_case() -> Callable[[], object]:
    """24 kHz PCM16 from the provider -> 8 kHz mu-law frames -> playout -> one pop."""
    resampler = StreamResampler(24000, 8000)
    chunker = FrameChunker(160, encoding=Encoding.PCMU)
    buffer = PlayoutBuffer(PCMU_8K)
    chunk = _speech_like(24000, 480).tobytes()

    def step() -> None:
        pcm = resampler.process(np.frombuffer(chunk, dtype="<i2").astype(np.int16, copy=False))
        for frame in chunker.push(ulaw_encode(pcm)):
            buffer.push(frame)
        buffer.pop()

    return step


def _uplink_case() -> Callable[[], object]:
    """8 kHz mu-law from SIP -> 16 kHz PCM16 bytes for the provider."""
    resampler = StreamResampler(8000, 16000)
    frame = ulaw_encode(_speech_like(8000, 160))
    return lambda: resampler.process(ulaw_decode(frame)).tobytes()


def _resampler_hold_ms(in_rate_hz: int, out_rate_hz: int, quality: Quality) -> dict[str, float]:
    resampler = StreamResampler(in_rate_hz, out_rate_hz, quality=quality)
    frame = _speech_like(in_rate_hz, in_rate_hz // 50)
    holds = []
    for i in range(250):
        resampler.process(frame)
        if i >= 10:
            holds.append(resampler.held_out_samples * 1000 / out_rate_hz)
    return {
        "min_ms": round(min(holds), 2),
        "mean_ms": round(statistics.fmean(holds), 2),
        "max_ms": round(max(holds), 2),
    }


def run() -> dict[str, Any]:
    pcm_8k = _speech_like(8000, 160)
    ulaw_frame = ulaw_encode(pcm_8k)
    alaw_frame = alaw_encode(pcm_8k)
    pcm_8k_bytes = pcm_8k.tobytes()
    cases: dict[str, tuple[Callable[[], object], int, int]] = {
        "ulaw_decode_160": (lambda: ulaw_decode(ulaw_frame), 20000, 1),
        "ulaw_encode_160_ndarray": (lambda: ulaw_encode(pcm_8k), 20000, 1),
        "ulaw_encode_160_bytes": (lambda: ulaw_encode(pcm_8k_bytes), 20000, 1),
        "alaw_decode_160": (lambda: alaw_decode(alaw_frame), 20000, 1),
        "alaw_encode_160_ndarray": (lambda: alaw_encode(pcm_8k), 20000, 1),
        "resample_8k_to_24k_VR": (_resample_case(8000, 24000, "VR"), 5000, 1),
        "resample_24k_to_8k_VR": (_resample_case(24000, 8000, "VR"), 5000, 1),
        "resample_8k_to_16k_VR": (_resample_case(8000, 16000, "VR"), 5000, 1),
        "resample_16k_to_8k_VR": (_resample_case(16000, 8000, "VR"), 5000, 1),
        "resample_8k_to_24k_HQ": (_resample_case(8000, 24000, "HQ"), 5000, 1),
        "resample_24k_to_8k_HQ": (_resample_case(24000, 8000, "HQ"), 5000, 1),
        "resampler_reset_VR": (StreamResampler(24000, 8000).reset, 20000, 1),
        "chunker_push_1s_burst": (_chunker_burst_case(), 500, 50),
        "chunker_push_exact_frame": (_chunker_frame_case(ulaw_frame), 20000, 1),
        "playout_push_plus_pop": (_playout_case(), 500, 50),
        "playout_pop_empty": (PlayoutBuffer(PCMU_8K).pop, 20000, 1),
        "downlink_24k_pcm16_to_ulaw_playout": (_downlink_case(), 5000, 1),
        "uplink_ulaw_to_16k_pcm16": (_uplink_case(), 5000, 1),
    }
    costs = {name: _time_us(fn, n, per) for name, (fn, n, per) in cases.items()}
    holds = {
        f"{a // 1000}k_to_{b // 1000}k_{q}": _resampler_hold_ms(a, b, q)
        for q in ("VR", "LQ", "HQ")
        for a, b in ((8000, 16000), (8000, 24000), (24000, 8000), (16000, 8000))
    }
    return {
        "unit": "microseconds per 20 ms frame",
        "costs": costs,
        "resampler_hold_ms": holds,
        "environment": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "soxr": soxr.__version__,
            "libsoxr": soxr.__libsoxr_version__,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
    }


def main() -> None:
    results = run()
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = RESULTS_PATH.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(results, indent=2) + "\n")
    tmp_path.replace(RESULTS_PATH)
    print(f"{'case':40} {'median us':>10} {'min us':>10}")
    for name, cost in results["costs"].items():
        print(f"{name:40} {cost['median_us']:10.2f} {cost['min_us']:10.2f}")
    print(f"\n{'resampler hold (added latency)':40} {'min ms':>10} {'mean ms':>10} {'max ms':>10}")
    for name, hold in results["resampler_hold_ms"].items():
        print(f"{name:40} {hold['min_ms']:10.2f} {hold['mean_ms']:10.2f} {hold['max_ms']:10.2f}")
    print(f"\nwrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
