"""Whole-call scenario parts: sip4ai config for the testbed, caller audio, the OpenAI mock."""

from __future__ import annotations

import subprocess
import sys
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed.harness import g711
from testbed.harness.appliance import Sip4ai
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from testbed.harness.tones import G711File, tone_pcm


REPO = Path(__file__).resolve().parents[2]


def sip_config(kamailio: Kamailio, *, password: str = "aibotpw", **extra: Any) -> dict[str, Any]:
    """sip4ai registered as aibot at the testbed's Kamailio, on free loopback ports."""
    rtp = free_port(udp=True, tcp=False, span=100)
    sip: dict[str, Any] = {
        "username": "aibot",
        "password": password,
        "domain": kamailio.address,
        "server": kamailio.address,
        "listen": f"127.0.0.1:{free_port(udp=True, tcp=True)}",
        "rtp_port_min": rtp,
        "rtp_port_max": rtp + 99,
        "answer_timeout_s": 3.0,
    }
    sip.update(extra)
    return {"sip": sip}


def write_tone_wav(path: Path, freq_hz: float, seconds: float, rate_hz: int = 16000) -> Path:
    """A PCM16 WAV tone; 16 kHz by default so AUDIO_FILE's resampling is exercised."""
    pcm = tone_pcm(freq_hz, seconds, rate_hz=rate_hz)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return path


@contextmanager
def openai_mock_process(run_dir: Path, *args: str) -> Iterator[str]:
    """The OpenAI mock as a process; yields its base URL for sip4ai's ``openai.base_url``."""
    log = (run_dir / "mock_openai.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.mocks.mock_openai", "--port", "0", "--any-key", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"mock did not start: {line!r}")
        yield line.split(" ", 1)[1] + "/v1/realtime"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


def turn_file(path: Path, *, silence_s: float, speech_s: float, tail_s: float) -> G711File:
    """A caller who listens, says something (a 300 Hz tone), then listens again (mu-law)."""
    import numpy as np

    pcm = np.concatenate(
        [
            np.zeros(round(silence_s * 8000), np.int16),
            tone_pcm(300, speech_s, amplitude=0.5),
            np.zeros(round(tail_s * 8000), np.int16),
        ]
    )
    path.write_bytes(g711.encode(pcm, "ulaw"))
    return G711File(path, "ulaw")


@contextmanager
def ai_appliance(
    run_dir: Path,
    kamailio: Kamailio,
    *mock_args: str,
    sip: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Iterator[Sip4ai]:
    """The OpenAI mock (run with ``mock_args``) and sip4ai using it, registered at Kamailio."""
    with openai_mock_process(run_dir, *mock_args) as base_url:
        full = sip_config(kamailio, **(sip or {})) | {"openai": {"base_url": base_url}}
        with Sip4ai(
            run_dir, config=full | (config or {}), env={"OPENAI_API_KEY": "sk-test"}
        ) as app:
            app.wait_registered()
            yield app
