"""Fault survival of the real sip4ai process: a registrar restart, an impaired network, SIGTERM
with calls up, malformed SIP and stray RTP. Each test also checks that nothing is lost: every
call record is final and every lifecycle webhook reaches the receiver exactly once.

The kill -9 case (orphaned calls failed, the webhook outbox resent after a restart) is
test_appliance.py::test_webhooks_survive_30_s_of_receiver_downtime_and_a_kill_9.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from testbed.harness import procs
from testbed.harness.appliance import Sip4ai
from testbed.harness.capture import CaptureFactory, PacketCapture
from testbed.harness.kamailio import Kamailio
from testbed.harness.netem import Impairment, Netem
from testbed.harness.netns import NetnsPair, netns_available
from testbed.harness.ports import free_port
from testbed.harness.rtp import RtpPacket, RtpStream
from testbed.harness.rtp_sender import ToneRtpSender, send_datagrams
from testbed.harness.scenario import ai_appliance, sip_config, write_tone_wav
from testbed.harness.sipp import SippFactory, SippOptions
from testbed.harness.tones import ToneLibrary, analyse_tone, tone_shares


pytestmark = pytest.mark.e2e

LIFECYCLE = ["call.ringing", "call.answered", "call.completed"]


class _Sink(http.server.BaseHTTPRequestHandler):
    lock = threading.Lock()
    received: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        with type(self).lock:
            type(self).received.append((self.headers.get("Idempotency-Key", ""), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        return None


class WebhookSink:
    """A lifecycle-webhook receiver on a free loopback port."""

    def __init__(self, server: http.server.ThreadingHTTPServer) -> None:
        self._server = server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/hook"

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        with _Sink.lock:
            return list(_Sink.received)

    def per_call(self) -> dict[str, list[str]]:
        calls: dict[str, list[str]] = {}
        for _, body in self.events():
            calls.setdefault(body["call_id"], []).append(body["event"])
        return calls

    def assert_all_delivered_once(self, app: Sip4ai, records: list[dict[str, Any]]) -> None:
        """Every record's lifecycle arrived, in order, ending as the record did, and no event
        came twice."""

        def final_event(record: dict[str, Any]) -> str:
            return "call.completed" if record["status"] == "completed" else "call.failed"

        def complete() -> bool:
            got = self.per_call()
            return all(final_event(r) in got.get(r["id"], []) for r in records)

        app.wait_for(complete, 20, "every lifecycle webhook")
        time.sleep(0.5)  # a duplicate would follow the originals closely
        keys = [key for key, _ in self.events()]
        assert len(keys) == len(set(keys)), "an event was delivered twice"
        got = self.per_call()
        for record in records:
            events = got[record["id"]]
            if record["status"] == "completed":
                assert events == LIFECYCLE, (record["id"], events)
            else:
                assert events[0] == "call.ringing" and events[-1] == "call.failed", events


@contextmanager
def webhook_sink() -> Iterator[WebhookSink]:
    _Sink.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield WebhookSink(server)
    finally:
        server.shutdown()
        server.server_close()


def hooked(config: dict[str, Any], sink: WebhookSink) -> dict[str, Any]:
    return config | {
        "webhooks": {"event_webhook": sink.url, "initial_backoff_s": 0.5, "max_backoff_s": 2.0}
    }


def registered_metric(app: Sip4ai) -> float:
    match = re.search(r"^sip4ai_sip_registered ([0-9.]+)$", app.metrics(), re.M)
    assert match, "no sip4ai_sip_registered metric"
    return float(match.group(1))


def one_call(sipp: SippFactory, kamailio: Kamailio, tones: ToneLibrary, app: Sip4ai) -> None:
    result = sipp.run(
        SippOptions(
            "uac_invite_rtp",
            remote=kamailio.address,
            service="aibot",
            audio=tones.get(440),
            call_duration_ms=1500,
        )
    )
    assert result.ok, result.describe() + "\n" + app.log_tail()


# ---- (a) the registrar restarts -------------------------------------------------------------


def test_kamailio_restart_is_noticed_and_sip4ai_registers_again(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary
) -> None:
    wav = write_tone_wav(tmp_path / "tone.wav", 1000, 1.0)
    with webhook_sink() as sink:
        config = hooked(sip_config(kamailio), sink)
        with Sip4ai(tmp_path, config=config, env={"AUDIO_FILE": str(wav)}) as app:
            app.wait_registered()
            assert registered_metric(app) == 1.0
            one_call(sipp, kamailio, tones, app)

            # sip4ai has been up for a probe cycle (2 s): it has seen that Kamailio routes its
            # AOR back to it, so a 404 for it later means "binding lost".
            time.sleep(3.0)
            # Down for a while: sip4ai must notice (its registration is not refreshed for
            # minutes) and report it, then register again as soon as Kamailio is back.
            kamailio.stop()
            app.wait_registered(False, timeout_s=10.0)
            assert registered_metric(app) == 0.0
            assert app.status()["sip_registered"] is False
            kamailio.start()
            back = time.monotonic()
            kamailio.wait_registered("aibot", timeout_s=5.0)
            app.wait_registered(True, timeout_s=5.0)
            assert time.monotonic() - back <= 5.0
            assert registered_metric(app) == 1.0

            # A restart too quick to be seen as an outage: the binding is gone all the same.
            kamailio.restart()
            kamailio.wait_registered("aibot", timeout_s=5.0)
            app.wait_registered(True, timeout_s=5.0)
            assert registered_metric(app) == 1.0

            one_call(sipp, kamailio, tones, app)
            records = app.calls(limit=10)
            assert len(records) == 2
            assert all(r["status"] == "completed" for r in records), records
            sink.assert_all_delivered_once(app, records)
            assert app.stop() == 0


# ---- (b) an impaired network between caller and sip4ai ----------------------------------------

NETEM = Impairment(delay_ms=40.0, jitter_ms=10.0, loss_percent=3.0, seed=20261203)
FRAME_MS = 20.0
JITTER_SLACK_MS = 60.0
"""Arrival gaps beyond the lost frames: 20 ms of jitter range plus scheduling on a busy box."""


def unexplained_gaps(packets: list[RtpPacket]) -> list[tuple[int, float]]:
    """(sequence, gap ms) where the gap before a packet exceeds what the frames lost in between
    (sequence numbers skipped) plus jitter explain."""
    bad = []
    for before, after in zip(packets, packets[1:], strict=False):
        frames = (after.sequence - before.sequence) % 65536
        gap_ms = (after.arrival_s - before.arrival_s) * 1000
        if gap_ms > frames * FRAME_MS + JITTER_SLACK_MS:
            bad.append((after.sequence, round(gap_ms, 1)))
    return bad


def longest_loss_run(packets: list[RtpPacket]) -> int:
    pairs = zip(packets, packets[1:], strict=False)
    return max(((b.sequence - a.sequence) % 65536 - 1 for a, b in pairs), default=0)


def stream_to(capture: PacketCapture, port: int) -> RtpStream:
    wire = capture.stop()
    streams = [s for s in wire.rtp_streams([port]) if s.key.dst_port == port]
    assert streams, f"no RTP to port {port} in {capture.pcap_path}"
    return max(streams, key=lambda s: len(s.packets))


def test_call_through_40ms_jitter_and_3_percent_loss_stays_continuous(
    tmp_path: Path, sipp: SippFactory, tones: ToneLibrary
) -> None:
    """Caller in namespace A, Kamailio and sip4ai in namespace B, joined only by the userspace
    netem (40 +/- 10 ms each way, 3 % loss each way)."""
    why_not = netns_available()
    if why_not and os.environ.get("SIP4AI_E2E_REQUIRED") == "1":
        pytest.fail(f"impairment test: {why_not}")
    if why_not:
        pytest.skip(why_not)
    wav = write_tone_wav(tmp_path / "tone.wav", 1000, 1.0)
    with ExitStack() as stack:
        pair = stack.enter_context(NetnsPair())
        netem = stack.enter_context(Netem(pair, NETEM, log_path=tmp_path / "netem.log"))
        caller_media = 0
        with pair.inside(pair.b):
            kam = stack.enter_context(Kamailio(tmp_path / "kamailio", host=pair.b.address))
            sink = stack.enter_context(webhook_sink())
            config = hooked(
                sip_config(kam, listen=f"{pair.b.address}:{free_port(pair.b.address)}"), sink
            )
            app = stack.enter_context(Sip4ai(tmp_path, config=config, env={"AUDIO_FILE": str(wav)}))
            app.wait_registered()
        with pair.inside(pair.a):
            caller_media = free_port(pair.a.address, udp=True, tcp=False, span=4)
            heard_capture = PacketCapture(
                tmp_path / "caller-side.pcap", [caller_media], interface=pair.a.device
            )
            stack.enter_context(heard_capture)
        with pair.inside(pair.b):
            sent_capture = PacketCapture(
                tmp_path / "sip4ai-side.pcap", [caller_media], interface=pair.b.device
            )
            stack.enter_context(sent_capture)
        with pair.inside(pair.a):
            caller = sipp.start(
                SippOptions(
                    "uac_invite_rtp",
                    remote=kam.address,
                    service="aibot",
                    audio=tones.get(440),
                    call_duration_ms=6000,
                    host=pair.a.address,
                    media_port=caller_media,
                )
            )
        result = caller.wait(40.0)
        with pair.inside(pair.b):
            assert result.ok, result.describe() + "\n" + app.log_tail()
            record = app.wait_call(lambda c: c["status"] == "completed")
            assert record["end_reason"] == "remote_hangup"
            sink.assert_all_delivered_once(app, [record])
            assert app.stop() == 0
        heard = stream_to(heard_capture, caller_media)
        sent = stream_to(sent_capture, caller_media)
        counters = netem.stop()

    assert counters and counters["a_to_b"]["dropped"] > 0 and counters["b_to_a"]["dropped"] > 0, (
        f"the link lost nothing: {counters}"
    )
    # sip4ai paced its stream without a hole (measured before the impairment) ...
    pacing = sent.pacing()
    assert pacing.sequence_lost == 0 and pacing.gaps_over_60ms == 0, pacing
    # ... and what the caller heard has only the holes the link's loss made.
    received = heard.pacing()
    expected = received.packets + received.sequence_lost
    assert received.sequence_lost <= 0.08 * expected, received
    assert longest_loss_run(heard.packets) <= 4, received
    assert not unexplained_gaps(heard.packets), unexplained_gaps(heard.packets)
    tone = analyse_tone(heard.pcm()[8000:24000])
    assert abs(tone.dominant_hz - 1000) < 5, tone


# ---- (c) SIGTERM with 20 calls up -----------------------------------------------------------


def test_sigterm_with_20_calls_says_bye_to_each_and_keeps_every_record(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary
) -> None:
    wav = write_tone_wav(tmp_path / "tone.wav", 1000, 1.0)
    env = {"AUDIO_FILE": str(wav)}
    with webhook_sink() as sink:
        config = hooked(sip_config(kamailio), sink)
        app = Sip4ai(tmp_path, config=config, env=env)
        with app:
            app.wait_registered()
            callers = sipp.start(
                SippOptions(
                    "uac_invite_wait_bye",
                    remote=kamailio.address,
                    service="aibot",
                    audio=tones.get(440),
                    calls=20,
                    rate_cps=20,
                    max_concurrent=20,
                    recv_timeout_ms=30000,
                    timeout_s=40,
                )
            )
            app.wait_for(lambda: app.status()["active_calls"] == 20, 20, "20 active calls")
            time.sleep(1.0)  # a second of audio on every call
            sent = time.monotonic()
            assert app.stop(timeout_s=10.0) == 0
            assert time.monotonic() - sent <= 10.0
        hung_up = callers.wait(15.0)
        assert hung_up.ok, hung_up.describe()  # every caller received (and answered) a BYE
        assert hung_up.stats is not None and hung_up.stats.successful_calls == 20

        # The records on disk, read back by the next start (which also resends any webhook
        # that had not gone out before the exit).
        again = Sip4ai(tmp_path, config=config, env=env)
        with again:
            records = again.calls(limit=100)
            assert len(records) == 20
            for record in records:
                assert record["status"] == "completed", record
                assert record["end_reason"] == "shutdown", record
                assert record["ended_at"] and record["duration"] is not None, record
            sink.assert_all_delivered_once(again, records)
            assert again.stop() == 0


# ---- (d) stray RTP ------------------------------------------------------------------------


def call_rtp_port(app: Sip4ai, low: int, high: int) -> int:
    """The RTP port sip4ai bound for its only call, within its configured range."""
    found: list[int] = []

    def bound() -> bool:
        found[:] = [p for p in range(low, high + 1, 2) if procs.port_bound(p, "udp")]
        return bool(found)

    app.wait_for(bound, 10, "the call's RTP socket")
    assert len(found) == 1, found
    return found[0]


def test_stray_rtp_from_another_address_never_reaches_the_call(
    tmp_path: Path,
    kamailio: Kamailio,
    sipp: SippFactory,
    rtp_capture: CaptureFactory,
    tones: ToneLibrary,
) -> None:
    """The AI mock echoes what it hears, so what the caller hears back is what reached the AI:
    the caller's 440 Hz must, the 1700 Hz tone sprayed at the call's RTP port from another
    address (a port scanner, a stale peer) must not."""
    with webhook_sink() as sink:
        rtp = free_port(udp=True, tcp=False, span=20)
        rtp_range = {"rtp_port_min": rtp, "rtp_port_max": rtp + 19}
        with ai_appliance(
            tmp_path, kamailio, "--mode", "echo", sip=rtp_range, config=hooked({}, sink)
        ) as app:
            caller_media = free_port(udp=True, tcp=False, span=4)
            capture = rtp_capture.start([caller_media])
            caller = sipp.start(
                SippOptions(
                    "uac_invite_rtp",
                    remote=kamailio.address,
                    service="aibot",
                    audio=tones.get(440),
                    call_duration_ms=6000,
                    media_port=caller_media,
                )
            )
            app.wait_call(lambda c: c["status"] == "in_progress")
            target = ("127.0.0.1", call_rtp_port(app, rtp, rtp + 19))
            time.sleep(1.0)  # the caller's own stream is established first
            with ToneRtpSender(target, 1700, duration_s=4.0) as stray:
                send_datagrams(target, [b"\x00" * 12, b"garbage", b"\x80" * 1400])
                time.sleep(4.0)
            assert stray.sent > 150
            result = caller.wait(20.0)
            wire = capture.stop()
            assert result.ok, result.describe() + "\n" + app.log_tail()
            heard = [s for s in wire.rtp_streams([caller_media]) if s.key.dst_port == caller_media]
            assert heard, "no RTP reached the caller"
            pcm = heard[0].pcm()
            shares = tone_shares(pcm[8000:48000], (440.0, 1700.0))
            assert shares[440.0] > 0.9, f"the echo of the caller's own audio is missing: {shares}"
            assert shares[1700.0] < 0.01, f"stray RTP reached the AI: {shares}"
            record = app.wait_call(lambda c: c["status"] == "completed")
            sink.assert_all_delivered_once(app, [record])
            assert app.status()["active_calls"] == 0


# ---- (d) malformed SIP ----------------------------------------------------------------------


def junk_datagrams(user: str, target: str) -> list[bytes]:
    """Things a SIP port meets on the internet: noise, fragments, lies about lengths."""
    head = (
        f"INVITE sip:{user}@{target} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKjunk\r\n"
        f"From: <sip:junk@127.0.0.1>;tag=1\r\nTo: <sip:{user}@{target}>\r\n"
        "Call-ID: junk-1\r\nCSeq: 1 INVITE\r\n"
    )
    return [
        b"",
        b"\r\n\r\n",
        bytes(range(256)) * 5,
        b"GARBAGE / NOT-SIP\r\n\r\n",
        head.encode()[:60],  # cut mid-header
        (head + "X-Huge: " + "A" * 60000 + "\r\nContent-Length: 0\r\n\r\n").encode(),
        (head + "Content-Type: application/sdp\r\nContent-Length: 99999\r\n\r\nv=0\r\n").encode(),
        (head + "Content-Length: -5\r\n\r\n").encode(),
        b"SIP/2.0 200 OK\r\nCall-ID: nobody\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n",
        ("\u00e9\u00e8 INVITE \u2603 SIP/9.9\r\n\r\n").encode(),
    ]


def test_malformed_sip_leaves_the_appliance_serving(
    tmp_path: Path, kamailio: Kamailio, sipp: SippFactory, tones: ToneLibrary
) -> None:
    wav = write_tone_wav(tmp_path / "tone.wav", 1000, 1.0)
    with webhook_sink() as sink:
        config = hooked(sip_config(kamailio), sink)
        listen = config["sip"]["listen"]
        host, port = listen.rsplit(":", 1)
        with Sip4ai(tmp_path, config=config, env={"AUDIO_FILE": str(wav)}) as app:
            app.wait_registered()
            send_datagrams((host, int(port)), junk_datagrams("aibot", listen))
            # TCP: a flood of junk, and a request that never finishes, left open meanwhile.
            with socket.create_connection((host, int(port)), timeout=5) as flood:
                flood.sendall(b"NOT SIP AT ALL\r\n" * 5000)
            hanging = socket.create_connection((host, int(port)), timeout=5)
            hanging.sendall(b"INVITE sip:aibot@x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9\r\n")
            try:
                for scenario in ("malformed_sdp", "malformed_headers"):
                    fuzz = sipp.run(
                        SippOptions(scenario, remote=listen, service="aibot", timeout_s=15)
                    )
                    assert fuzz.ok, fuzz.describe() + "\n" + app.log_tail()
                assert app.running and app.api("GET", "/health")[0] == 200
                one_call(sipp, kamailio, tones, app)
            finally:
                hanging.close()
            records = app.calls(limit=20)
            assert [r["status"] for r in records if r["direction"] == "inbound"][0] == "completed"
            assert all(r["status"] in ("completed", "failed") for r in records), records
            sink.assert_all_delivered_once(app, records)
            assert app.status()["active_calls"] == 0
            assert app.stop() == 0
