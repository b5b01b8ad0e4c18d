"""What the load kit plays: the far party's talk pattern, the mock's script, the AUDIO_FILE WAV.

The talk pattern is one 10 s loop (SIPp repeats it until the call ends). Against the OpenAI
mock's server VAD (silence_duration_ms 500) and its scripted replies it gives, per loop:

* 0-2 s silence: the greeting (first loop) or the end of the last reply plays;
* 2-3 s speech: a user turn; 0.5 s of silence ends it (the mock's VAD), 0.3 s later the mock
  starts streaming a reply of 2.5-3.2 s at 1.5x real time, so it plays from about 3.85 s;
* 4.8-5.8 s speech: starts about 1 s into that reply, while the mock is still streaming it and
  sip4ai still playing it, so it is a barge-in (the mock cancels with ``turn_detected``, sip4ai
  clears its playout and keeps only the heard part in the transcript); it is a user turn too;
* 5.8-10 s silence: the reply to the barge-in plays out in full (it ends before 10 s).

In the first loop the greeting (playing from the answer on) is cut by the 2 s speech as well.

So every 10 s of call: two turns (two turn-latency samples) and one barge-in.
"""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from testbed.harness import g711
from testbed.harness.tones import G711File


RATE_HZ = 8000
LOOP_S = 10.0
SPEECH_SPANS_S = ((2.0, 3.0), (4.8, 5.8))
"""(start, end) of each stretch of speech inside the loop; the second one is the barge-in."""
TURNS_PER_LOOP = 2
BARGE_INS_PER_LOOP = 1

MOCK_SPEED = 1.5
"""The mock streams reply audio 1.5x faster than real time, in 40 ms deltas after 300 ms of
"thinking": like a real realtime API, which runs ahead of playback but not all at once."""
MOCK_THINK_MS = 300
REPLIES = (
    ("Sure, I can help you with that booking today.", 2800),
    ("Let me check the calendar for the next free slot.", 3000),
    ("We have a table at seven thirty, does that work?", 2600),
    ("Great, I have noted that down for you now.", 2500),
    ("Is there anything else I can do for you today?", 3200),
)
GREETING = "Hello, thanks for calling the load test line."


def speech_like(seconds: float, rate_hz: int = RATE_HZ, amplitude: float = 0.4) -> Any:
    """Voiced-sounding audio: 220 Hz with harmonics under a 4 Hz syllable envelope (never fully
    silent, so the mock's energy VAD keeps one turn per stretch)."""
    n = round(seconds * rate_hz)
    t = np.arange(n, dtype=np.float64) / rate_hz
    voice = sum((0.6**k) * np.sin(2 * math.pi * 220.0 * (k + 1) * t + k) for k in range(5)) / 1.9
    envelope = 0.55 + 0.45 * np.sin(2 * math.pi * 4.0 * t)
    return np.round(amplitude * 32767 * voice * envelope).astype(np.int16)


def talk_pattern_pcm() -> npt.NDArray[np.int16]:
    """One loop of the far party's audio at 8 kHz (see the module docstring)."""
    pcm = np.zeros(round(LOOP_S * RATE_HZ), dtype=np.int16)
    for start_s, end_s in SPEECH_SPANS_S:
        a, b = round(start_s * RATE_HZ), round(end_s * RATE_HZ)
        pcm[a:b] = speech_like(end_s - start_s)
    return pcm


def write_talk_pattern(path: Path) -> G711File:
    """The talk pattern as a raw mu-law file for SIPp's ``rtp_stream`` (PT 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(g711.encode(talk_pattern_pcm(), "ulaw"))
    return G711File(path, "ulaw")


def mock_script() -> dict[str, Any]:
    """The OpenAI mock's script (``--script``): realistic reply lengths, streamed at 1.5x."""
    return {
        "mode": "scripted",
        "api_key": None,
        "replies": [{"text": text, "duration_ms": ms} for text, ms in REPLIES],
        "default_reply": {"text": REPLIES[0][0], "duration_ms": REPLIES[0][1]},
        "transcripts": [],
        "default_transcript": "I would like to book a table for two.",
        "speed": MOCK_SPEED,
        "think_ms": MOCK_THINK_MS,
        "chunk_ms": 40,
    }


def write_mock_script(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mock_script(), indent=2))
    return path


def write_ai_wav(path: Path, seconds: float = 6.0, rate_hz: int = 16000) -> Path:
    """The AUDIO_FILE played when no file is given: speech-like audio at 16 kHz (so sip4ai's
    resampling is part of the load) with pauses, as a mono PCM16 WAV."""
    pcm = np.concatenate(
        [speech_like(2.0, rate_hz), np.zeros(rate_hz, np.int16), speech_like(2.5, rate_hz)]
    )
    pcm = np.concatenate([pcm, np.zeros(max(0, round(seconds * rate_hz) - pcm.size), np.int16)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return path
