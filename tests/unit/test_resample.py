"""StreamResampler: lengths, chunking invariance, continuity, latency, flush and reset."""

import numpy as np
import numpy.typing as npt
import pytest

from sip4ai.audio.resample import Quality, StreamResampler


pytestmark = pytest.mark.unit

RATE_PAIRS = [(8000, 16000), (8000, 24000), (24000, 8000), (16000, 8000), (44100, 8000)]
PAIR_IDS = [f"{a // 1000}k-{b // 1000}k" for a, b in RATE_PAIRS]


def _sine(
    freq_hz: float, rate_hz: int, num_samples: int, amplitude: float
) -> npt.NDArray[np.int16]:
    t = np.arange(num_samples) / rate_hz
    return np.round(amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def _stream(
    resampler: StreamResampler, pcm: npt.NDArray[np.int16], sizes: list[int]
) -> npt.NDArray[np.int16]:
    parts = []
    start = 0
    for size in sizes:
        parts.append(resampler.process(pcm[start : start + size]))
        start += size
    parts.append(resampler.process(pcm[start:]))
    parts.append(resampler.flush())
    return np.concatenate(parts)


def _random_sizes(total: int, max_size: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(1, max_size + 1)))
    return sizes


def _sine_fit_residual(
    y: npt.NDArray[np.int16], freq_hz: float, rate_hz: int
) -> tuple[float, float]:
    """Fit a sine of known frequency, any phase; return (amplitude, max |residual|)."""
    t = np.arange(y.size) / rate_hz
    basis = np.stack([np.sin(2 * np.pi * freq_hz * t), np.cos(2 * np.pi * freq_hz * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
    residual = y - basis @ coef
    return float(np.hypot(coef[0], coef[1])), float(np.abs(residual).max())


@pytest.mark.parametrize("quality", ["VR", "HQ"])
@pytest.mark.parametrize(("in_rate_hz", "out_rate_hz"), RATE_PAIRS, ids=PAIR_IDS)
def test_small_random_chunks_give_the_same_samples_as_one_shot(
    in_rate_hz: int, out_rate_hz: int, quality: Quality
) -> None:
    pcm = _sine(440.0, in_rate_hz, in_rate_hz, 12000)
    one_shot = _stream(StreamResampler(in_rate_hz, out_rate_hz, quality=quality), pcm, [])
    chunked = _stream(
        StreamResampler(in_rate_hz, out_rate_hz, quality=quality),
        pcm,
        _random_sizes(pcm.size, 200, seed=in_rate_hz + out_rate_hz),
    )
    assert one_shot.size == out_rate_hz  # one second in, one second out after flush
    assert np.array_equal(chunked, one_shot)


@pytest.mark.parametrize(("in_rate_hz", "out_rate_hz"), RATE_PAIRS, ids=PAIR_IDS)
def test_sine_through_20ms_chunks_is_continuous(in_rate_hz: int, out_rate_hz: int) -> None:
    frame = in_rate_hz // 50
    pcm = _sine(1000.0, in_rate_hz, in_rate_hz * 2, 10000)
    out = _stream(StreamResampler(in_rate_hz, out_rate_hz), pcm, [frame] * 99)
    # Skip the filter's start-up and ending transients (50 ms each side).
    steady = out[out_rate_hz // 20 : -out_rate_hz // 20]
    amplitude, max_residual = _sine_fit_residual(steady, 1000.0, out_rate_hz)
    assert amplitude == pytest.approx(10000, rel=1e-3)
    # A click at any of the 99 chunk boundaries would stand out by hundreds of LSB.
    assert max_residual < 4.0


@pytest.mark.parametrize(
    ("in_rate_hz", "out_rate_hz", "held_samples"),
    [(8000, 16000, 480), (8000, 24000, 720), (24000, 8000, 200), (16000, 8000, 120)],
)
def test_vr_latency_is_constant_and_as_documented(
    in_rate_hz: int, out_rate_hz: int, held_samples: int
) -> None:
    resampler = StreamResampler(in_rate_hz, out_rate_hz)
    frame_in, frame_out = in_rate_hz // 50, out_rate_hz // 50
    pcm = _sine(300.0, in_rate_hz, frame_in * 100, 8000)
    sizes = [resampler.process(pcm[i : i + frame_in]).size for i in range(0, pcm.size, frame_in)]
    warmup = -(-held_samples // frame_out)  # chunks before the first full output frame
    assert sizes[warmup:] == [frame_out] * (100 - warmup)
    assert sum(sizes) == 100 * frame_out - held_samples
    assert resampler.held_out_samples == held_samples
    assert resampler.flush().size == held_samples


def test_output_length_is_exact_over_a_long_stream() -> None:
    resampler = StreamResampler(8000, 24000)
    frame = np.zeros(160, dtype=np.int16)
    total = sum(resampler.process(frame).size for _ in range(3000))  # 60 s
    total += resampler.flush().size
    assert total == 3000 * 480


def test_silence_stays_digital_silence() -> None:
    resampler = StreamResampler(24000, 8000)
    for _ in range(20):
        assert not resampler.process(np.zeros(480, dtype=np.int16)).any()
    assert not resampler.flush().any()


def test_reset_forgets_history_like_a_new_instance() -> None:
    used = StreamResampler(8000, 16000)
    used.process(_sine(1000.0, 8000, 1600, 20000))
    used.reset()
    assert used.held_out_samples == 0
    pcm = _sine(250.0, 8000, 8000, 5000)
    fresh = StreamResampler(8000, 16000)
    assert np.array_equal(_stream(used, pcm, [160] * 49), _stream(fresh, pcm, [160] * 49))


def test_reset_drops_held_output() -> None:
    resampler = StreamResampler(24000, 8000)
    resampler.process(_sine(1000.0, 24000, 2400, 20000))
    resampler.reset()
    assert resampler.flush().size == 0
    assert not resampler.process(np.zeros(480, dtype=np.int16)).any()


def test_flush_returns_the_tail_and_allows_a_new_stream() -> None:
    resampler = StreamResampler(8000, 16000)
    pcm = _sine(500.0, 8000, 1600, 8000)
    first = _stream(resampler, pcm, [160] * 9)
    assert resampler.held_out_samples == 0
    second = _stream(resampler, pcm, [160] * 9)  # would raise if flush left soxr finished
    assert first.size == second.size == 3200
    assert np.array_equal(first, second)


def test_full_scale_square_wave_clips_without_wrapping() -> None:
    square = np.where(np.arange(8000) % 80 < 40, 32767, -32768).astype(np.int16)
    out = _stream(StreamResampler(8000, 24000), square, [160] * 49)
    assert out.max() == 32767
    assert out.min() == -32768
    # Overshoot clipped at the rails: a wrapped sample would flip sign mid-plateau.
    plateau = out[(np.arange(out.size) % 240 > 40) & (np.arange(out.size) % 240 < 80)]
    assert np.all(plateau > 0)


def test_equal_rates_pass_through_unchanged() -> None:
    resampler = StreamResampler(8000, 8000)
    pcm = _sine(1000.0, 8000, 160, 1000)
    assert resampler.passthrough
    assert resampler.process(pcm) is pcm
    assert resampler.flush().size == 0


def test_rejects_bad_input() -> None:
    resampler = StreamResampler(8000, 16000)
    with pytest.raises(TypeError, match="int16"):
        resampler.process(np.zeros(160, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        resampler.process(np.zeros((160, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, 8000)
