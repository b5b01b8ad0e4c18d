"""The real sip4ai process on the testbed: Kamailio + SIPp + sip4ai (+ the OpenAI mock)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sip4ai.signing import verify
from testbed.harness.appliance import Sip4ai
from testbed.harness.capture import CaptureFactory
from testbed.harness.kamailio import Kamailio
from testbed.harness.ports import free_port
from testbed.harness.rtp import RtpStream
from testbed.harness.scenario import (
    ai_appliance,
    openai_mock_process,
    sip_config,
    turn_file,
    write_tone_wav,
)
from testbed.harness.sipp import SippFactory, SippOptions
from testbed.harness.tones import G711File, ToneLibrary, analyse_tone


pytestmark = pytest.mark.e2e

CALL_MS = 3000


def call_aibot(
    sipp: SippFactory,
    kamailio: Kamailio,
    rtp_capture: CaptureFactory,
    app: Sip4ai,
    audio: G711File,
    duration_ms: int,
) -> RtpStream:
    """A SIPp caller dials aibot, plays ``audio`` and hangs up after ``duration_ms``; returns
    the RTP stream it received (the call must succeed and RTP must reach the caller)."""
    caller_media = free_port(udp=True, tcp=False, span=4)
    capture = rtp_capture.start([caller_media])
    caller = sipp.run(
        SippOptions(
            "uac_invite_rtp",
            remote=kamailio.address,
            service="aibot",
            audio=audio,
            call_duration_ms=duration_ms,
            media_port=caller_media,
        )
    )
    wire = capture.stop()
    assert caller.ok, caller.describe() + "\n" + app.log_tail()
    streams = [s for s in wire.rtp_streams([caller_media]) if s.key.dst_port == caller_media]
    assert streams, "no RTP reached the caller"
    return streams[0]


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
        heard = call_aibot(sipp, kamailio, rtp_capture, app, tones.get(440), CALL_MS)
        tone = analyse_tone(heard.pcm()[4000:12000])
        assert abs(tone.dominant_hz - 1000) < 5, tone
        pacing = heard.pacing()
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
    with ai_appliance(tmp_path, kamailio, "--script", str(script)) as app:
        turn = turn_file(tmp_path / "turn.ulaw", silence_s=2.0, speech_s=0.8, tail_s=3.0)
        heard = call_aibot(sipp, kamailio, rtp_capture, app, turn, 5000)
        pcm = heard.pcm()
        voiced = np.flatnonzero(np.abs(pcm) > 500)
        assert voiced.size, "the caller heard only silence"
        greeting = analyse_tone(pcm[voiced[0] : voiced[0] + 4000])
        assert abs(greeting.dominant_hz - 400) < 10, greeting  # the mock's first reply tone
        call = app.wait_call(lambda c: c["status"] == "completed")
        said = [(t["speaker"], t["text"]) for t in call["transcript"]]
        assert ("ai", "Hello, thanks for calling") in said, said
        assert ("user", "I would like to book a table") in said, said
        assert app.stop() == 0


def test_outbound_call_then_delete_hangs_up(
    tmp_path: Path,
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
    tones: ToneLibrary,
) -> None:
    callee = sipp.start(SippOptions("uas_answer_rtp", audio=tones.get(1000)))
    kamailio.set_static_route("+61400000000", callee.uri)
    wav = write_tone_wav(tmp_path / "tone.wav", 600, 1.0)
    with Sip4ai(tmp_path, config=sip_config(kamailio), env={"AUDIO_FILE": str(wav)}) as app:
        app.wait_registered()
        capture = rtp_capture.start([callee.media_port])
        code, created = app.api("POST", "/api/calls", {"target": "+61400000000", "task": "Test"})
        assert code == 201, created
        call_id = created["call_id"]
        app.wait_for(lambda: app.call(call_id)["status"] == "in_progress", 10, "the answer")
        time.sleep(1.5)  # let a second of audio cross the wire before hanging up
        code, ending = app.api("DELETE", f"/api/calls/{call_id}")
        assert (code, ending["status"]) == (200, "ending")
        app.wait_for(lambda: app.call(call_id)["status"] == "completed", 10, "the hang-up")
        wire = capture.stop()
        record = app.call(call_id)
        assert record["end_reason"] == "api_hangup" and record["direction"] == "outbound"
        answered = callee.wait(10.0)
        assert answered.ok, answered.describe()  # the callee got our BYE
        to_callee = [
            s for s in wire.rtp_streams([callee.media_port]) if s.key.dst_port == callee.media_port
        ]
        assert to_callee, "no RTP reached the callee"
        tone = analyse_tone(to_callee[0].pcm()[1600:9600])
        assert abs(tone.dominant_hz - 600) < 5, tone
        code, again = app.api("DELETE", f"/api/calls/{call_id}")
        assert (code, again["code"]) == (409, "CONFLICT")


def test_outbound_call_to_busy_callee_fails_with_reason(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory
) -> None:
    callee = sipp.start(SippOptions("uas_busy"))
    kamailio.set_static_route("+61400000001", callee.uri)
    wav = write_tone_wav(tmp_path / "tone.wav", 600, 1.0)
    with Sip4ai(tmp_path, config=sip_config(kamailio), env={"AUDIO_FILE": str(wav)}) as app:
        app.wait_registered()
        code, created = app.api("POST", "/api/calls", {"target": "+61400000001", "task": "Test"})
        assert code == 201, created
        call_id = created["call_id"]
        app.wait_for(lambda: app.call(call_id)["status"] == "failed", 10, "the failure")
        assert app.call(call_id)["end_reason"] == "busy"
        assert callee.wait(10.0).ok


def test_caller_cancels_while_the_ai_connects(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory
) -> None:
    script = tmp_path / "slow.json"
    script.write_text(json.dumps({"faults": {"handshake_delay_s": 5.0}}))
    with ai_appliance(
        tmp_path, kamailio, "--script", str(script), sip={"answer_timeout_s": 4.0}
    ) as app:
        caller = sipp.run(
            SippOptions(
                "uac_cancel", remote=kamailio.address, service="aibot", call_duration_ms=800
            )
        )
        # Kamailio may relay the 487 before its own 200 for the CANCEL; uac_cancel.xml
        # expects the other order, so judge the caller by the 487 it received.
        got_487 = any(k.endswith("_487_Recv") and n for k, n in caller.counts.items())
        assert got_487, caller.describe() + "\n" + app.log_tail()
        call = app.wait_call(lambda c: c["status"] == "failed")
        assert call["end_reason"] == "cancelled"
        assert app.status()["active_calls"] == 0


def test_dtmf_from_the_caller_reaches_the_ai(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary
) -> None:
    events = tmp_path / "mock-events.jsonl"
    with ai_appliance(tmp_path, kamailio, "--events-log", str(events)) as app:
        caller = sipp.run(
            SippOptions(
                "uac_dtmf_info", remote=kamailio.address, service="aibot", audio=tones.get(440)
            )
        )
        assert caller.ok, caller.describe() + "\n" + app.log_tail()
        app.wait_call(lambda c: c["status"] == "completed")
    received = [json.loads(line) for line in events.read_text().splitlines()]
    items = [e for e in received if e["dir"] == "in" and e["type"] == "conversation.item.create"]
    assert len(items) == 2, items  # one context message per digit (5 and #)


def test_inject_then_delete_says_goodbye_and_hangs_up(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory
) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                "replies": [
                    {"text": "Hello caller", "duration_ms": 800},
                    {"text": "Goodbye, thanks for calling", "duration_ms": 800},
                ],
                "inject_reply": "Noted: {text}",
            }
        )
    )
    quiet = turn_file(tmp_path / "quiet.ulaw", silence_s=30.0, speech_s=0.0, tail_s=0.0)
    with ai_appliance(tmp_path, kamailio, "--script", str(script)) as app:
        caller = sipp.start(
            SippOptions(
                "uac_invite_wait_bye",
                remote=kamailio.address,
                service="aibot",
                audio=quiet,
                recv_timeout_ms=20000,
            )
        )
        call = app.wait_call(lambda c: c["status"] == "in_progress")

        def said() -> list[str]:
            return [t["text"] for t in app.call(call["id"])["transcript"]]

        app.wait_for(lambda: "Hello caller" in said(), 10, "the greeting")
        code, body = app.api(
            "POST", f"/api/calls/{call['id']}/inject", {"message": "The caller is a VIP."}
        )
        assert code == 200, body
        app.wait_for(lambda: "Noted: The caller is a VIP." in said(), 10, "the injected reply")
        code, body = app.api("DELETE", f"/api/calls/{call['id']}")
        assert code == 200, body
        app.wait_for(lambda: app.call(call["id"])["status"] == "completed", 15, "the end")
        record = app.call(call["id"])
        assert record["end_reason"] == "api_hangup"
        assert record["transcript"][-1]["text"] == "Goodbye, thanks for calling"
        result = caller.wait(10.0)
        assert result.ok, result.describe()  # the caller received our BYE


def test_barge_in_cuts_the_reply_on_the_wire(
    tmp_path: Path,
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"replies": [{"text": "A long greeting", "duration_ms": 6000}]}))
    events = tmp_path / "mock-events.jsonl"
    talker = turn_file(tmp_path / "talker.ulaw", silence_s=2.0, speech_s=1.0, tail_s=4.0)
    with ai_appliance(
        tmp_path, kamailio, "--script", str(script), "--events-log", str(events)
    ) as app:
        heard = call_aibot(sipp, kamailio, rtp_capture, app, talker, 6000)
    pcm = heard.pcm()
    frames = pcm[: pcm.size - pcm.size % 160].reshape(-1, 160)
    voiced = np.flatnonzero(np.abs(frames).max(axis=1) > 500)
    assert voiced.size, "the greeting never played"
    heard_ms = 20 * voiced.size
    assert 1000 <= heard_ms <= 3500, f"the 6 s greeting played {heard_ms} ms: not cut"
    received = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [e["type"] for e in received if e["dir"] == "in"]
    assert "conversation.item.truncate" in kinds, kinds


def test_transfer_function_sends_refer(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory
) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                "replies": [{"text": "Hello", "duration_ms": 600}],
                "function_calls": [{"name": "transfer_call", "after_user_turns": 1}],
            }
        )
    )
    talker = turn_file(tmp_path / "talker.ulaw", silence_s=1.5, speech_s=0.8, tail_s=20.0)
    with openai_mock_process(tmp_path, "--script", str(script)) as base_url:
        config = sip_config(kamailio) | {
            "openai": {"base_url": base_url},
            "functions": [
                {
                    "name": "transfer_call",
                    "description": "Transfer the call to a human agent",
                    "type": "transfer",
                    "target": "+61400000002",
                }
            ],
        }
        with Sip4ai(tmp_path, config=config, env={"OPENAI_API_KEY": "sk-test"}) as app:
            app.wait_registered()
            caller = sipp.run(
                SippOptions(
                    "uac_accept_refer",
                    remote=kamailio.address,
                    service="aibot",
                    audio=talker,
                    recv_timeout_ms=20000,
                    timeout_s=30,
                )
            )
            assert caller.ok, caller.describe() + "\n" + app.log_tail()
            assert "REFER to sip:+61400000002@" in "\n".join(caller.log_lines())
            call = app.wait_call(lambda c: c["status"] == "completed", timeout_s=15)
            assert call["end_reason"] == "transferred"


class _ResultReceiver(http.server.BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers.get("Content-Length", "0"))
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        return None


def test_outbound_mode_places_the_task_call_and_reports_the_result(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory
) -> None:
    _ResultReceiver.bodies = []
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ResultReceiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    callee_audio = turn_file(tmp_path / "callee.ulaw", silence_s=1.5, speech_s=0.8, tail_s=20.0)
    callee = sipp.start(SippOptions("uas_answer_rtp", audio=callee_audio))
    kamailio.set_static_route("+61400000003", callee.uri)
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                "replies": [{"text": "Hi, calling about your appointment", "duration_ms": 600}],
                "function_calls": [
                    {
                        "name": "report_result",
                        "arguments": {"confirmed": True},
                        "after_user_turns": 1,
                    }
                ],
            }
        )
    )
    try:
        with openai_mock_process(tmp_path, "--script", str(script)) as base_url:
            config = sip_config(kamailio) | {
                "mode": "outbound",
                "openai": {"base_url": base_url},
                "outbound": {
                    "target_number": "+61400000003",
                    "task_description": "Confirm the appointment",
                    "result_webhook": f"http://127.0.0.1:{receiver.server_port}/result",
                    "hangup_on_task_complete": True,
                },
            }
            with Sip4ai(tmp_path, config=config, env={"OPENAI_API_KEY": "sk-test"}) as app:
                call = app.wait_call(lambda c: c["status"] == "completed", timeout_s=20)
                assert call["direction"] == "outbound" and call["target"] == "+61400000003"
                assert call["end_reason"] == "task_complete"
                app.wait_for(lambda: bool(_ResultReceiver.bodies), 10, "the task result")
        (result,) = _ResultReceiver.bodies
        assert result["event"] == "task.result" and result["call_id"] == call["id"]
        assert result["data"]["result"] == {"confirmed": True}
        assert callee.wait(10.0).ok  # our BYE reached the callee
    finally:
        receiver.shutdown()
        receiver.server_close()


class _SlowFunction(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers.get("Content-Length", "0"))
        type(self).requests.append((dict(self.headers.items()), self.rfile.read(length)))
        time.sleep(2.0)  # a slow backend: the caller hears hold audio meanwhile
        payload = json.dumps({"slot": "14:00"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        return None


def test_function_call_is_signed_and_the_caller_hears_hold_audio(
    tmp_path: Path,
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
) -> None:
    _SlowFunction.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowFunction)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                "replies": [{"text": "Hello", "duration_ms": 400}],
                "function_calls": [
                    {"name": "book", "arguments": {"time": "14:00"}, "after_user_turns": 1}
                ],
                "function_reply": "Booked {output}",
            }
        )
    )
    talker = turn_file(tmp_path / "talker.ulaw", silence_s=1.5, speech_s=0.8, tail_s=8.0)
    try:
        with openai_mock_process(tmp_path, "--script", str(script)) as base_url:
            config = sip_config(kamailio) | {
                "openai": {"base_url": base_url},
                "webhooks": {"secret": "fn-secret"},
                "functions": [
                    {
                        "name": "book",
                        "description": "Book a slot",
                        "webhook": f"http://127.0.0.1:{server.server_port}/book",
                        "parameters": {
                            "type": "object",
                            "properties": {"time": {"type": "string"}},
                            "required": ["time"],
                        },
                    }
                ],
            }
            with Sip4ai(tmp_path, config=config, env={"OPENAI_API_KEY": "sk-test"}) as app:
                app.wait_registered()
                heard = call_aibot(sipp, kamailio, rtp_capture, app, talker, 8000)
                call = app.wait_call(lambda c: c["status"] == "completed")
                said = [t["text"] for t in call["transcript"]]
                assert any(t.startswith("Booked") and "14:00" in t for t in said), said
    finally:
        server.shutdown()
        server.server_close()
    (headers, raw) = _SlowFunction.requests[0]
    body = json.loads(raw)
    assert body["arguments"] == {"time": "14:00"} and body["call_id"] == call["id"]
    verify(
        "fn-secret",
        raw,
        headers.get("X-Sip4ai-Timestamp"),
        headers.get("X-Sip4ai-Signature"),
        now=time.time(),
    )
    # Hold audio: between the first reply and "Booked ...", the caller hears more than the
    # silence of a waiting AI (the built-in chime), i.e. voiced frames that are not a reply tone.
    pcm = heard.pcm()
    frames = pcm[: pcm.size - pcm.size % 160].reshape(-1, 160)
    window = frames[3 * 50 : 5 * 50]  # 3 s .. 5 s into the call
    voiced = int((np.abs(window).max(axis=1) > 200).sum())
    assert voiced >= 10, f"no hold audio while the function ran ({voiced} voiced frames)"


class _EventReceiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        type(self).received.append((self.headers["Idempotency-Key"], body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        return None


def test_webhooks_survive_30_s_of_receiver_downtime_and_a_kill_9(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary
) -> None:
    """Receiver down for 30 s; sip4ai killed with SIGKILL mid-call and started again on the
    same data: every event arrives once, in order per call, and the orphaned call is failed."""
    _EventReceiver.received = []
    port = free_port(udp=False, tcp=True)
    wav = write_tone_wav(tmp_path / "tone.wav", 1000, 1.0)
    config = sip_config(kamailio) | {
        "webhooks": {
            "event_webhook": f"http://127.0.0.1:{port}/hook",
            "initial_backoff_s": 0.5,
            "max_backoff_s": 2.0,
        }
    }
    env = {"AUDIO_FILE": str(wav)}
    down_since = time.monotonic()
    first = Sip4ai(tmp_path, config=config, env=env)
    with first:
        first.wait_registered()
        done = sipp.run(
            SippOptions(
                "uac_invite_rtp",
                remote=kamailio.address,
                service="aibot",
                audio=tones.get(440),
                call_duration_ms=1000,
            )
        )
        assert done.ok, done.describe()
        completed = first.wait_call(lambda c: c["status"] == "completed")
        long_call = sipp.start(
            SippOptions(
                "uac_invite_rtp",
                remote=kamailio.address,
                service="aibot",
                audio=tones.get(440),
                call_duration_ms=60000,
            )
        )
        orphan = first.wait_call(lambda c: c["status"] == "in_progress")
        first.kill()  # SIGKILL mid-call: no BYE, no shutdown, pending webhooks on disk only
        long_call.stop()
    second = Sip4ai(tmp_path, config=config, env=env)
    with second:
        recovered = second.call(orphan["id"])
        assert (recovered["status"], recovered["end_reason"]) == ("failed", "crash"), recovered
        assert recovered["ended_at"], recovered
        assert second.call(completed["id"])["status"] == "completed"
        assert second.status()["active_calls"] == 0
        time.sleep(max(0.0, 30.0 - (time.monotonic() - down_since)))
        receiver = http.server.ThreadingHTTPServer(("127.0.0.1", port), _EventReceiver)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        try:
            second.wait_for(lambda: len(_EventReceiver.received) >= 6, 30, "the queued events")
            time.sleep(1.0)  # nothing more (no duplicate) may follow
        finally:
            receiver.shutdown()
            receiver.server_close()
        assert second.stop() == 0
    keys = [key for key, _ in _EventReceiver.received]
    assert len(keys) == len(set(keys)), "an event was delivered twice"
    per_call: dict[str, list[str]] = {}
    for _, event in _EventReceiver.received:
        per_call.setdefault(event["call_id"], []).append(event["event"])
    assert per_call[completed["id"]] == ["call.ringing", "call.answered", "call.completed"]
    assert per_call[orphan["id"]] == ["call.ringing", "call.answered", "call.failed"]
