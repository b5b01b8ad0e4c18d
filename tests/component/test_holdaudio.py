"""Hold audio: fetched from a local aiohttp server, cached, resampled; tone fallback; player."""

from __future__ import annotations

import asyncio
import io
import socket
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
from aiohttp import web

from sip4ai.holdaudio import (
    TONE_AMPLITUDE,
    HoldAudio,
    HoldAudioError,
    HoldClip,
    HoldPlayer,
    decode_wav,
    run_with_hold,
    soft_tone,
)
from tests.conftest import MS


pytestmark = pytest.mark.component


def sine(
    freq_hz: float, rate_hz: int, seconds: float, amplitude: int = 8000
) -> npt.NDArray[np.int16]:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    samples: npt.NDArray[np.int16] = np.rint(amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(
        np.int16
    )
    return samples


def wav_bytes(samples: npt.NDArray[np.int16], rate_hz: int, *, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(np.repeat(samples, channels).astype("<i2").tobytes())
    return buffer.getvalue()


def dominant_hz(pcm: bytes, rate_hz: int) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate_hz)[int(np.argmax(spectrum))])


@dataclass
class Files:
    base: str = ""
    hits: dict[str, int] = field(default_factory=dict)
    content: dict[str, bytes] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        if name not in self.content:
            raise web.HTTPNotFound()
        return web.Response(body=self.content[name], content_type="audio/wav")


