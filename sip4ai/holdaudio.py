"""Hold audio while a function runs: a WAV from ``hold_audio_url`` or a built-in soft tone.

* ``HoldAudio.clip(url, rate_hz)`` returns PCM16 mono at the call's rate. A URL is fetched once
  (bounded size and time), decoded (8/16/24/32-bit PCM WAV, any rate, channels mixed down) and
  resampled off the loop, then kept in memory per URL and rate, and optionally on disk as the
  fallback for a later failed fetch (e.g. after a restart while the server is down). When there
  is no URL, or fetching/decoding fails, the soft tone is used; a failed URL is not fetched
  again for ``retry_failed_after_s``.
* ``HoldPlayer`` is pure: ``next_frame()`` yields 20 ms frames, looping seamlessly, until
  ``stop()``, after which it yields None at once.
* ``run_with_hold()`` runs a function call and, if it takes longer than the threshold (default
  500 ms), hands a player to the bridge; the player is stopped the moment the call returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
import wave
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeVar

import aiohttp
import numpy as np
import numpy.typing as npt

from sip4ai.audio.formats import FRAME_MS
from sip4ai.audio.resample import StreamResampler


__all__ = [
    "HOLD_THRESHOLD_S",
    "HoldAudio",
    "HoldAudioError",
    "HoldClip",
    "HoldPlayer",
    "decode_wav",
    "run_with_hold",
    "soft_tone",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

HOLD_THRESHOLD_S: Final = 0.5
MAX_FETCH_BYTES: Final = 5 * 1024 * 1024
FETCH_TIMEOUT_S: Final = 5.0
MAX_CLIP_S: Final = 120.0
RETRY_FAILED_AFTER_S: Final = 300.0

TONE_NOTES_HZ: Final = (523.25, 659.25)
"""C5 then E5: a soft two-note chime, clearly not a ringback or busy tone."""
TONE_NOTE_S: Final = 0.18
TONE_GAP_S: Final = 0.06
TONE_FADE_S: Final = 0.02
TONE_CYCLE_S: Final = 2.5
TONE_AMPLITUDE: Final = 1800
"""About -25 dBFS: audible, well below speech level."""


class HoldAudioError(Exception):
    """A hold audio URL could not be fetched or decoded."""


@dataclass(frozen=True, slots=True)
class HoldClip:
    pcm: bytes
    """PCM16 little-endian mono, at least one frame long."""
    rate_hz: int
    source: Literal["url", "disk", "tone"]


def decode_wav(data: bytes) -> tuple[npt.NDArray[np.int16], int]:
    """Mono int16 samples and rate of a PCM WAV file; raises HoldAudioError."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (EOFError, wave.Error) as exc:
        raise HoldAudioError(f"not a PCM WAV file: {exc}") from None
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.int32) - 128) << 8
    elif width in (2, 3, 4):
        usable = len(raw) - len(raw) % width
        as_bytes = np.frombuffer(raw[:usable], dtype=np.uint8).reshape(-1, width)
        # The two most significant bytes of each little-endian sample are its 16-bit value.
        samples = as_bytes[:, -2:].copy().view("<i2").reshape(-1).astype(np.int32)
    else:
        raise HoldAudioError(f"{width * 8}-bit WAV is not supported")
    if channels > 1:
        samples = samples[: samples.size - samples.size % channels]
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int32)
    if samples.size == 0 or rate <= 0:
        raise HoldAudioError("the WAV file has no audio")
    samples = samples[: int(MAX_CLIP_S * rate)]
    return np.clip(samples, -32768, 32767).astype(np.int16), rate


def _resample(pcm: npt.NDArray[np.int16], in_rate: int, out_rate: int) -> npt.NDArray[np.int16]:
    resampler = StreamResampler(in_rate, out_rate)
    if resampler.passthrough:
        return pcm
    return np.concatenate([resampler.process(pcm), resampler.flush()])


