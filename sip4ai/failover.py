"""What keeps a call going when its AI provider fails: the next provider, then a recording.

A call starts on its provider. If that provider cannot be reached, or drops in a way it cannot
resume from, the bridge moves the call to the next entry of ``fallback_providers`` (each told
what was said so far), and when none is left it plays the *last resort*: the configured
``fallback_audio_file`` or the bundled apology, then hangs up (or loops the file, like
AUDIO_FILE mode).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sip4ai.audiofile import AudioClip, read_wav
from sip4ai.providers.base import Closed, ProviderSession


APOLOGY_TEXT = (
    "We are sorry. The assistant is not available right now. Please call again later. Goodbye."
)
"""What the bundled apology says (it goes into the transcript when it is played)."""
FAILED_REASON = "provider_failed"


@dataclass(frozen=True, slots=True)
class ProviderOption:
    """A provider a call can move to, and how to start its session for a call in progress."""

    name: str
    start: Callable[[], ProviderSession]


@dataclass(frozen=True, slots=True)
class LastResort:
    """Audio played when no provider is left."""

    name: str
    """``audio_file`` or ``apology`` (call records and metrics say which)."""
    clip: AudioClip
    loop: bool
    text: str | None = None
    """What the audio says, for the transcript (None for a user's file)."""


def apology() -> LastResort:
    resource = importlib.resources.files("sip4ai.assets").joinpath("apology.wav")
    with importlib.resources.as_file(resource) as path:
        pcm, rate = read_wav(path, field="apology")
    return LastResort("apology", AudioClip(pcm, rate), loop=False, text=APOLOGY_TEXT)


def audio_file(path: Path, *, loop: bool) -> LastResort:
    pcm, rate = read_wav(path, field="fallback_audio_file")
    return LastResort("audio_file", AudioClip(pcm, rate), loop=loop)


def failed(closed: Closed, *, was_ready: bool) -> bool:
    """A close that should move the call on, not end it: the provider never took the call,
    or it dropped in a way a new session could continue (a clean end is not a failure)."""
    return closed.retryable or not was_ready


class ClipPlayer:
    """Hands out a LastResort's frames at the call's rate, once or in a loop."""

    def __init__(self, resort: LastResort, rate_hz: int) -> None:
        self._frames = resort.clip.frames(rate_hz)
        self._loop = resort.loop
        self._index = 0

    @property
    def finished(self) -> bool:
        return not self._loop and self._index >= len(self._frames)

    def next_frame(self) -> bytes | None:
        if self._index >= len(self._frames):
            if not self._loop or not self._frames:
                return None
            self._index = 0
        frame = self._frames[self._index]
        self._index += 1
        return frame