@pytest.fixture
async def files() -> AsyncIterator[Files]:
    files = Files()
    app = web.Application()
    app.router.add_get("/{name}", files.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    files.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield files
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_wav_is_fetched_once_and_resampled_to_the_call_rate(
    files: Files, session: aiohttp.ClientSession
) -> None:
    files.content["hold.wav"] = wav_bytes(sine(440, 16000, 1.0), 16000)
    hold = HoldAudio(session)
    url = f"{files.base}/hold.wav"
    clip = await hold.clip(url, 8000)
    again = await hold.clip(url, 8000)
    wide = await hold.clip(url, 16000)
    assert files.hits == {"hold.wav": 1}
    assert hold.fetches == 1
    assert again is clip
    assert clip.source == "url" and clip.rate_hz == 8000
    assert abs(len(clip.pcm) - 8000 * 2) <= 2 * 8  # one second at 8 kHz, give or take a few
    assert dominant_hz(clip.pcm, 8000) == pytest.approx(440, abs=2)
    assert wide.rate_hz == 16000 and len(wide.pcm) == 32000

    player = HoldPlayer(clip)
    frames = [player.next_frame() for _ in range(60)]  # 1.2 s: wraps around once
    assert all(f is not None and len(f) == 320 for f in frames)


async def test_concurrent_first_uses_share_one_fetch(
    files: Files, session: aiohttp.ClientSession
) -> None:
    files.content["hold.wav"] = wav_bytes(sine(300, 8000, 0.5), 8000)
    hold = HoldAudio(session)
    clips = await asyncio.gather(*(hold.clip(f"{files.base}/hold.wav", 8000) for _ in range(5)))
    assert files.hits == {"hold.wav": 1}
    assert len({id(c) for c in clips}) == 1


async def test_404_falls_back_to_the_tone_and_is_not_refetched_at_once(
    files: Files, session: aiohttp.ClientSession
) -> None:
    now = [1000.0]
    hold = HoldAudio(session, retry_failed_after_s=60, clock=lambda: now[0])
    url = f"{files.base}/missing.wav"
    clip = await hold.clip(url, 8000)
    assert clip.source == "tone" and clip.rate_hz == 8000
    assert clip.pcm == soft_tone(8000).astype("<i2").tobytes()
    await hold.clip(url, 8000)
    assert files.hits == {"missing.wav": 1}
    now[0] += 61
    files.content["missing.wav"] = wav_bytes(sine(440, 8000, 0.2), 8000)
    assert (await hold.clip(url, 8000)).source == "url"
    assert files.hits == {"missing.wav": 2}


async def test_no_url_plays_the_soft_tone(session: aiohttp.ClientSession) -> None:
    hold = HoldAudio(session)
    clip = await hold.clip(None, 16000)
    assert clip.source == "tone" and clip.rate_hz == 16000
    samples = np.frombuffer(clip.pcm, dtype="<i2")
    assert samples.size == int(2.5 * 16000)
    assert 0.9 * TONE_AMPLITUDE < np.abs(samples).max() <= TONE_AMPLITUDE
    assert samples[0] == 0 and np.all(samples[int(0.5 * 16000) :] == 0)  # soft start, then quiet
    assert hold.fetches == 0


async def test_bad_and_oversized_files_fall_back(
    files: Files, session: aiohttp.ClientSession
) -> None:
    files.content["junk.wav"] = b"RIFF....not a wav"
    files.content["big.wav"] = wav_bytes(sine(440, 16000, 2.0), 16000)
    hold = HoldAudio(session, max_bytes=10_000)
    assert (await hold.clip(f"{files.base}/junk.wav", 8000)).source == "tone"
    assert (await hold.clip(f"{files.base}/big.wav", 8000)).source == "tone"


async def test_unreachable_server_falls_back(session: aiohttp.ClientSession) -> None:
    hold = HoldAudio(session, timeout_s=1.0)
    with socket.socket() as closed:  # bound but not listening: connection refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/hold.wav"
        assert (await hold.clip(url, 8000)).source == "tone"


async def test_disk_copy_is_used_when_a_later_fetch_fails(
    files: Files, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    files.content["hold.wav"] = wav_bytes(sine(440, 16000, 0.5), 16000)
    url = f"{files.base}/hold.wav"
    first = await HoldAudio(session, cache_dir=tmp_path / "hold").clip(url, 8000)
    assert first.source == "url"
    del files.content["hold.wav"]  # the server lost the file; sip4ai restarted
    second = await HoldAudio(session, cache_dir=tmp_path / "hold").clip(url, 8000)
    assert second.source == "disk"
    assert second.pcm == first.pcm


def test_decode_wav_mixes_channels_and_reads_other_widths() -> None:
    stereo = wav_bytes(sine(440, 22050, 0.1), 22050, channels=2)
    samples, rate = decode_wav(stereo)
    assert rate == 22050 and samples.size == 2205
    np.testing.assert_array_equal(samples, sine(440, 22050, 0.1))

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:  # 24-bit: 0x123456 -> top 16 bits 0x1234
        wav.setnchannels(1)
        wav.setsampwidth(3)
        wav.setframerate(8000)
        wav.writeframes(bytes([0x56, 0x34, 0x12, 0x00, 0x00, 0x80]))
    samples, _ = decode_wav(buffer.getvalue())
    assert samples.tolist() == [0x1234, -32768]

    with pytest.raises(HoldAudioError):
        decode_wav(b"")


def test_player_loops_seamlessly_and_stops_at_once() -> None:
    pcm = np.arange(250, dtype=np.int16)  # 1.5 frames at 8 kHz: every frame straddles the end
    clip = HoldClip(pcm.astype("<i2").tobytes(), 8000, "url")
    player = HoldPlayer(clip)
    stream = np.concatenate(
        [np.frombuffer(player.next_frame() or b"", dtype="<i2") for _ in range(5)]
    )
    np.testing.assert_array_equal(stream, np.resize(pcm, 800))
    player.stop()
    assert player.stopped
    assert player.next_frame() is None
    assert list(player) == []


async def test_fast_work_plays_nothing() -> None:
    played: list[HoldPlayer] = []

    async def work() -> str:
        return "done"

    async def clip() -> HoldClip:
        raise AssertionError("not needed")

    assert await run_with_hold(work(), clip=clip, play=played.append) == "done"
    assert played == []


async def test_slow_work_plays_hold_until_it_finishes() -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    players: list[HoldPlayer] = []
    tone = HoldClip(soft_tone(8000).astype("<i2").tobytes(), 8000, "tone")

    async def work() -> str:
        await release.wait()
        return "result"

    async def clip() -> HoldClip:
        return tone

    def play(player: HoldPlayer) -> None:
        players.append(player)
        started.set()

    task = asyncio.create_task(run_with_hold(work(), clip=clip, play=play, threshold_s=50 * MS))
    await asyncio.wait_for(started.wait(), 2000 * MS)
    (player,) = players
    assert player.next_frame() is not None
    release.set()
    assert await task == "result"
    assert player.stopped
    assert player.next_frame() is None


async def test_hold_stops_when_work_fails_or_is_cancelled() -> None:
    started = asyncio.Event()
    fail = asyncio.Event()
    players: list[HoldPlayer] = []
    tone = HoldClip(b"\0\0" * 160, 8000, "tone")

    async def failing() -> None:
        await fail.wait()
        raise RuntimeError("webhook exploded")

    async def clip() -> HoldClip:
        return tone

    def play(player: HoldPlayer) -> None:
        players.append(player)
        started.set()

    task = asyncio.create_task(run_with_hold(failing(), clip=clip, play=play, threshold_s=0))
    await asyncio.wait_for(started.wait(), 2000 * MS)
    fail.set()
    with pytest.raises(RuntimeError, match="exploded"):
        await task
    assert players[0].stopped

    started.clear()
    never = asyncio.Event()
    waiting = asyncio.create_task(run_with_hold(never.wait(), clip=clip, play=play, threshold_s=0))
    await asyncio.wait_for(started.wait(), 2000 * MS)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert players[1].stopped


async def test_a_failing_clip_lookup_means_no_hold() -> None:
    release = asyncio.Event()
    looked_up = asyncio.Event()
    played: list[HoldPlayer] = []

    async def work() -> int:
        await looked_up.wait()
        await release.wait()
        return 7

    async def clip() -> HoldClip:
        looked_up.set()
        raise HoldAudioError("boom")

    task = asyncio.create_task(run_with_hold(work(), clip=clip, play=played.append, threshold_s=0))
    await asyncio.wait_for(looked_up.wait(), 2000 * MS)
    release.set()
    assert await task == 7
    assert played == []