def _note(freq_hz: float, rate_hz: int) -> npt.NDArray[np.float64]:
    n = int(TONE_NOTE_S * rate_hz)
    t = np.arange(n) / rate_hz
    fade = int(TONE_FADE_S * rate_hz)
    envelope = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))  # raised cosine: no clicks
    envelope[:fade] = ramp
    envelope[n - fade :] = ramp[::-1]
    result: npt.NDArray[np.float64] = np.sin(2 * np.pi * freq_hz * t) * envelope
    return result


def soft_tone(rate_hz: int) -> npt.NDArray[np.int16]:
    """One cycle of the built-in hold tone: two soft notes, then quiet until the cycle ends."""
    cycle = np.zeros(int(TONE_CYCLE_S * rate_hz))
    start = 0
    for freq in TONE_NOTES_HZ:
        note = _note(freq, rate_hz)
        cycle[start : start + note.size] = note
        start += note.size + int(TONE_GAP_S * rate_hz)
    return np.rint(cycle * TONE_AMPLITUDE).astype(np.int16)


def _clip(
    pcm: npt.NDArray[np.int16], rate_hz: int, source: Literal["url", "disk", "tone"]
) -> HoldClip:
    frame = rate_hz * FRAME_MS // 1000
    if pcm.size < frame:
        pcm = np.concatenate([pcm, np.zeros(frame - pcm.size, dtype=np.int16)])
    return HoldClip(pcm.astype("<i2").tobytes(), rate_hz, source)


class HoldPlayer:
    """Loops a clip as 20 ms PCM16 frames until stopped. Pure: no clock, no I/O."""

    def __init__(self, clip: HoldClip, frame_ms: int = FRAME_MS) -> None:
        self.clip = clip
        self.frame_bytes = clip.rate_hz * frame_ms // 1000 * 2
        self._pos = 0
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        self._stopped = True

    def next_frame(self) -> bytes | None:
        """The next frame (wrapping from the clip's end to its start), or None once stopped."""
        if self._stopped:
            return None
        pcm, size = self.clip.pcm, len(self.clip.pcm)
        parts: list[bytes] = []
        wanted = self.frame_bytes
        while wanted:
            take = min(wanted, size - self._pos)
            parts.append(pcm[self._pos : self._pos + take])
            self._pos = (self._pos + take) % size
            wanted -= take
        return b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        while (frame := self.next_frame()) is not None:
            yield frame


