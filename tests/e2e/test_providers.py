"""One real call per AI provider through Kamailio, and a provider failing mid-call.

Each provider's mock runs as a process (testbed/harness/providers.py); sip4ai runs as a process
registered at Kamailio; a SIPp caller dials it, listens, speaks (a tone the mocks' VAD hears),
listens again and hangs up. What the caller heard is checked on the wire.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from testbed.harness.appliance import Sip4ai
from testbed.harness.capture import CaptureFactory
from testbed.harness.kamailio import Kamailio
from testbed.harness.providers import ENV, PROVIDERS, merge, provider_mock
from testbed.harness.scenario import sip_config, turn_file
from testbed.harness.sipp import SippFactory
from testbed.harness.tones import analyse_tone
from tests.e2e.test_appliance import call_aibot


pytestmark = pytest.mark.e2e

GREETING = "Hello, thanks for calling"
ASKED = "I would like to book a table"
SCRIPT = {
    "replies": [
        {"text": GREETING, "duration_ms": 1500},
        {"text": "Of course, for how many?", "duration_ms": 1000},
    ],
    "transcripts": [ASKED],
}


def voiced_from(pcm: np.ndarray[Any, Any]) -> int:
    voiced = np.flatnonzero(np.abs(pcm) > 500)
    assert voiced.size, "the caller heard only silence"
    return int(voiced[0])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_call_on_each_provider(
    provider: str,
    tmp_path: Path,
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
) -> None:
    with provider_mock(tmp_path, provider, SCRIPT) as mock:
        config = merge(sip_config(kamailio), {"provider": provider}, mock.config(GREETING))
        with Sip4ai(tmp_path, config=config, env=dict(ENV[provider])) as app:
            app.wait_registered()
            turn = turn_file(tmp_path / "turn.ulaw", silence_s=2.5, speech_s=0.8, tail_s=3.5)
            heard = call_aibot(sipp, kamailio, rtp_capture, app, turn, 6500)
            pcm = heard.pcm()
            start = voiced_from(pcm)
            greeting = analyse_tone(pcm[start : start + 4000])
            assert abs(greeting.dominant_hz - 400) < 10, (greeting, app.log_tail())
            assert heard.pacing().gaps_over_60ms == 0, heard.pacing()
            call = app.wait_call(lambda c: c["status"] == "completed")
            said = [(t["speaker"], t["text"]) for t in call["transcript"]]
            assert ("ai", GREETING) in said, said
            assert ("user", ASKED) in said, (said, app.log_tail())
            assert [p["provider"] for p in call["providers"]] == [provider]
            assert app.stop() == 0


class _Events(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers.get("Content-Length", "0"))
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        return None


def test_a_provider_killed_mid_call_hands_the_call_to_the_fallback(
    tmp_path: Path,
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
) -> None:
    """OpenAI's websocket dies (1011) 2 s into the call; a fresh OpenAI session (told what was
    said) takes over and dies the same way; then Gemini takes over: the caller hears the Gemini
    mock's tone, the record names all three parts, every webhook arrives."""
    _Events.received = []
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Events)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    main_script = {
        **SCRIPT,
        "faults": {"close_after_s": 2.0, "close_code": 1011, "close_reason": "mock crash"},
    }
    backup_script = {
        "replies": [{"text": "Sorry, I am back", "duration_ms": 1500, "tone_hz": 1000}]
    }
    try:
        with (
            provider_mock(tmp_path, "openai", main_script) as main,
            provider_mock(tmp_path, "gemini", backup_script) as backup,
        ):
            config = merge(
                sip_config(kamailio),
                {"provider": "openai", "fallback_providers": ["gemini"]},
                main.config(GREETING),
                backup.config(),
                {"webhooks": {"event_webhook": f"http://127.0.0.1:{receiver.server_port}/"}},
            )
            env = {**ENV["openai"], **ENV["gemini"]}
            with Sip4ai(tmp_path, config=config, env=env) as app:
                app.wait_registered()
                quiet = turn_file(tmp_path / "quiet.ulaw", silence_s=9.0, speech_s=0.0, tail_s=0)
                heard = call_aibot(sipp, kamailio, rtp_capture, app, quiet, 9000)
                call = app.wait_call(lambda c: c["status"] == "completed")
                app.wait_for(
                    lambda: any(e["event"] == "call.completed" for e in _Events.received),
                    10.0,
                    "the call.completed webhook",
                )
                assert app.stop() == 0
    finally:
        receiver.shutdown()
        receiver.server_close()
    pcm = heard.pcm()
    start = voiced_from(pcm)
    assert abs(analyse_tone(pcm[start : start + 4000]).dominant_hz - 400) < 10
    segments = call["providers"]
    took_over = round(segments[-1]["started"] * 8000)  # Gemini's greeting comes after this
    late = pcm[took_over : took_over + 3 * 8000]
    assert abs(analyse_tone(late[np.abs(late) > 500]).dominant_hz - 1000) < 15
    assert heard.pacing().gaps_over_60ms == 0, heard.pacing()
    assert [s["provider"] for s in segments] == ["openai", "openai", "gemini"], segments
    assert "1011" in segments[0]["end_reason"] and "1011" in segments[1]["end_reason"]
    said = [t["text"] for t in call["transcript"]]
    assert GREETING in said and "Sorry, I am back" in said, said
    events = [e["event"] for e in _Events.received]
    assert events[0] == "call.ringing" and events[-1] == "call.completed", events
    assert events.count("transcript.update") == len(said), events
    completed = _Events.received[-1]["data"]
    assert [t["text"] for t in completed["transcript"]] == said


def test_gemini_go_away_is_resumed_inside_the_call(
    tmp_path: Path,
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
) -> None:
    """The Gemini mock ends each connection after 3 s with a goAway 1 s ahead: sip4ai resumes
    the session with its handle, the caller's next turn is answered on the new connection and
    the call record shows one provider, no failover."""
    script = {**SCRIPT, "connection_lifetime_s": 3.0, "go_away_notice_s": 1.0}
    events = tmp_path / "gemini-events.jsonl"
    with provider_mock(tmp_path, "gemini", script, "--events-log", str(events)) as mock:
        config = merge(sip_config(kamailio), {"provider": "gemini"}, mock.config(GREETING))
        with Sip4ai(tmp_path, config=config, env=dict(ENV["gemini"])) as app:
            app.wait_registered()
            turn = turn_file(tmp_path / "turn.ulaw", silence_s=4.0, speech_s=0.8, tail_s=3.0)
            heard = call_aibot(sipp, kamailio, rtp_capture, app, turn, 7500)
            call = app.wait_call(lambda c: c["status"] == "completed")
            assert app.stop() == 0
    connections = {json.loads(line)["conn"] for line in events.read_text().splitlines()}
    assert len(connections) >= 2, "the mock's goAway did not lead to a second connection"
    said = [(t["speaker"], t["text"]) for t in call["transcript"]]
    assert ("ai", GREETING) in said, said
    assert ("user", ASKED) in said and ("ai", "Of course, for how many?") in said, said
    assert [p["provider"] for p in call["providers"]] == ["gemini"]
    assert call["end_reason"] == "remote_hangup"
    assert heard.pacing().gaps_over_60ms == 0, heard.pacing()
