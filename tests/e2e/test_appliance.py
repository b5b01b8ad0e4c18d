"""The real sip4ai process on the testbed: Kamailio + SIPp + sip4ai (+ the OpenAI mock)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from testbed.harness.appliance import Sip4ai
from testbed.harness.capture import CaptureFactory
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from testbed.harness.sipp import SippFactory, SippOptions
from testbed.harness.tones import ToneLibrary, analyse_tone
from tests.e2e.appliance_kit import openai_mock_process, sip_config, turn_file, write_tone_wav


pytestmark = pytest.mark.e2e

CALL_MS = 3000


def test_registers_and_reports_it(tmp_path: Path, kamailio: Kamailio) -> None:
    with Sip4ai(tmp_path, config=sip_config(kamailio)) as app:
        app.wait_registered()
        assert kamailio.contacts("aibot"), "no binding for aibot in Kamailio"
        assert "sip4ai_sip_registered 1.0" in app.metrics()
        assert app.stop() == 0


def test_wrong_password_is_a_clear_error(tmp_path: Path, kamailio: Kamailio) -> None:
    with Sip4ai(tmp_path, config=sip_config(kamailio, password="wrong")) as app:
        app.wait_for(
            lambda: "sip4ai_sip_registration_failures_total{" in app.metrics(),
            10.0,
            "a registration failure",
        )
        assert app.status()["sip_registered"] is False
        log = app.log_text()
        assert "aibotpw" not in log and "wrong" not in log.replace("wrong password", "")
        assert any(code in log for code in ("401", "403")), app.log_tail()


def test_inbound_call_hears_audio_file_both_ways(
    tmp_path: Path,
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
    tones: ToneLibrary,
) -> None:
    wav = write_tone_wav(tmp_path / "tone.wav", 1000, 2.0)
    with Sip4ai(tmp_path, config=sip_config(kamailio), env={"AUDIO_FILE": str(wav)}) as app:
        app.wait_registered()
        caller_media = free_port(udp=True, tcp=False, span=4)
        capture = rtp_capture.start([caller_media])
        caller = sipp.run(
            SippOptions(
                "uac_invite_rtp",
                remote=kamailio.address,
                service="aibot",
                audio=tones.get(440),
                call_duration_ms=CALL_MS,
                media_port=caller_media,
            )
        )
        wire = capture.stop()
        assert caller.ok, caller.describe() + "\n" + app.log_tail()
        to_caller = [s for s in wire.rtp_streams([caller_media]) if s.key.dst_port == caller_media]
        assert to_caller, "no RTP reached the caller"
        tone = analyse_tone(to_caller[0].pcm()[4000:12000])
        assert abs(tone.dominant_hz - 1000) < 5, tone
        pacing = to_caller[0].pacing()
        assert pacing.gaps_over_60ms == 0, pacing
        call = app.wait_call(lambda c: c["status"] == "completed")
        assert call["direction"] == "inbound"
        assert call["end_reason"] == "remote_hangup"
        assert call["duration"] in (2, 3, 4)
        assert app.status()["active_calls"] == 0
        assert app.stop() == 0


def test_inbound_call_with_openai_mock(
    tmp_path: Path,
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
    tones: ToneLibrary,
) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                "replies": [{"text": "Hello, thanks for calling", "duration_ms": 1500}],
                "transcripts": ["I would like to book a table"],
            }
        )
    )
    with openai_mock_process(tmp_path, "--script", str(script)) as base_url:
        config = sip_config(kamailio) | {"openai": {"base_url": base_url}}
        with Sip4ai(tmp_path, config=config, env={"OPENAI_API_KEY": "sk-test"}) as app:
            app.wait_registered()
            caller_media = free_port(udp=True, tcp=False, span=4)
            capture = rtp_capture.start([caller_media])
            caller = sipp.run(
                SippOptions(
                    "uac_invite_rtp",
                    remote=kamailio.address,
                    service="aibot",
                    audio=turn_file(
                        tmp_path / "turn.ulaw", silence_s=2.0, speech_s=0.8, tail_s=3.0
                    ),
                    call_duration_ms=5000,
                    media_port=caller_media,
                )
            )
            wire = capture.stop()
            assert caller.ok, caller.describe() + "\n" + app.log_tail()
            streams = [
                s for s in wire.rtp_streams([caller_media]) if s.key.dst_port == caller_media
            ]
            assert streams, "no RTP reached the caller"
            pcm = streams[0].pcm()
            voiced = np.flatnonzero(np.abs(pcm) > 500)
            assert voiced.size, "the caller heard only silence"
            greeting = analyse_tone(pcm[voiced[0] : voiced[0] + 4000])
            assert abs(greeting.dominant_hz - 400) < 10, greeting  # the mock's first reply tone
            call = app.wait_call(lambda c: c["status"] == "completed")
            said = [(t["speaker"], t["text"]) for t in call["transcript"]]
            assert ("ai", "Hello, thanks for calling") in said, said
            assert ("user", "I would like to book a table") in said, said
            assert app.stop() == 0