class HoldAudio:
    """Per-process cache of hold clips. ``cache_dir``: keep fetched files there (optional)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        cache_dir: Path | None = None,
        max_bytes: int = MAX_FETCH_BYTES,
        timeout_s: float = FETCH_TIMEOUT_S,
        retry_failed_after_s: float = RETRY_FAILED_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._cache_dir = cache_dir
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._retry_failed_after_s = retry_failed_after_s
        self._clock = clock
        self._sources: dict[str, tuple[npt.NDArray[np.int16], int, Literal["url", "disk"]]] = {}
        self._clips: dict[tuple[str | None, int], HoldClip] = {}
        self._failed_at: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0
        """HTTP fetches made (successful or not)."""

    async def clip(self, url: str | None, rate_hz: int) -> HoldClip:
        """The clip for ``url`` at ``rate_hz``, or the soft tone. Never raises (but cancels)."""
        if url is not None:
            clip = self._clips.get((url, rate_hz))
            if clip is not None:
                return clip
            async with self._locks.setdefault(url, asyncio.Lock()):
                # One fetch and one conversion per URL; concurrent first uses wait for it.
                clip = self._clips.get((url, rate_hz)) or await self._convert(url, rate_hz)
            if clip is not None:
                return clip
        tone = self._clips.get((None, rate_hz))
        if tone is None:
            tone = self._clips[(None, rate_hz)] = _clip(soft_tone(rate_hz), rate_hz, "tone")
        return tone

    async def _convert(self, url: str, rate_hz: int) -> HoldClip | None:
        source = await self._source(url)
        if source is None:
            return None
        pcm, src_rate, origin = source
        resampled = await asyncio.to_thread(_resample, pcm, src_rate, rate_hz)
        clip = self._clips[(url, rate_hz)] = _clip(resampled, rate_hz, origin)
        return clip

    async def _source(
        self, url: str
    ) -> tuple[npt.NDArray[np.int16], int, Literal["url", "disk"]] | None:
        """The decoded file at its own rate (fetched, or from disk); None: use the tone."""
        if url in self._sources:
            return self._sources[url]
        failed_at = self._failed_at.get(url)
        if failed_at is not None and self._clock() - failed_at < self._retry_failed_after_s:
            return None
        try:
            data = await self._fetch(url)
            pcm, rate = await asyncio.to_thread(decode_wav, data)
            origin: Literal["url", "disk"] = "url"
            await self._store(url, data)
        except HoldAudioError as exc:
            logger.warning("! hold audio %s: %s", url, exc)
            disk = await self._load(url)
            if disk is None:
                self._failed_at[url] = self._clock()
                return None
            pcm, rate = disk
            origin = "disk"
        self._failed_at.pop(url, None)
        self._sources[url] = (pcm, rate, origin)
        logger.info("= hold audio %s: %.1f s at %d Hz (%s)", url, pcm.size / rate, rate, origin)
        return self._sources[url]

    async def _fetch(self, url: str) -> bytes:
        self.fetches += 1
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        data = bytearray()
        try:
            async with self._session.get(url, timeout=timeout) as response:
                if response.status != 200:
                    raise HoldAudioError(f"HTTP {response.status}")
                if (response.content_length or 0) > self._max_bytes:
                    raise HoldAudioError(f"larger than {self._max_bytes} bytes")
                async for chunk in response.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > self._max_bytes:
                        raise HoldAudioError(f"larger than {self._max_bytes} bytes")
        except TimeoutError:
            raise HoldAudioError(f"no answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise HoldAudioError(f"fetch failed: {exc}") from None
        return bytes(data)

    def _path(self, url: str) -> Path | None:
        if self._cache_dir is None:
            return None
        return self._cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}.wav"

    async def _store(self, url: str, data: bytes) -> None:
        path = self._path(url)
        if path is None:
            return

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            logger.warning("! hold audio: cannot cache %s on disk: %s", url, exc)

    async def _load(self, url: str) -> tuple[npt.NDArray[np.int16], int] | None:
        path = self._path(url)
        if path is None:
            return None

        def read() -> tuple[npt.NDArray[np.int16], int] | None:
            try:
                return decode_wav(path.read_bytes())
            except (OSError, HoldAudioError):
                return None

        return await asyncio.to_thread(read)


async def run_with_hold(
    work: Awaitable[T],
    *,
    clip: Callable[[], Awaitable[HoldClip]],
    play: Callable[[HoldPlayer], None],
    threshold_s: float = HOLD_THRESHOLD_S,
) -> T:
    """Await ``work``; if it runs longer than ``threshold_s``, get the clip and ``play`` a
    HoldPlayer, which is stopped as soon as ``work`` finishes (or fails, or is cancelled).

    ``play`` is called at most once, with a fresh player; the bridge pulls its frames on its
    20 ms tick while the player is not stopped. The clip lookup races the work: if the work
    finishes first, the lookup is cancelled and nothing plays. A failing lookup means no hold.
    """
    task = asyncio.ensure_future(work)
    lookup: asyncio.Task[HoldClip] | None = None
    player: HoldPlayer | None = None
    try:
        await asyncio.wait({task}, timeout=threshold_s)
        if not task.done():
            lookup = asyncio.ensure_future(clip())
            await asyncio.wait({task, lookup}, return_when=asyncio.FIRST_COMPLETED)
            looked_up = lookup.done() and not lookup.cancelled()
            if looked_up and lookup.exception() is not None:
                logger.warning("! hold audio unavailable", exc_info=lookup.exception())
            elif looked_up and not task.done():
                player = HoldPlayer(lookup.result())
                play(player)
            await asyncio.wait({task})
        return task.result()
    finally:
        if player is not None:
            player.stop()
        for pending in (lookup, task):
            if pending is None:
                continue
            if not pending.done():
                pending.cancel()
                await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # mark retrieved: raised above already, or not worth a log
